"""One Flax Linen decoder-only Transformer for PaLM, the Llama family and the test models.

Features are switched by `TransformerConfig`: parallel or sequential block, MHA/MQA/GQA, SwiGLU/GeGLU, RoPE (with
Llama 3 scaling), RMSNorm or bias-free LayerNorm, qkv bias, tied or untied embeddings. Layers are `nn.scan`ned, so
every layer parameter has a leading `layers` axis and compile time does not grow with depth.

Two ways to run it:
- `__call__(tokens, positions, segment_ids)`: the full-sequence forward (training, scoring, prefill). With
  `return_kv=True` it also returns every layer's keys and values, which `decode` then attends to as a shared prefix.
- `decode(tokens, positions, cache)`: one new token for each of `samples` continuations of every batch row. All
  continuations of a row attend to that row's single prefix cache (never copied per sample) plus their own
  generated keys and values.

Every parameter carries logical axis names (`vocab, embed, heads, kv_heads, kv, mlp, layers`) and key activations
are constrained by name through `lsi.partitioning.constrain`; no mesh axis is named here.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsi.models.configs import TransformerConfig
from lsi.models.custom_grads import matmuls
from lsi.partitioning import constrain

Array = jax.Array

# Masked attention logits get this value, not -inf: a row with nothing to attend to (a padding query) then gets
# uniform weights instead of NaN, and its output is ignored by the caller anyway.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@flax.struct.dataclass
class DecodeCache:
    """Keys and values for incremental decoding of `samples` continuations per batch row.

    The prefix (the prompt) is stored once per row; generated tokens are stored per sample. `index` is the number of
    generated slots already written (the same for every row: rows that finished keep writing ignored tokens).
    """

    # Heads come before length so that each decode step's attention is a plain batched matrix product over
    # contiguous [length, head_dim] blocks: no per-step transpose of the caches (which dominated a step otherwise).
    prefix_k: Array  # [layers, batch, kv_heads, prefix_len, head_dim]
    prefix_v: Array  # [layers, batch, kv_heads, prefix_len, head_dim]
    prefix_mask: Array  # [batch, prefix_len] bool: True where the prefix slot holds a real token
    k: Array  # [layers, batch, samples, kv_heads, max_new, head_dim]
    v: Array  # [layers, batch, samples, kv_heads, max_new, head_dim]
    index: Array  # [] int32

    @property
    def max_new(self) -> int:
        return self.k.shape[4]


CACHE_LOGICAL_AXES = DecodeCache(
    prefix_k=("layers", "batch", "kv_heads", "cache_length", "kv"),
    prefix_v=("layers", "batch", "kv_heads", "cache_length", "kv"),
    prefix_mask=("batch", "cache_length"),
    k=("layers", "batch", "samples", "kv_heads", "cache_length", "kv"),
    v=("layers", "batch", "samples", "kv_heads", "cache_length", "kv"),
    index=(),
)


def init_decode_cache(
    prefix_k: Array, prefix_v: Array, prefix_mask: Array, num_samples: int, max_new: int
) -> DecodeCache:
    """An empty generation cache behind a prefilled prefix.

    prefix_k/v: [layers, batch, prefix_len, kv_heads, head_dim] as returned by `__call__(return_kv=True)`; they are
    stored heads-first once here, so no decode step has to transpose them.
    """
    layers, batch, _, kv_heads, head_dim = prefix_k.shape
    shape = (layers, batch, num_samples, kv_heads, max_new, head_dim)
    return DecodeCache(
        prefix_k=jnp.swapaxes(prefix_k, 2, 3),
        prefix_v=jnp.swapaxes(prefix_v, 2, 3),
        prefix_mask=prefix_mask.astype(bool),
        k=jnp.zeros(shape, prefix_k.dtype),
        v=jnp.zeros(shape, prefix_v.dtype),
        index=jnp.zeros((), jnp.int32),
    )


def write_slot(cache: Array, step: Array, index: Array) -> Array:
    """Writes one decode step's keys or values into generated slot `index`, in place.
    cache: [..., kv_heads, max_new, hd]; step: [..., kv_heads, hd]."""
    return jax.lax.dynamic_update_slice_in_dim(cache, step[..., None, :].astype(cache.dtype), index, axis=cache.ndim - 2)


def rope_inverse_frequencies(config: TransformerConfig) -> np.ndarray:
    """[head_dim // 2] rotation frequencies, with Llama 3's frequency-dependent scaling when configured."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32)
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotates halves of the last axis (HF Llama's `rotate_half` layout) by position-dependent angles.

    x: [..., length, heads, head_dim]; positions: [..., length].
    """
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [..., length, head_dim // 2]
    sin = jnp.sin(angles)[..., None, :]  # [..., length, 1, head_dim // 2]
    cos = jnp.cos(angles)[..., None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init: Any) -> Array:
    cfg: TransformerConfig = module.config
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, cfg.param_dtype)


def _fan_in_init(fan_in_axes: tuple[int, ...]) -> Any:
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=fan_in_axes,
                                            out_axis=())


class Norm(nn.Module):
    """RMSNorm (Llama) or LayerNorm without bias (PaLM), computed in float32."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = _param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        if cfg.norm_type == "layer":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
        return (normed * scale.astype(jnp.float32)).astype(cfg.dtype)


class Attention(nn.Module):
    """Grouped-query attention (MHA when kv_heads == heads, MQA when kv_heads == 1) with RoPE."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        d, h, kv, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.query = _param(self, "query", (d, h, hd), ("embed", "heads", "kv"), _fan_in_init((0,)))
        self.key = _param(self, "key", (d, kv, hd), ("embed", "kv_heads", "kv"), _fan_in_init((0,)))
        self.value = _param(self, "value", (d, kv, hd), ("embed", "kv_heads", "kv"), _fan_in_init((0,)))
        self.out = _param(self, "out", (h, hd, d), ("heads", "kv", "embed"), _fan_in_init((0, 1)))
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            self.query_bias = _param(self, "query_bias", (h, hd), ("heads", "kv"), zeros)
            self.key_bias = _param(self, "key_bias", (kv, hd), ("kv_heads", "kv"), zeros)
            self.value_bias = _param(self, "value_bias", (kv, hd), ("kv_heads", "kv"), zeros)
        self.inv_freq = rope_inverse_frequencies(cfg)

    def _project(self, x: Array, positions: Array) -> tuple[Array, Array, Array]:
        """x: [..., length, embed] -> q [..., length, heads, hd], k and v [..., length, kv_heads, hd]."""
        cfg = self.config
        dt = cfg.dtype
        dense = matmuls(cfg).dense
        q = dense(x, self.query.astype(dt))  # [..., heads, hd]
        k = dense(x, self.key.astype(dt))  # [..., kv_heads, hd]
        v = dense(x, self.value.astype(dt))
        if cfg.qkv_bias:
            q, k, v = q + self.query_bias.astype(dt), k + self.key_bias.astype(dt), v + self.value_bias.astype(dt)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        scale = cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5
        return q * jnp.asarray(scale, dt), k, v

    def _grouped(self, q: Array) -> Array:
        """[..., heads, hd] -> [..., kv_heads, heads_per_kv, hd]: query heads grouped by the KV head they read."""
        cfg = self.config
        return q.reshape(*q.shape[:-2], cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)

    def _output(self, attended: Array) -> Array:
        """[..., kv_heads, group, hd] -> [..., embed]."""
        cfg = self.config
        merged = attended.reshape(*attended.shape[:-3], cfg.num_heads, cfg.head_dim).astype(cfg.dtype)
        return matmuls(cfg).dense(merged, self.out.astype(cfg.dtype), 2)

    def __call__(self, x: Array, positions: Array, segment_ids: Array,
                 context: tuple[Array, Array] | None = None) -> tuple[Array, tuple[Array, Array]]:
        """Full-sequence causal attention within segments; segment id 0 marks padding.

        x: [batch, length, embed]; positions, segment_ids: [batch, length].
        context: optional (k, v), each [context_len, kv_heads, hd]: keys and values of tokens that precede every
        row (a few-shot prompt shared by a batch of questions), attended to by every query. Positions then continue
        after the context.
        Returns the output [batch, length, embed] and this layer's (k, v), each [batch, length, kv_heads, hd].
        """
        q, k, v = self._project(x, positions)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        k = constrain(k, ("batch", "length", "kv_heads", "kv"))
        v = constrain(v, ("batch", "length", "kv_heads", "kv"))
        length = x.shape[1]
        block = self.config.attention_block
        starts = range(0, length, block) if block and length > block else [0]
        q = self._grouped(q)  # [batch, length, kv_heads, group, hd]
        attended = [self._attend_block(q, k, v, segment_ids, start, min(start + (block or length), length), context)
                    for start in starts]
        attended = attended[0] if len(attended) == 1 else jnp.concatenate(attended, axis=1)
        return self._output(attended), (k, v)

    def _attend_block(self, q: Array, k: Array, v: Array, segment_ids: Array, start: int, end: int,
                      context: tuple[Array, Array] | None) -> Array:
        """Queries [start, end) against keys [0, end): causal attention never needs the keys after a block, so
        blocking skips about half of the score matrix (and its softmax) that a full [length, length] pass masks.

        q: [batch, length, kv_heads, group, hd]; k, v: [batch, length, kv_heads, hd] -> [batch, end-start, ...]."""
        q_block, k_seen, v_seen = q[:, start:end], k[:, :end], v[:, :end]
        logits = jnp.einsum("btkgd,bskd->bkgts", q_block, k_seen, preferred_element_type=jnp.float32)
        query_pos = jnp.arange(start, end)[:, None]
        causal = query_pos >= jnp.arange(end)[None, :]  # [query, key]
        query_segment, key_segment = segment_ids[:, start:end], segment_ids[:, :end]
        allowed = causal[None] & (query_segment[:, :, None] == key_segment[:, None, :]) & (key_segment[:, None, :] != 0)
        logits = jnp.where(allowed[:, None, None], logits, _MASK_VALUE)  # [batch, kv_heads, group, query, key]
        if context is None:
            weights = jax.nn.softmax(logits, axis=-1).astype(self.config.dtype)
            return jnp.einsum("bkgts,bskd->btkgd", weights, v_seen)
        context_k, context_v = context  # [context_len, kv_heads, hd]
        context_logits = jnp.einsum("btkgd,ckd->bkgtc", q_block, context_k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(jnp.concatenate([context_logits, logits], axis=-1), axis=-1)
        w_context, w_seen = jnp.split(weights.astype(self.config.dtype), [context_k.shape[0]], axis=-1)
        return (jnp.einsum("bkgtc,ckd->btkgd", w_context, context_v)
                + jnp.einsum("bkgts,bskd->btkgd", w_seen, v_seen))

    def decode(self, x: Array, positions: Array, layer_cache: tuple[Array, ...], prefix_mask: Array,
               index: Array) -> tuple[Array, tuple[Array, Array]]:
        """One new token per sample attending to the shared prefix, earlier generated tokens, and itself.

        x: [batch, samples, embed]; positions: [batch, samples];
        layer_cache: prefix_k/v [batch, kv_heads, prefix_len, hd], k/v [batch, samples, kv_heads, max_new, hd];
        prefix_mask: [batch, prefix_len]; index: [] slots of k/v already written.
        Returns the output [batch, samples, embed] and the new token's (k, v), each [batch, samples, kv_heads, hd].
        """
        prefix_k, prefix_v, cache_k, cache_v = layer_cache
        q, k_new, v_new = self._project(x[:, :, None, :], positions[:, :, None])
        q, k_new, v_new = q[:, :, 0], k_new[:, :, 0], v_new[:, :, 0]  # [batch, samples, heads or kv_heads, hd]
        q = self._grouped(q)  # [batch, samples, kv_heads, group, hd]
        f32 = jnp.float32
        prefix_logits = jnp.einsum("bmkgd,bkpd->bmkgp", q, prefix_k, preferred_element_type=f32)
        prefix_logits = jnp.where(prefix_mask[:, None, None, None, :], prefix_logits, _MASK_VALUE)
        cache_logits = jnp.einsum("bmkgd,bmksd->bmkgs", q, cache_k, preferred_element_type=f32)
        written = jnp.arange(cache_k.shape[3]) < index  # [max_new]
        cache_logits = jnp.where(written, cache_logits, _MASK_VALUE)
        self_logits = jnp.einsum("bmkgd,bmkd->bmkg", q, k_new, preferred_element_type=f32)[..., None]
        logits = jnp.concatenate([prefix_logits, cache_logits, self_logits], axis=-1)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.config.dtype)
        num_prefix, num_cache = prefix_k.shape[2], cache_k.shape[3]
        w_prefix, w_cache, w_self = jnp.split(weights, [num_prefix, num_prefix + num_cache], axis=-1)
        attended = (
            jnp.einsum("bmkgp,bkpd->bmkgd", w_prefix, prefix_v)
            + jnp.einsum("bmkgs,bmksd->bmkgd", w_cache, cache_v)
            + w_self * v_new[:, :, :, None, :]
        )
        return self._output(attended), (k_new, v_new)


class MLP(nn.Module):
    """Gated MLP: SwiGLU (silu gate) or GeGLU (gelu gate)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        d, f, dt = cfg.embed_dim, cfg.mlp_dim, cfg.dtype
        gate_kernel = _param(self, "gate", (d, f), ("embed", "mlp"), _fan_in_init((0,)))
        up_kernel = _param(self, "up", (d, f), ("embed", "mlp"), _fan_in_init((0,)))
        down_kernel = _param(self, "down", (f, d), ("mlp", "embed"), _fan_in_init((0,)))
        return matmuls(cfg).gated_mlp(x, gate_kernel.astype(dt), up_kernel.astype(dt), down_kernel.astype(dt),
                                      cfg.activation)


class Block(nn.Module):
    """One layer; `nn.scan` stacks them. `__call__` runs a full sequence, `decode` one token per sample."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.attention = Attention(cfg)
        self.pre_attention_norm = Norm(cfg)
        self.mlp = MLP(cfg)
        if not cfg.parallel_block:
            self.pre_mlp_norm = Norm(cfg)

    def __call__(self, x: Array, shared: tuple[Array, Array], context: tuple[Array, Array] | None
                 ) -> tuple[Array, tuple[Array, Array]]:
        """x [batch, length, embed]; shared = (positions, segment_ids), the same for every layer; context: None or
        this layer's shared-context (k, v). Returns the layer's output and its (k, v)."""
        positions, segment_ids = shared
        normed = self.pre_attention_norm(x)
        attended, kv = self.attention(normed, positions, segment_ids, context)
        return self._add_mlp(x, normed, attended, ("batch", "length")), kv

    def decode(self, x: Array, shared: tuple[Array, Array, Array], layer_cache: tuple[Array, ...]
               ) -> tuple[Array, tuple[Array, Array]]:
        """x [batch, samples, embed]; shared = (positions, prefix_mask, index); layer_cache: this layer's slice of the
        decode cache. Returns the layer's output and the step's (k, v)."""
        positions, prefix_mask, index = shared
        normed = self.pre_attention_norm(x)
        attended, kv = self.attention.decode(normed, positions, layer_cache, prefix_mask, index)
        return self._add_mlp(x, normed, attended, ("batch", "samples")), kv

    def _add_mlp(self, x: Array, normed: Array, attended: Array, batch_axes: tuple[str, str]) -> Array:
        """The residual stream after attention and MLP: parallel (PaLM) or sequential (Llama)."""
        if self.config.parallel_block:
            x = x + attended + self.mlp(normed)
        else:
            x = x + attended
            x = x + self.mlp(self.pre_mlp_norm(x))
        return constrain(x, batch_axes + ("embed",))


def _remat_policy(name: str) -> Any:
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return None


class Transformer(nn.Module):
    """Decoder-only LM. `apply({"params": p}, tokens)` maps int32 [batch, length] to float32 [batch, length, vocab]."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
                                nn.initializers.normal(stddev=1.0 if cfg.logits_scale else 0.02))
        self.final_norm = Norm(cfg, name="final_norm")
        if not cfg.tie_embeddings:
            self.lm_head = _param(self, "lm_head", (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"),
                                  _fan_in_init((0,)))
        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=_remat_policy(cfg.remat), prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, 0),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
            methods=["__call__", "decode"],
        )(cfg, name="layers")

    def _embed(self, tokens: Array) -> Array:
        cfg = self.config
        x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.dtype)
        if cfg.embed_scale is not None:
            x = x * jnp.asarray(cfg.embed_scale, cfg.dtype)
        return x

    def _logits(self, x: Array) -> Array:
        cfg = self.config
        x = self.final_norm(x)
        head = self.embedding if cfg.tie_embeddings else self.lm_head
        logits = matmuls(cfg).output_logits(x, head.astype(cfg.dtype), cfg.tie_embeddings)
        if cfg.logits_scale is not None:
            logits = logits * cfg.logits_scale
        return logits

    def __call__(self, tokens: Array, positions: Array | None = None, segment_ids: Array | None = None,
                 return_kv: bool = False, logits_at: Array | None = None,
                 context: tuple[Array, Array] | None = None) -> Array | tuple[Array, tuple[Array, Array]]:
        """tokens: int32 [batch, length]. positions default to 0..length-1 (after the context, if any);
        segment_ids to all ones (0 = padding).

        context: optional (k, v) of every layer, each [layers, context_len, kv_heads, head_dim], for tokens that
        precede every row (see `Attention.__call__`); a prefill of many questions behind one few-shot prompt
        computes that prompt once instead of once per row.
        Returns float32 logits [batch, length, vocab], or [batch, vocab] at the positions `logits_at` ([batch]
        int32) only (a prefill needs one row of logits, not length x vocab of them); with `return_kv`, also
        (k, v) of every layer, each [layers, batch, length, kv_heads, head_dim], for `init_decode_cache`.
        """
        batch, length = tokens.shape
        if positions is None:
            offset = 0 if context is None else context[0].shape[1]
            positions = jnp.broadcast_to(jnp.arange(offset, offset + length, dtype=jnp.int32), (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        x = constrain(self._embed(tokens), ("batch", "length", "embed"))
        x, kv = self.layers(x, (positions, segment_ids), context)
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[:, None, None].astype(jnp.int32), axis=1)[:, 0]  # [batch, embed]
            return (constrain(self._logits(x), ("batch", "vocab")), kv) if return_kv else self._logits(x)
        logits = constrain(self._logits(x), ("batch", "length", "vocab"))
        return (logits, kv) if return_kv else logits

    def decode(self, tokens: Array, positions: Array, cache: DecodeCache) -> tuple[Array, DecodeCache]:
        """One step for every sample. tokens, positions: int32 [batch, samples] (positions are RoPE positions).

        Returns float32 logits [batch, samples, vocab] and the cache with the new keys/values written at `index`.
        """
        x = constrain(self._embed(tokens), ("batch", "samples", "embed"))
        layer_caches = (cache.prefix_k, cache.prefix_v, cache.k, cache.v)
        x, (k_new, v_new) = self.layers.decode(x, (positions, cache.prefix_mask, cache.index), layer_caches)
        # k_new, v_new: [layers, batch, samples, kv_heads, hd] -> written in place at slot `index`.
        cache = cache.replace(k=write_slot(cache.k, k_new, cache.index), v=write_slot(cache.v, v_new, cache.index),
                              index=cache.index + 1)
        return constrain(self._logits(x), ("batch", "samples", "vocab")), cache


@flax.struct.dataclass
class LayerwiseDecodeCache:
    """`DecodeCache` with one array per layer instead of a stacked `layers` axis (see `decode_layerwise`)."""

    prefix_k: tuple[Array, ...]  # layers x [batch, kv_heads, prefix_len, head_dim]
    prefix_v: tuple[Array, ...]  # layers x [batch, kv_heads, prefix_len, head_dim]
    prefix_mask: Array  # [batch, prefix_len] bool
    k: tuple[Array, ...]  # layers x [batch, samples, kv_heads, max_new, head_dim]
    v: tuple[Array, ...]  # layers x [batch, samples, kv_heads, max_new, head_dim]
    index: Array  # [] int32


def split_layers(stacked: Any) -> tuple[Any, ...]:
    """A pytree with a leading `layers` axis on every leaf -> one pytree per layer."""
    num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    return tuple(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked) for i in range(num_layers))


def layerwise_cache(cache: DecodeCache) -> LayerwiseDecodeCache:
    return LayerwiseDecodeCache(prefix_k=split_layers(cache.prefix_k), prefix_v=split_layers(cache.prefix_v),
                                prefix_mask=cache.prefix_mask, k=split_layers(cache.k), v=split_layers(cache.v),
                                index=cache.index)


def take_cache_rows(cache: DecodeCache | LayerwiseDecodeCache, rows: Array) -> DecodeCache | LayerwiseDecodeCache:
    """The cache of batch rows `rows` [new_batch] int32, in that order: every prefix and generated slot of those
    rows, the same `index`. A stacked cache has its batch axis after `layers`; a layerwise one first."""
    axis = 1 if isinstance(cache, DecodeCache) else 0
    take = functools.partial(jnp.take, indices=rows, axis=axis)
    return cache.replace(prefix_k=jax.tree.map(take, cache.prefix_k), prefix_v=jax.tree.map(take, cache.prefix_v),
                         prefix_mask=jnp.take(cache.prefix_mask, rows, axis=0), k=jax.tree.map(take, cache.k),
                         v=jax.tree.map(take, cache.v))


def decode_layerwise(config: TransformerConfig, params: Any, layer_params: tuple[Any, ...], tokens: Array,
                     positions: Array, cache: LayerwiseDecodeCache) -> tuple[Array, LayerwiseDecodeCache]:
    """`Transformer.decode` with its layer loop unrolled over per-layer weights and caches.

    In the scanned decode, XLA:CPU copies each layer's weights and caches out of the stacked arrays on every step
    (a dynamic slice feeding a matmul is materialised), about a fifth of a SmolLM2 decode step. A sampler slices the
    weights once per batch (`split_layers(params["layers"])`) and keeps the cache per layer, so a step reads both in
    place. Same numbers as `Transformer.decode` (a test); compiling takes longer, as every layer is traced.
    layer_params: `split_layers(params["layers"])`; tokens, positions: int32 [batch, samples].
    """
    model, block = Transformer(config), Block(config)
    x = constrain(model.apply({"params": params}, tokens, method=Transformer._embed), ("batch", "samples", "embed"))
    shared = (positions, cache.prefix_mask, cache.index)
    new_k, new_v = [], []
    for weights, prefix_k, prefix_v, k, v in zip(layer_params, cache.prefix_k, cache.prefix_v, cache.k, cache.v):
        x, (k_step, v_step) = block.apply({"params": weights}, x, shared, (prefix_k, prefix_v, k, v),
                                          method=Block.decode)
        new_k.append(write_slot(k, k_step, cache.index))
        new_v.append(write_slot(v, v_step, cache.index))
    logits = model.apply({"params": params}, x, method=Transformer._logits)
    cache = cache.replace(k=tuple(new_k), v=tuple(new_v), index=cache.index + 1)
    return constrain(logits, ("batch", "samples", "vocab")), cache


def padded_positions(segment_ids: Array) -> Array:
    """RoPE positions that count only real tokens: [batch, length] -> [batch, length] (0 at each row's first token).

    With left- or right-padding (segment id 0) every row gets the positions it would have alone.
    """
    real = (segment_ids != 0).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(real, axis=-1) - 1, 0)


def abstract_params(config: TransformerConfig) -> Any:
    """ShapeDtypeStructs of the parameter tree, without allocating (works for PaLM 540B)."""
    boxed = jax.eval_shape(
        lambda: Transformer(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    )
    return nn.unbox(boxed)


def param_logical_axes(config: TransformerConfig) -> Any:
    """A tree matching the parameters whose leaves are tuples of logical axis names."""
    boxed = jax.eval_shape(
        lambda: Transformer(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    )
    specs = nn.get_partition_spec(boxed)
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


@functools.lru_cache(maxsize=32)
def _jitted_init(config: TransformerConfig) -> Any:
    return jax.jit(lambda rng: nn.unbox(Transformer(config).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]))


def init_params(config: TransformerConfig, rng: Array) -> Any:
    """Randomly initialised, unboxed parameters (jitted: eager init of a scanned model dispatches op by op)."""
    return _jitted_init(config)(rng)
