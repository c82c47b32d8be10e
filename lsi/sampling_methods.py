"""How the sampler picks the next token: one class per method, each owning its logit filter.

A method is a frozen (hashable) dataclass, so it can sit in a compiled sampler's static spec, and stage configs hold
one, bound from gin in the stage's scope:

    lsi.SampleStageConfig.method = @sample/lsi.Temperature()
    sample/lsi.Temperature.temperature = 0.7
    # or: lsi.SampleStageConfig.method = @sample/lsi.MinP()  with  sample/lsi.MinP.min_p = 0.05

Its `name` field (not settable) makes `dataclasses.asdict` of a config say which method it holds, so manifests and
lineage records tell Temperature(T=1) from MinP(T=1).

Every drawing method keeps a set of candidate tokens and draws among them with `jax.random.categorical`:
`candidates(logits)` returns the filtered logits, restricted to the top-k tokens when `top_k` is set (a draw among k
values needs k random numbers per sample instead of vocab-many: the dominant cost of a CPU decode step otherwise).
`masked_logits(logits)` is the same filter over the whole vocabulary: the reference distribution the tests compare
sampled frequencies against. Adding a method is a subclass of `Sampled` with its own `restrict`, plus its test.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array


class SamplingMethod:
    """Base of all methods: `choose(logits [..., vocab], keys [..., 2]) -> tokens [...] int32`."""

    def choose(self, logits: Array, keys: Array) -> Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Greedy(SamplingMethod):
    """Exact argmax decoding (not a low temperature); every sample of a prompt is the same."""

    name: str = dataclasses.field(default="greedy", init=False, repr=False)

    def choose(self, logits: Array, keys: Array) -> Array:
        del keys
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampled(SamplingMethod):
    """Draws from softmax(logits / temperature), restricted to the top-k tokens and then by `restrict`."""

    temperature: float = 0.7
    top_k: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use Greedy() for argmax), got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}.")

    def restrict(self, scaled: Array, descending: Array | None) -> Array:
        """`scaled` [..., n] with the tokens this method drops set to -inf. `descending` is `scaled` sorted high to
        low when the caller has it (the top-k candidates), else None. The identity here."""
        del descending
        return scaled

    def candidates(self, logits: Array) -> tuple[Array, Array | None]:
        """logits [..., vocab] -> (filtered scaled logits [..., n], their token ids [..., n], or None when n is the
        whole vocabulary)."""
        scaled = logits / self.temperature
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            values, ids = jax.lax.top_k(scaled, self.top_k)  # [..., k], descending
            return self.restrict(values, values), ids
        return self.restrict(scaled, None), None

    def masked_logits(self, logits: Array) -> Array:
        """The distribution `choose` samples from, over the whole vocabulary: filtered tokens are -inf."""
        scaled = logits / self.temperature
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = jax.lax.top_k(scaled, self.top_k)[0][..., -1:]  # [..., 1]
            scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
        return self.restrict(scaled, None)

    def choose(self, logits: Array, keys: Array) -> Array:
        values, ids = self.candidates(logits)
        flat_keys = keys.reshape(-1, keys.shape[-1])
        flat_values = values.reshape(-1, values.shape[-1])
        choice = jax.vmap(jax.random.categorical)(flat_keys, flat_values).reshape(values.shape[:-1])
        if ids is not None:
            choice = jnp.take_along_axis(ids, choice[..., None], axis=-1)[..., 0]
        return choice.astype(jnp.int32)


def with_temperature(method: SamplingMethod, temperature: float) -> SamplingMethod:
    """`method` at another temperature (a temperature sweep or the screen's grid); only drawing methods have one."""
    if not isinstance(method, Sampled):
        raise ValueError(f"A temperature grid needs a drawing sampling method, got {method!r}.")
    return dataclasses.replace(method, temperature=temperature)


def _descending(scaled: Array, descending: Array | None) -> Array:
    return -jnp.sort(-scaled, axis=-1) if descending is None else descending


@dataclasses.dataclass(frozen=True)
class Temperature(Sampled):
    """Temperature sampling with optional top-k and nucleus (top-p) filtering, in HF's order: temperature, top-k,
    then the smallest set of tokens whose probability reaches top_p."""

    top_p: float | None = None
    name: str = dataclasses.field(default="temperature", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")

    def restrict(self, scaled: Array, descending: Array | None) -> Array:
        if self.top_p is None or self.top_p >= 1.0:
            return scaled
        ordered = _descending(scaled, descending)
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < self.top_p  # the most likely token is always kept
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)  # [..., 1]
        return jnp.where(scaled < threshold, -jnp.inf, scaled)


@dataclasses.dataclass(frozen=True)
class MinP(Sampled):
    """Min-p sampling (Nguyen et al., 2024; HF's `min_p`): after temperature (and top-k), keep the tokens whose
    probability is at least `min_p` times the most likely token's, so the kept set shrinks when the model is sure
    and widens when it is not."""

    temperature: float = 1.0
    min_p: float = 0.1
    name: str = dataclasses.field(default="min_p", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.min_p <= 1:
            raise ValueError(f"min_p must be in (0, 1], got {self.min_p}.")

    def restrict(self, scaled: Array, descending: Array | None) -> Array:
        # p_i >= min_p * p_max  <=>  scaled_i >= max(scaled) + log(min_p), whatever the normaliser.
        best = jnp.max(scaled, axis=-1, keepdims=True) if descending is None else descending[..., :1]
        return jnp.where(scaled < best + math.log(self.min_p), -jnp.inf, scaled)


SAMPLING_METHODS = (Greedy, Temperature, MinP)  # registered with gin as lsi.Greedy, lsi.Temperature, lsi.MinP
