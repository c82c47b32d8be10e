"""A `LanguageModel` that writes a fixed script whatever the prompt: pipeline tests with parseable answers.

Greedy decoding emits `script` token by token (then `filler`); sampling picks among the script token and a few
noise tokens, so votes are not unanimous. It satisfies lsi.decoding.LanguageModel, so the real sampler, stop strings
and batch driver all run on it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ScriptedLM:
    script: tuple[int, ...]
    vocab_size: int
    noise_tokens: tuple[int, ...] = ()
    noise_logit: float = -1.0  # relative to the script token's 0.0: noise is sampled sometimes, never argmax
    max_length: int = 4096  # what a LoadedModel of it says

    def _logits(self, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        script = jnp.asarray(self.script, jnp.int32)
        token = script[jnp.minimum(step, len(self.script) - 1)]
        logits = jnp.full(shape + (self.vocab_size,), -30.0, jnp.float32)
        if self.noise_tokens:
            logits = logits.at[..., jnp.asarray(self.noise_tokens)].set(self.noise_logit)
        return jnp.where(jnp.arange(self.vocab_size) == token, 0.0, logits)

    def decode_params(self, params):
        return params

    def prefill(self, params, tokens, lengths, num_samples, max_new, context_tokens=None):
        batch = tokens.shape[0]
        return self._logits(jnp.zeros((), jnp.int32), (batch,)), {"index": jnp.zeros((), jnp.int32)}

    def decode(self, params, tokens, positions, cache):
        index = cache["index"] + 1
        return self._logits(index, tokens.shape), {"index": index}

    def take_rows(self, cache, rows):
        return cache  # one step counter for every row
