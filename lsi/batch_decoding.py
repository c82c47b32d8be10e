"""Streams any number of text prompts through the compiled sampler in fixed-shape batches.

Host-side work lives here: tokenising and validating prompts, bucketing lengths and padding batches so a run
compiles a handful of programs, dispatching the next batch before reading the last one back (JAX dispatch is
asynchronous, so the device stays busy while the host decodes text), cutting text at stop strings, and a progress bar
with prompts/s and sampled tokens/s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Iterable, Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lsi import partitioning
from lsi.decoding import FINISH_EOS, FINISH_REASONS, FINISH_STOP, LanguageModel, SamplerSpec, bucket_length, make_sampler
from lsi.sampling_methods import SamplingMethod, Temperature
from lsi.vocab import encode_model_input


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """One prompt to sample from. `example_id` names it in errors and seeds its random streams."""

    example_id: str
    prompt: str


@dataclasses.dataclass(frozen=True)
class Completion:
    """The samples of one prompt, in sample order."""

    example_id: str
    prompt_tokens: int
    texts: list[str]  # generated text, cut before any stop string and without the EOS token
    token_ids: list[list[int]]  # generated ids up to and including the EOS / last stop token
    finish_reasons: list[str]  # "eos" | "stop" | "max_length"
    sum_log_probs: list[float]  # sum of log p(token) over `token_ids` (model distribution, temperature 1)


def example_seed_id(example_id: str) -> int:
    """A stable 31-bit integer for a string id (the sampler folds it into the PRNG key)."""
    return int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:4], "little") & 0x7FFFFFFF


def stop_token_sequences(vocab: Any, stop_strings: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Token sequences that spell each stop string, alone and after common left contexts.

    BPE may merge a stop string's first characters with what precedes it, so one string has several spellings.
    These let the device stop early; the host still cuts the text at the string itself, whatever the spelling.
    """
    sequences: set[tuple[int, ...]] = set()
    for stop in stop_strings:
        if not stop:
            raise ValueError("Stop strings must be non-empty.")
        sequences.add(tuple(vocab.encode(stop)))
        for context in ("0", ".", "a", " ", "\n", ")"):
            context_ids = vocab.encode(context)
            ids = vocab.encode(context + stop)
            if ids[: len(context_ids)] == context_ids and len(ids) > len(context_ids):
                sequences.add(tuple(ids[len(context_ids):]))
    return tuple(sorted(sequences))


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to generate, as every generating stage (sample, eval, screen, questions, exemplars) takes
    it: the language model, its params (placed on `mesh`, when there is one), its vocabulary, and the longest sequence
    (prompt + new tokens) it may be given."""

    lm: LanguageModel
    params: Any
    vocab: Any
    max_length: int
    mesh: jax.sharding.Mesh | None = None


# Gin reaches only the settings that change speed, never a sample: `lsi.BatchSampler.retire_stages = 0`.
@gin.configurable(module="lsi", allowlist=["retire_stages", "sort_window", "min_bucket"])
@dataclasses.dataclass
class BatchSampler:
    """Samples `num_samples` continuations for every request, `batch_size` prompts per device call."""

    lm: LanguageModel
    params: Any
    vocab: Any
    max_length: int  # the model's context: prompt + max_new_tokens must fit
    num_samples: int = 1
    max_new_tokens: int = 256
    method: SamplingMethod = Temperature()
    argmax_samples: int = 0  # the first this many of the `num_samples` decode greedily, the rest with `method`
    stop_strings: Sequence[str] = ()
    eos_ids: Sequence[int] | None = None  # default: the vocabulary's EOS; () disables EOS stopping
    batch_size: int = 8
    seed: int = 0
    mesh: jax.sharding.Mesh | None = None
    min_bucket: int = 16
    sort_window: int = 4  # batches whose prompts are sorted by length together to waste less padding
    # The token prefix that every prompt of a batch shares (the few-shot exemplars), rounded down to a multiple of
    # this, is prefilled once per batch instead of once per row; 0 prefills every row in full. Rounding keeps the
    # number of compiled shapes small; results equal the unshared prefill up to float rounding.
    shared_prefix_block: int = 64
    # A batch decodes until its last sample stops, and a step costs every row; when half the prompts are done they
    # leave and the batch goes on at half the rows, up to this many times (one compiled decode step each).
    retire_stages: int = 2
    progress: bool = True

    @classmethod
    def for_model(cls, model: LoadedModel, **settings: Any) -> BatchSampler:
        """A sampler of `model` with these settings (num_samples, method, stop_strings, ...)."""
        return cls(model.lm, model.params, model.vocab, model.max_length, mesh=model.mesh, **settings)

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        eos = (self.vocab.eos_id,) if self.eos_ids is None else tuple(self.eos_ids)
        self.spec = SamplerSpec(
            num_samples=self.num_samples, max_new_tokens=self.max_new_tokens, method=self.method,
            eos_ids=tuple(int(e) for e in eos if e is not None and e >= 0),
            stop_sequences=stop_token_sequences(self.vocab, self.stop_strings), argmax_samples=self.argmax_samples,
            retire_stages=self.retire_stages,
        )
        self._sampler = make_sampler(self.lm, self.spec, self.mesh)
        self.stats = {"prompts": 0, "sampled_tokens": 0, "batches": 0, "padding_rows": 0, "shared_prefix_tokens": 0,
                      "seconds": 0.0}

    def _tokenize(self, request: SampleRequest) -> list[int]:
        ids = encode_model_input(self.vocab, request.prompt)
        if not ids:
            raise ValueError(f"Example {request.example_id!r}: the prompt is empty.")
        if len(ids) + self.max_new_tokens > self.max_length:
            raise ValueError(
                f"Example {request.example_id!r}: prompt of {len(ids)} tokens + max_new_tokens "
                f"{self.max_new_tokens} exceeds the model's max length {self.max_length}."
            )
        return ids

    def _place(self, array: np.ndarray, axes: tuple[str, ...]) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(array)
        return jax.device_put(array, partitioning.logical_sharding(axes, array.shape, self.mesh))

    def _shared_prefix_length(self, token_lists: list[list[int]]) -> int:
        """Tokens that every prompt starts with, rounded down to `shared_prefix_block`; each row keeps >= 1 token."""
        if not self.shared_prefix_block:
            return 0
        first, limit = token_lists[0], min(len(ids) for ids in token_lists) - 1
        common = 0
        while common < limit and all(ids[common] == first[common] for ids in token_lists):
            common += 1
        return common - common % self.shared_prefix_block

    def _dispatch(self, batch: list[tuple[SampleRequest, list[int]]]) -> tuple[list, Any]:
        shared = self._shared_prefix_length([ids for _, ids in batch])
        width = bucket_length(max(len(ids) for _, ids in batch) - shared, self.min_bucket)
        rows = len(batch)
        tokens = np.zeros((self.batch_size, width), np.int32)
        lengths = np.ones((self.batch_size,), np.int32)
        seeds = np.zeros((self.batch_size,), np.int32)
        for i, (request, ids) in enumerate(batch + [batch[0]] * (self.batch_size - rows)):  # pad rows: copies
            tokens[i, : len(ids) - shared] = ids[shared:]
            lengths[i] = len(ids) - shared
            seeds[i] = example_seed_id(request.example_id)
        context = jnp.asarray(np.asarray(batch[0][1][:shared], np.int32)) if shared else None
        output = self._sampler(self.params, self._place(tokens, ("batch", "length")),
                               self._place(lengths, ("batch",)), self._place(seeds, ("batch",)),
                               jnp.asarray(self.seed, jnp.int32), context)
        self.stats["padding_rows"] += self.batch_size - rows
        self.stats["shared_prefix_tokens"] += shared
        return batch, output

    def _collect(self, batch: list, output: Any) -> list[Completion]:
        tokens, lengths, log_probs, reasons = jax.device_get(
            (output.tokens, output.lengths, output.log_probs, output.finish_reason))
        completions = []
        for i, (request, prompt_ids) in enumerate(batch):
            texts, ids, finish, sums = [], [], [], []
            for j in range(self.num_samples):
                n = int(lengths[i, j])
                sample_ids = [int(t) for t in tokens[i, j, :n]]
                text_ids = sample_ids[:-1] if reasons[i, j] == FINISH_EOS else sample_ids
                text, stopped = cut_at_stop(self.vocab.decode(text_ids), self.stop_strings)
                reason = FINISH_REASONS[int(reasons[i, j])]
                if stopped and reason != "eos":
                    reason = FINISH_REASONS[FINISH_STOP]
                texts.append(text)
                ids.append(sample_ids)
                finish.append(reason)
                sums.append(float(log_probs[i, j, :n].sum()))
            completions.append(Completion(request.example_id, len(prompt_ids), texts, ids, finish, sums))
            self.stats["sampled_tokens"] += int(lengths[i].sum())
        self.stats["prompts"] += len(batch)
        self.stats["batches"] += 1
        return completions

    def _batches(self, requests: Iterable[SampleRequest]) -> Iterator[list[tuple[SampleRequest, list[int]]]]:
        """Batches of validated, tokenised requests; each window of batches is sorted by prompt length."""
        window: list[tuple[SampleRequest, list[int]]] = []
        seen: set[str] = set()

        def flush() -> Iterator[list]:
            window.sort(key=lambda item: len(item[1]))
            for start in range(0, len(window), self.batch_size):
                yield window[start: start + self.batch_size]
            window.clear()

        for request in requests:
            if request.example_id in seen:
                raise ValueError(f"Example id {request.example_id!r} appears twice; ids must be unique.")
            seen.add(request.example_id)
            window.append((request, self._tokenize(request)))
            if len(window) == self.batch_size * self.sort_window:
                yield from flush()
        yield from flush()

    def run(self, requests: Iterable[SampleRequest], total: int | None = None) -> Iterator[Completion]:
        """Yields one Completion per request. Order follows the sorted windows, not the input: key by example_id."""
        start = time.perf_counter()
        bar = tqdm(total=total, unit="prompt", disable=not self.progress, desc="sampling")
        pending = None
        try:
            for batch in self._batches(requests):
                dispatched = self._dispatch(batch)  # runs on device while the previous batch is read back
                if pending is not None:
                    yield from self._finish(pending, bar, start)
                pending = dispatched
            if pending is not None:
                yield from self._finish(pending, bar, start)
        finally:
            bar.close()

    def _finish(self, pending: tuple, bar: Any, start: float) -> list[Completion]:
        completions = self._collect(*pending)
        self.stats["seconds"] = time.perf_counter() - start
        bar.update(len(completions))
        seconds = max(self.stats["seconds"], 1e-9)
        bar.set_postfix(prompts_per_s=f"{self.stats['prompts'] / seconds:.2f}",
                        tokens_per_s=f"{self.stats['sampled_tokens'] / seconds:.1f}")
        return completions
