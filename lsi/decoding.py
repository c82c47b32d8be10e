"""A pure, model-agnostic sampler: prefill each prompt once, then decode m samples that share its KV cache.

`temperature_sample(lm, params, prompts, ...)` is a pure function of (params, prompt tokens, example ids, seed,
sampling config). The m samples of a prompt attend to one prefix cache (never copied m times), so memory for m
samples of one long prompt grows with m only by the generated part. Sample j of example i draws its random numbers
from `fold_in(fold_in(fold_in(seed, i), j), step)`, so its tokens do not depend on which other prompts share the
batch, on padding, or on how the batch is sharded.

A batch decodes until its last sample stops, and a step costs every row; once half its prompts are done they leave,
and the loop goes on at half the rows (`retire_stages` times at most), which changes no sample.

How a token is picked is a `SamplingMethod` (`lsi.sampling_methods`). Text-level work (decoding ids, cutting at
stop strings) happens on the host in `lsi.batch_decoding`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lsi.models.configs import TransformerConfig
from lsi.models.transformer import (DecodeCache, LayerwiseDecodeCache, Transformer, decode_layerwise,
                                    init_decode_cache, layerwise_cache, split_layers, take_cache_rows)
from lsi.partitioning import activation_sharding, batch_devices, constrain
from lsi.sampling_methods import Greedy, SamplingMethod, Temperature

Array = jax.Array

# Finish reasons of a sample.
FINISH_MAX_LENGTH = 0
FINISH_EOS = 1
FINISH_STOP = 2
FINISH_REASONS = {FINISH_MAX_LENGTH: "max_length", FINISH_EOS: "eos", FINISH_STOP: "stop"}


@flax.struct.dataclass
class SampleOutput:
    """What the sampler returns for a batch of prompts, m samples each."""

    tokens: Array  # [batch, samples, max_new] int32; positions at or after `lengths` hold `pad_id`
    lengths: Array  # [batch, samples] int32: generated tokens, the EOS or last stop token included
    log_probs: Array  # [batch, samples, max_new] float32: log p(token) under the model (temperature 1, unmasked)
    finish_reason: Array  # [batch, samples] int32, see FINISH_REASONS


class LanguageModel(Protocol):
    """What the sampler needs from a model: a prefill and a one-token decode step over a shared-prefix cache."""

    def decode_params(self, params: Any) -> Any:
        """`params` as `decode` reads them, computed once per batch before the decode loop."""

    def prefill(self, params: Any, tokens: Array, lengths: Array, num_samples: int, max_new: int,
                context_tokens: Array | None = None) -> tuple[Array, Any]:
        """tokens [batch, length] right-padded, lengths [batch] -> (logits of the last prompt token [batch, vocab],
        cache for `num_samples` continuations of up to `max_new` tokens). `context_tokens` [context_len], when
        given, precede every row (a shared few-shot prompt); positions then start at context_len."""

    def decode(self, decode_params: Any, tokens: Array, positions: Array, cache: Any) -> tuple[Array, Any]:
        """tokens, positions [batch, samples] -> (logits [batch, samples, vocab], updated cache)."""

    def take_rows(self, cache: Any, rows: Array) -> Any:
        """The cache of batch rows `rows` [new_batch] int32, in that order (the sampler drops finished prompts)."""


@dataclasses.dataclass(frozen=True)
class TransformerLM:
    """`LanguageModel` over `lsi.models.Transformer`.

    `layerwise` (the default) decodes with the layer loop unrolled (`decode_layerwise`), so a step reads each
    layer's weights and caches in place, where the scanned decode copies them out of the stacked arrays; but every
    layer is traced and compiled. False runs the scanned `Transformer.decode`, which compiles one layer for all.
    Measured on CPU (`benchmarks/decode_paths.py`): SmolLM2-135M samples 1.10x faster layerwise but compiles in
    14 s against 3.5 s; an 80-layer, 256-wide model compiles in 33 s against 5 s and samples faster scanned. Both
    give the same samples (a test).
    """

    config: TransformerConfig
    layerwise: bool = True

    def decode_params(self, params: Any) -> Any:
        """Layerwise: (params, one weight tree per layer), the slices copied once per batch, not per step."""
        return (params, split_layers(params["layers"])) if self.layerwise else params

    def prefill(self, params: Any, tokens: Array, lengths: Array, num_samples: int, max_new: int,
                context_tokens: Array | None = None) -> tuple[Array, DecodeCache | LayerwiseDecodeCache]:
        batch, length = tokens.shape
        model = Transformer(self.config)
        mask = jnp.arange(length)[None, :] < lengths[:, None]  # [batch, length]
        offset = 0 if context_tokens is None else context_tokens.shape[0]
        positions = jnp.broadcast_to(jnp.arange(offset, offset + length, dtype=jnp.int32), (batch, length))
        context = None
        if context_tokens is not None:
            # The shared prompt once, as a batch of one row; its logits are not needed (one row is computed).
            _, (context_k, context_v) = model.apply({"params": params}, context_tokens[None], return_kv=True,
                                                    logits_at=jnp.zeros((1,), jnp.int32))
            context = (context_k[:, 0], context_v[:, 0])  # each [layers, context_len, kv_heads, head_dim]
        logits, (k, v) = model.apply({"params": params}, tokens, positions, mask.astype(jnp.int32), return_kv=True,
                                     logits_at=lengths - 1, context=context)
        if context is not None:
            # Every row's decode prefix is context + own tokens; the copy costs memory, not compute (a decode step
            # reads each row's prefix once either way).
            k = jnp.concatenate([jnp.broadcast_to(context[0][:, None], (k.shape[0], batch, *context[0].shape[1:])),
                                 k], axis=2)
            v = jnp.concatenate([jnp.broadcast_to(context[1][:, None], (v.shape[0], batch, *context[1].shape[1:])),
                                 v], axis=2)
            mask = jnp.concatenate([jnp.ones((batch, offset), bool), mask], axis=1)
        cache = init_decode_cache(k, v, mask, num_samples, max_new)
        return logits, layerwise_cache(cache) if self.layerwise else cache

    def decode(self, decode_params: Any, tokens: Array, positions: Array, cache: DecodeCache | LayerwiseDecodeCache
               ) -> tuple[Array, DecodeCache | LayerwiseDecodeCache]:
        if not self.layerwise:
            return Transformer(self.config).apply({"params": decode_params}, tokens, positions, cache,
                                                  method=Transformer.decode)
        params, layer_params = decode_params
        return decode_layerwise(self.config, params, layer_params, tokens, positions, cache)

    def take_rows(self, cache: DecodeCache | LayerwiseDecodeCache, rows: Array
                  ) -> DecodeCache | LayerwiseDecodeCache:
        return take_cache_rows(cache, rows)


def sample_keys(seed: int | Array, example_ids: Array, num_samples: int, argmax_samples: int = 0) -> Array:
    """[batch, samples] raw PRNG keys; key (i, j) depends only on (seed, example_ids[i], j - argmax_samples).

    The leading argmax samples draw nothing; counting the drawn samples from 0 after them makes those equal to the
    samples of a run without argmax samples.
    """
    base = jax.random.PRNGKey(seed)
    per_example = jax.vmap(lambda i: jax.random.fold_in(base, i))(example_ids.astype(jnp.uint32))
    drawn_index = jnp.maximum(jnp.arange(num_samples) - argmax_samples, 0)
    return jax.vmap(lambda key: jax.vmap(lambda j: jax.random.fold_in(key, j))(drawn_index))(per_example)


def choose_tokens(logits: Array, keys: Array, method: SamplingMethod, argmax_samples: int = 0) -> Array:
    """logits [batch, samples, vocab], keys [batch, samples, 2] -> tokens [batch, samples] int32.

    The first `argmax_samples` samples of every prompt take the argmax whatever the method (greedy decoding that
    shares a batch, and its prefill, with sampled paths); the others are `method.choose`.
    """
    if isinstance(method, Greedy) or argmax_samples >= logits.shape[1]:
        return Greedy().choose(logits, keys)
    if argmax_samples:
        greedy = Greedy().choose(logits[:, :argmax_samples], keys[:, :argmax_samples])
        drawn = method.choose(logits[:, argmax_samples:], keys[:, argmax_samples:])
        return jnp.concatenate([greedy, drawn], axis=1)
    return method.choose(logits, keys)


def _stop_table(stop_sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Stop token sequences right-aligned in a [num_stops, max_len] table (-1 = wildcard) and their lengths."""
    if not stop_sequences:
        return np.full((0, 1), -1, np.int32), np.zeros((0,), np.int32)
    width = max(len(s) for s in stop_sequences)
    table = np.full((len(stop_sequences), width), -1, np.int32)
    for row, seq in enumerate(stop_sequences):
        if not seq:
            raise ValueError("An empty stop sequence would stop every sample immediately.")
        table[row, width - len(seq):] = seq
    return table, np.asarray([len(s) for s in stop_sequences], np.int32)


def _ends_with_stop(generated: Array, step: Array, table: Array, stop_lengths: Array) -> Array:
    """Whether the tokens generated up to `step` end with any stop sequence. generated: [batch, samples, max_new]."""
    if table.shape[0] == 0:
        return jnp.zeros(generated.shape[:2], bool)
    width = table.shape[1]
    offsets = step - (width - 1) + jnp.arange(width)  # [width] positions of the trailing window
    window = jnp.take(generated, jnp.clip(offsets, 0), axis=2)  # [batch, samples, width]
    valid = offsets >= 0
    match = (table[None, None] == -1) | ((window[:, :, None, :] == table[None, None]) & valid)
    long_enough = stop_lengths <= step + 1  # [num_stops]
    return jnp.any(jnp.all(match, axis=-1) & long_enough, axis=-1)


@flax.struct.dataclass
class _LoopState:
    """The decode loop's state over its slots: one slot per prompt still in the batch (see `retire_stages`)."""

    step: Array  # [] int32: index of the token chosen last
    rows: Array  # [slots] int32: the batch row (prompt) each slot decodes
    prompt_lengths: Array  # [slots] int32
    keys: Array  # [slots, samples, 2] per-sample PRNG keys, folded with the step
    tokens: Array  # [slots, samples, max_new]
    log_probs: Array  # [slots, samples, max_new]
    done: Array  # [slots, samples] bool
    lengths: Array  # [slots, samples]
    finish_reason: Array  # [slots, samples]
    cache: Any

    @classmethod
    def start(cls, prompt_lengths: Array, keys: Array, max_new_tokens: int, pad_id: int, cache: Any) -> "_LoopState":
        shape = keys.shape[:2]
        return cls(step=jnp.zeros((), jnp.int32), rows=jnp.arange(shape[0], dtype=jnp.int32),
                   prompt_lengths=prompt_lengths, keys=keys,
                   tokens=jnp.full((*shape, max_new_tokens), pad_id, jnp.int32),
                   log_probs=jnp.zeros((*shape, max_new_tokens), jnp.float32), done=jnp.zeros(shape, bool),
                   lengths=jnp.zeros(shape, jnp.int32), finish_reason=jnp.full(shape, FINISH_MAX_LENGTH, jnp.int32),
                   cache=cache)

    def unfinished_rows(self) -> Array:
        """[] int32: slots whose prompt has a sample still decoding."""
        return jnp.sum(~jnp.all(self.done, axis=1), dtype=jnp.int32)

    def keep_unfinished(self, slots: int, take_rows: Any) -> "_LoopState":
        """The state over `slots` slots: every unfinished prompt's (the caller checks they fit), then finished ones.

        Rows move whole (cache, tokens, keys), so each keeps decoding exactly as it would have in the full batch."""
        order = jnp.argsort(jnp.all(self.done, axis=1), stable=True)[:slots]  # unfinished first, in row order
        per_slot = {name: jnp.take(getattr(self, name), order, axis=0) for name in (
            "rows", "prompt_lengths", "keys", "tokens", "log_probs", "done", "lengths", "finish_reason")}
        return self.replace(cache=take_rows(self.cache, order), **per_slot)

    def store(self, output: SampleOutput) -> SampleOutput:
        """`output` [batch, ...] with each slot's results written to its batch row."""
        return output.replace(tokens=output.tokens.at[self.rows].set(self.tokens),
                              lengths=output.lengths.at[self.rows].set(self.lengths),
                              log_probs=output.log_probs.at[self.rows].set(self.log_probs),
                              finish_reason=output.finish_reason.at[self.rows].set(self.finish_reason))


@dataclasses.dataclass(frozen=True)
class _TokenChoice:
    """How each step picks its tokens and decides which samples are done (static within one sampler trace)."""

    method: SamplingMethod
    argmax_samples: int
    eos: Array  # [num_eos] int32
    stop_table: Array  # [num_stops, width] right-aligned, -1 = wildcard
    stop_lengths: Array  # [num_stops]
    pad_id: int

    def __call__(self, state: _LoopState, logits: Array, step: Array) -> _LoopState:
        """Picks token `step` for every sample from logits [slots, samples, vocab] and updates the stop flags."""
        logits = constrain(logits, ("batch", "samples", "vocab"))
        step_keys = jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, step)))(state.keys)
        token = choose_tokens(logits, step_keys, self.method, self.argmax_samples)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[..., None], axis=-1)[..., 0]
        token = jnp.where(state.done, self.pad_id, token)
        tokens = state.tokens.at[:, :, step].set(token)
        log_probs = state.log_probs.at[:, :, step].set(jnp.where(state.done, 0.0, log_prob))
        hit_eos = jnp.any(token[..., None] == self.eos, axis=-1) & ~state.done
        hit_stop = _ends_with_stop(tokens, step, self.stop_table, self.stop_lengths) & ~state.done & ~hit_eos
        reason = jnp.where(hit_eos, FINISH_EOS, jnp.where(hit_stop, FINISH_STOP, state.finish_reason))
        lengths = jnp.where(state.done, state.lengths, step + 1)
        return state.replace(step=step, tokens=tokens, log_probs=log_probs, done=state.done | hit_eos | hit_stop,
                             lengths=lengths, finish_reason=reason)


def retire_capacities(batch: int, retire_stages: int, multiple: int = 1) -> tuple[int, ...]:
    """The slot counts the decode loop runs at: the batch, then halved up to `retire_stages` times, each a multiple
    of `multiple` (the devices that split the batch) so every stage keeps the batch sharded alike."""
    capacities = [batch]
    while (len(capacities) <= retire_stages and capacities[-1] % 2 == 0
           and (capacities[-1] // 2) % multiple == 0):
        capacities.append(capacities[-1] // 2)
    return tuple(capacities)


def temperature_sample(
    lm: LanguageModel,
    params: Any,
    prompt_tokens: Array,
    prompt_lengths: Array,
    example_ids: Array,
    *,
    seed: int | Array,
    num_samples: int,
    max_new_tokens: int,
    method: SamplingMethod = Temperature(),
    eos_ids: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    pad_id: int = 0,
    context_tokens: Array | None = None,
    argmax_samples: int = 0,
    retire_stages: int = 0,
    retire_multiple: int = 1,
) -> SampleOutput:
    """Samples `num_samples` continuations of each prompt (traceable: jit it, see `make_sampler`).

    prompt_tokens: int32 [batch, prompt_len] right-padded; prompt_lengths: int32 [batch] (>= 1);
    example_ids: int [batch] stable ids that seed each prompt's random streams;
    context_tokens: optional int32 [context_len] that precede every prompt (prefilled once for the batch);
    argmax_samples: the first this many samples of each prompt decode greedily (see `choose_tokens`).
    The loop is a `lax.while_loop` that exits as soon as every sample has hit EOS or a stop sequence.
    retire_stages: a decode step costs every row of the batch, finished or not, so when no more than half the
    prompts are still decoding, the rest leave and the loop goes on at half the rows; at most this many times
    (`retire_capacities`; each stage is one more compiled decode step). Samples are the same either way.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not 0 <= argmax_samples <= num_samples:
        raise ValueError(f"argmax_samples must be in [0, num_samples={num_samples}], got {argmax_samples}.")
    batch = prompt_tokens.shape[0]
    table, stop_lengths = (jnp.asarray(a) for a in _stop_table(stop_sequences))
    choose = _TokenChoice(method=method, argmax_samples=argmax_samples,
                          eos=jnp.asarray(np.asarray(eos_ids, np.int32).reshape(-1)), stop_table=table,
                          stop_lengths=stop_lengths, pad_id=pad_id)
    context = {} if context_tokens is None else {"context_tokens": context_tokens}
    first_logits, cache = lm.prefill(params, prompt_tokens, prompt_lengths, num_samples, max_new_tokens, **context)
    offset = 0 if context_tokens is None else context_tokens.shape[0]
    first_logits = jnp.broadcast_to(first_logits[:, None, :], (batch, num_samples, first_logits.shape[-1]))
    keys = sample_keys(seed, example_ids, num_samples, argmax_samples)
    state = _LoopState.start(prompt_lengths, keys, max_new_tokens, pad_id, cache)
    state = choose(state, first_logits.astype(jnp.float32), jnp.zeros((), jnp.int32))
    # Every slot holds its own row until the first stage ends (then each stage writes its slots' rows here).
    output = SampleOutput(tokens=state.tokens, lengths=state.lengths, log_probs=state.log_probs,
                          finish_reason=state.finish_reason)
    return _decode_in_stages(lm, lm.decode_params(params), choose, state, output, offset, max_new_tokens,
                             retire_capacities(batch, retire_stages, retire_multiple))


def _decode_in_stages(lm: LanguageModel, decode_params: Any, choose: _TokenChoice, state: _LoopState,
                      output: SampleOutput, offset: int, max_new_tokens: int, capacities: tuple[int, ...]
                      ) -> SampleOutput:
    """The decode loop after the first token: at capacities[0] slots, then each smaller capacity once the
    unfinished prompts fit it (`retire_capacities`); every stage writes its slots' results into `output`."""

    def steps_left(state: _LoopState) -> Array:
        return (state.step + 1 < max_new_tokens) & ~jnp.all(state.done)

    def body(state: _LoopState) -> _LoopState:
        previous = jax.lax.dynamic_index_in_dim(state.tokens, state.step, axis=2, keepdims=False)
        positions = offset + state.prompt_lengths[:, None] + state.step  # RoPE position of `previous`
        logits, cache = lm.decode(decode_params, previous, jnp.broadcast_to(positions, state.done.shape).astype(
            jnp.int32), state.cache)
        return choose(state.replace(cache=cache), logits.astype(jnp.float32), state.step + 1)

    def decode_from(stage: int, state: _LoopState, output: SampleOutput) -> SampleOutput:
        """Decodes at capacities[stage] slots until the unfinished prompts fit the next stage, then moves on."""
        fits_next = capacities[stage + 1] if stage + 1 < len(capacities) else 0
        state = jax.lax.while_loop(lambda s: steps_left(s) & (s.unfinished_rows() > fits_next), body, state)
        output = state.store(output)
        if not fits_next:
            return output
        return jax.lax.cond(
            steps_left(state),
            lambda: decode_from(stage + 1, state.keep_unfinished(fits_next, lm.take_rows), output),
            lambda: output)

    return decode_from(0, state, output)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Static settings of a compiled sampler (hashable: one compiled program per spec and input shape)."""

    num_samples: int
    max_new_tokens: int
    method: SamplingMethod = Temperature()
    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    pad_id: int = 0
    argmax_samples: int = 0
    retire_stages: int = 2  # times the batch halves as its prompts finish (`temperature_sample`); 0: never


def make_sampler(lm: LanguageModel, spec: SamplerSpec, mesh: jax.sharding.Mesh | None = None):
    """A jitted `(params, prompt_tokens, prompt_lengths, example_ids, seed, context_tokens=None) -> SampleOutput`.

    With a mesh, activations are constrained by their logical axes (prompts and samples data-parallel, heads and
    mlp tensor-parallel); params must already be placed with `lsi.partitioning.shard_tree`.
    """

    def run(params: Any, prompt_tokens: Array, prompt_lengths: Array, example_ids: Array, seed: Array,
            context_tokens: Array | None = None) -> SampleOutput:
        with activation_sharding(mesh):
            return temperature_sample(
                lm, params, prompt_tokens, prompt_lengths, example_ids, seed=seed,
                num_samples=spec.num_samples, max_new_tokens=spec.max_new_tokens, method=spec.method,
                eos_ids=spec.eos_ids, stop_sequences=spec.stop_sequences, pad_id=spec.pad_id,
                context_tokens=context_tokens, argmax_samples=spec.argmax_samples,
                retire_stages=spec.retire_stages, retire_multiple=batch_devices(mesh),
            )

    return jax.jit(run)


def bucket_length(length: int, minimum: int = 16) -> int:
    """The padded length for a prompt: the next power of two (at least `minimum`), so a run compiles few shapes."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}.")
    return max(minimum, 1 << (length - 1).bit_length())
