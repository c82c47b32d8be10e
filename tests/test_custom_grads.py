"""The hand-written backward passes of lsi.models.custom_grads equal autodiff of the plain formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsi.models.custom_grads import ACTIVATIONS, dense, gated_mlp, output_logits


def _random(key: int, *shape: int) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


def _assert_grads_equal(custom, plain, args, rtol=1e-5):
    """Value and every argument's gradient of sum(f(args) * w) for a fixed random w."""
    out = plain(*args)
    weights = _random(99, *out.shape)
    argnums = tuple(range(len(args)))
    value, grads = jax.value_and_grad(lambda *a: jnp.sum(custom(*a) * weights), argnums)(*args)
    want_value, want = jax.value_and_grad(lambda *a: jnp.sum(plain(*a) * weights), argnums)(*args)
    np.testing.assert_allclose(value, want_value, rtol=rtol)
    for got, expected in zip(grads, want):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_mlp_gradients_equal_autodiff(activation):
    x, gate, up, down = _random(0, 2, 5, 8), _random(1, 8, 12), _random(2, 8, 12), _random(3, 12, 8)

    def plain(x, gate, up, down):
        return (ACTIVATIONS[activation](x @ gate) * (x @ up)) @ down

    _assert_grads_equal(lambda *a: gated_mlp(*a, activation), plain, (x, gate, up, down))


@pytest.mark.parametrize("spec,x_shape,kernel_shape,in_dims", [
    ("...d,dhk->...hk", (2, 5, 8), (8, 3, 4), 1),  # fan_in < fan_out: x is transposed for the kernel gradient
    ("...d,dhk->...hk", (2, 5, 8), (8, 1, 4), 1),  # fan_in > fan_out: the output gradient is transposed instead
    ("...hk,hkd->...d", (2, 5, 3, 4), (3, 4, 8), 2),
    ("...d,dhk->...hk", (2, 4, 1, 8), (8, 3, 4), 1),  # decode's [batch, samples, 1, embed] inputs
])
def test_dense_gradients_equal_autodiff(spec, x_shape, kernel_shape, in_dims):
    x, kernel = _random(0, *x_shape), _random(1, *kernel_shape)
    _assert_grads_equal(lambda x, k: dense(x, k, in_dims), lambda x, k: jnp.einsum(spec, x, k), (x, kernel))


@pytest.mark.parametrize("vocab_major", [True, False])
def test_output_logits_gradients_equal_autodiff(vocab_major):
    x = _random(0, 2, 5, 8)
    kernel = _random(1, 16, 8) if vocab_major else _random(1, 8, 16)
    spec = "...d,vd->...v" if vocab_major else "...d,dv->...v"
    _assert_grads_equal(lambda x, k: output_logits(x, k, vocab_major), lambda x, k: jnp.einsum(spec, x, k),
                        (x, kernel))


def test_bfloat16_gradients_keep_their_dtypes():
    x, gate, up, down = (a.astype(jnp.bfloat16) for a in (_random(0, 2, 5, 8), _random(1, 8, 12),
                                                           _random(2, 8, 12), _random(3, 12, 8)))
    grads = jax.grad(lambda *a: jnp.sum(gated_mlp(*a, "silu").astype(jnp.float32)), argnums=(0, 1, 2, 3))(
        x, gate, up, down)
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    logits_grads = jax.grad(lambda x, k: jnp.sum(output_logits(x, k, True)), argnums=(0, 1))(x, gate.T)
    assert logits_grads[0].dtype == jnp.bfloat16 and logits_grads[1].dtype == jnp.bfloat16


def test_the_model_option_picks_the_ops_and_both_give_the_same_gradients():
    from lsi.models import Transformer, get_config, init_params
    from lsi.models.custom_grads import CUSTOM, PLAIN, matmuls

    cfg = get_config("tiny")
    assert matmuls(cfg) is CUSTOM  # None: on, since tests run on the CPU backend
    assert matmuls(cfg.replace(custom_grads=False)) is PLAIN and matmuls(cfg.replace(custom_grads=True)) is CUSTOM
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)

    def loss(params, custom):
        logits = Transformer(cfg.replace(custom_grads=custom)).apply({"params": params}, tokens)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    (custom_loss, custom_grads), (plain_loss, plain_grads) = (
        jax.value_and_grad(loss)(params, flag) for flag in (True, False))
    np.testing.assert_allclose(custom_loss, plain_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), custom_grads, plain_grads)
