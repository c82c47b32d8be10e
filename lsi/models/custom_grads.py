"""Hand-written backward passes for the matmul-heavy pieces of a layer, with the same forward as plain `jnp`.

Why: for `y = x @ w`, autodiff asks for the weight gradient `x^T @ dy`, a contraction over the token axis of both
operands. On CPU, XLA lowered the autodiff graph of the gated MLP with a strided, transposed copy of the
[tokens, mlp] activation that also recomputed the SwiGLU (about 3 s of a 24 s SmolLM2 train step), and padded and
transposed the [tokens, vocab] logits gradient. Written out here, as `(dy^T @ hidden)^T`, `x^T @ d_pre` with one
x^T for both gate and up, and `(x^T @ d_logits)^T`, with the activation recomputed once elementwise, the step's
profile has no such copies and the step runs about a quarter faster.

The forwards are the plain formulation, so inference is unchanged; tests compare every gradient with `jax.grad`
of the plain einsums. They are a model option (`TransformerConfig.custom_grads`, on by default only on CPU): on
GPU and TPU XLA's own lowering of the autodiff graph has none of these copies, and `matmuls(config)` gives the
plain ops there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lsi.models.configs import TransformerConfig
from lsi.partitioning import constrain

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
}


def _hidden_axes(ndim: int) -> tuple[str | None, ...]:
    return ("batch",) + (None,) * (ndim - 2) + ("mlp",)


def _gated_mlp_forward(x: Array, gate: Array, up: Array, down: Array, activation: str
                       ) -> tuple[Array, tuple[Array, ...]]:
    pre_gate = jnp.einsum("...d,df->...f", x, gate)  # [..., mlp]
    pre_up = jnp.einsum("...d,df->...f", x, up)  # [..., mlp]
    hidden = constrain(ACTIVATIONS[activation](pre_gate) * pre_up, _hidden_axes(x.ndim))
    return jnp.einsum("...f,fd->...d", hidden, down), (x, pre_gate, pre_up, gate, up, down)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def gated_mlp(x: Array, gate: Array, up: Array, down: Array, activation: str) -> Array:
    """`(act(x @ gate) * (x @ up)) @ down`. x: [..., embed]; gate, up: [embed, mlp]; down: [mlp, embed]."""
    return _gated_mlp_forward(x, gate, up, down, activation)[0]


def _gated_mlp_backward(activation: str, residuals: tuple[Array, ...], d_out: Array) -> tuple[Array, ...]:
    x, pre_gate, pre_up, gate, up, down = residuals
    embed, mlp = gate.shape
    x2, d_out2 = x.reshape(-1, embed), d_out.reshape(-1, embed)  # [tokens, embed]
    pre_gate, pre_up = pre_gate.reshape(-1, mlp), pre_up.reshape(-1, mlp)  # [tokens, mlp]
    activated, activation_vjp = jax.vjp(ACTIVATIONS[activation], pre_gate)
    hidden = activated * pre_up  # [tokens, mlp], recomputed elementwise
    d_hidden = constrain(d_out2 @ down.T, ("batch", "mlp"))  # [tokens, mlp]
    d_down = (d_out2.T @ hidden).T  # [mlp, embed]: transposes d_out (tokens x embed), not hidden (tokens x mlp)
    (d_pre_gate,) = activation_vjp(d_hidden * pre_up)
    d_pre_up = d_hidden * activated
    x_t = x2.T  # [embed, tokens], shared by both weight gradients
    d_gate, d_up = x_t @ d_pre_gate, x_t @ d_pre_up  # [embed, mlp]
    d_x = d_pre_gate @ gate.T + d_pre_up @ up.T  # [tokens, embed]
    return d_x.reshape(x.shape), d_gate, d_up, d_down


gated_mlp.defvjp(_gated_mlp_forward, _gated_mlp_backward)


def _dense_forward(x: Array, kernel: Array, in_dims: int) -> Array:
    batch_shape = x.shape[:x.ndim - in_dims]
    fan_in = math.prod(kernel.shape[:in_dims])
    flat = x.reshape(batch_shape + (fan_in,)) @ kernel.reshape(fan_in, -1)  # [..., out]
    return flat.reshape(batch_shape + kernel.shape[in_dims:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: Array, kernel: Array, in_dims: int = 1) -> Array:
    """Contracts the last `in_dims` axes of x with the first `in_dims` axes of kernel:
    x [..., *in], kernel [*in, *out] -> [..., *out] (an einsum like "...d,dhk->...hk" or "...hk,hkd->...d")."""
    return _dense_forward(x, kernel, in_dims)


def _dense_backward(in_dims: int, residuals: tuple[Array, Array], d_out: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    fan_in, fan_out = math.prod(kernel.shape[:in_dims]), math.prod(kernel.shape[in_dims:])
    x2, d_out2 = x.reshape(-1, fan_in), d_out.reshape(-1, fan_out)  # [tokens, in], [tokens, out]
    kernel2 = kernel.reshape(fan_in, fan_out)
    d_x = (d_out2 @ kernel2.T).reshape(x.shape)
    # Transpose the narrower activation: [in, tokens] @ [tokens, out], or ([out, tokens] @ [tokens, in])^T.
    d_kernel = x2.T @ d_out2 if fan_in <= fan_out else (d_out2.T @ x2).T
    return d_x, d_kernel.reshape(kernel.shape)


dense.defvjp(lambda x, kernel, in_dims: (_dense_forward(x, kernel, in_dims), (x, kernel)), _dense_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def output_logits(x: Array, kernel: Array, vocab_major: bool) -> Array:
    """float32 logits [..., vocab] of x [..., embed]; kernel is the tied embedding [vocab, embed] when
    `vocab_major`, else an output head [embed, vocab]."""
    return plain_output_logits(x, kernel, vocab_major)


def _output_logits_backward(vocab_major: bool, residuals: tuple[Array, Array], d_logits: Array
                            ) -> tuple[Array, Array]:
    x, kernel = residuals
    embed = x.shape[-1]
    x2 = x.reshape(-1, embed)  # [tokens, embed]
    d_logits2 = d_logits.reshape(x2.shape[0], -1).astype(x.dtype)  # [tokens, vocab]
    # [embed, tokens] @ [tokens, vocab]: the logits (the largest array of the step) are never copied transposed.
    d_head = x2.T @ d_logits2  # [embed, vocab]
    if vocab_major:
        return (d_logits2 @ kernel).reshape(x.shape), d_head.T
    return (d_logits2 @ kernel.T).reshape(x.shape), d_head


output_logits.defvjp(
    lambda x, kernel, vocab_major: (output_logits(x, kernel, vocab_major), (x, kernel)), _output_logits_backward)


# --- the plain ops (autodiff), and the choice between them -----------------------------------------------------

def plain_gated_mlp(x: Array, gate: Array, up: Array, down: Array, activation: str) -> Array:
    return _gated_mlp_forward(x, gate, up, down, activation)[0]


def plain_dense(x: Array, kernel: Array, in_dims: int = 1) -> Array:
    return _dense_forward(x, kernel, in_dims)


def plain_output_logits(x: Array, kernel: Array, vocab_major: bool) -> Array:
    spec = "...d,vd->...v" if vocab_major else "...d,dv->...v"
    return jnp.einsum(spec, x, kernel, preferred_element_type=jnp.float32)


class Matmuls(NamedTuple):
    """The layer's matmul-heavy ops, all with the same forward either way."""

    dense: Callable[..., Array]
    gated_mlp: Callable[..., Array]
    output_logits: Callable[..., Array]


CUSTOM = Matmuls(dense, gated_mlp, output_logits)
PLAIN = Matmuls(plain_dense, plain_gated_mlp, plain_output_logits)


def matmuls(config: TransformerConfig) -> Matmuls:
    """The hand-written-backward ops when `config.custom_grads` (None: when the default backend is the CPU)."""
    enabled = config.custom_grads if config.custom_grads is not None else jax.default_backend() == "cpu"
    return CUSTOM if enabled else PLAIN
