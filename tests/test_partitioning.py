"""The logical-axis rules table, meshes, and sharded == unsharded numerics on 8 simulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lsi import partitioning
from lsi.models import Transformer, abstract_params, get_config, init_params, param_logical_axes
from lsi.training.optimizers import OptimizerConfig, make_optimizer, optimizer_state_axes


def test_eight_simulated_devices():
    assert jax.device_count() == 8


def test_rules_shard_weights_by_fsdp_but_not_activations_whose_batch_took_it():
    mesh = partitioning.make_abstract_mesh((2, 2, 2))
    assert partitioning.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
    assert partitioning.logical_to_spec(("batch", "length", "embed"), (8, 16, 64), mesh) == P(("data", "fsdp"))
    assert partitioning.logical_to_spec(("layers", "embed", "heads", "kv"), (2, 64, 8, 16), mesh) == P(
        None, "fsdp", "tensor")


def test_rules_fall_back_when_a_dimension_does_not_divide():
    mesh = partitioning.make_abstract_mesh((1, 1, 8))
    # SmolLM2 has 3 KV heads: replicated on an 8-way tensor axis rather than failing.
    assert partitioning.logical_to_spec(("embed", "kv_heads", "kv"), (576, 3, 64), mesh) == P()
    # A batch of 4 on a (data=8) mesh cannot split 8 ways; it falls back to replication.
    mesh = partitioning.make_abstract_mesh((8, 1, 1))
    assert partitioning.logical_to_spec(("batch", "length"), (4, 16), mesh) == P()
    mesh = partitioning.make_abstract_mesh((2, 4, 1))
    assert partitioning.logical_to_spec(("batch", "length"), (2, 16), mesh) == P("data")


def test_mesh_config_fills_the_free_axis_and_rejects_bad_shapes():
    assert partitioning.MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="cannot fill"):
        partitioning.MeshConfig(data=-1, fsdp=3).shape(8)
    with pytest.raises(ValueError, match="needs 16 devices"):
        partitioning.MeshConfig(data=4, fsdp=4, tensor=1).shape(8)


def _sharded_forward(cfg, params, tokens, mesh_shape):
    mesh = partitioning.make_mesh(mesh_shape)
    axes = param_logical_axes(cfg)
    sharded = partitioning.shard_tree(params, axes, mesh)
    tokens = jax.device_put(tokens, partitioning.logical_sharding(("batch", "length"), tokens.shape, mesh))

    def forward(p, t):
        with partitioning.activation_sharding(mesh):
            return Transformer(cfg).apply({"params": p}, t)

    return jax.jit(forward)(sharded, tokens), sharded


@pytest.mark.parametrize("config_name", ["tiny", "tiny_palm"])
def test_sharded_logits_equal_unsharded(config_name):
    cfg = get_config(config_name)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (8, 16)), jnp.int32)
    reference = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(params, tokens)
    for mesh_shape in [(8, 1, 1), (2, 2, 2), (1, 1, 8), (1, 8, 1)]:
        logits, sharded = _sharded_forward(cfg, params, tokens, mesh_shape)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=1e-5, rtol=0,
                                   err_msg=f"mesh {mesh_shape}")
        # The layout really is sharded as the rules say (not silently replicated).
        query = sharded["layers"]["attention"]["query"]
        expected = partitioning.logical_to_spec(("layers", "embed", "heads", "kv"), query.shape,
                                                partitioning.make_mesh(mesh_shape))
        assert query.sharding.spec == expected
        distinct_shards = len({str(s.index) for s in query.addressable_shards})
        assert distinct_shards == mesh_shape[1] * mesh_shape[2]  # embed over fsdp, heads over tensor


def test_palm_540b_fits_a_v4_pod_with_adafactor():
    """PaLM 540B on an abstract mesh of 1024 TPU v4 chips (a v4-2048 slice, one JAX device per chip; fsdp 256 x
    tensor 4): params + Adafactor state per chip."""
    cfg = get_config("palm_540b")
    params = abstract_params(cfg)
    axes = param_logical_axes(cfg)
    state = jax.eval_shape(make_optimizer(OptimizerConfig(name="adafactor")).init, params)
    state_axes = optimizer_state_axes(state, params, axes)
    mesh = partitioning.make_abstract_mesh((1, 256, 4))
    param_bytes = partitioning.per_device_bytes(params, axes, mesh)
    state_bytes = partitioning.per_device_bytes(state, state_axes, mesh)
    total_params_bytes = cfg.num_params * 4
    # Fully sharded float32 master weights: within a few percent of total / 1024 (the 1-KV-head MQA projections
    # cannot split over `tensor` and stay replicated there).
    assert param_bytes < 1.05 * total_params_bytes / 1024
    assert param_bytes + state_bytes < 32 * 2**30
    # Factored second moments are tiny compared with the params (AdamW's would equal 2x params).
    assert state_bytes < 0.05 * param_bytes


def test_optimizer_state_axes_follow_params():
    cfg = get_config("tiny")
    params = abstract_params(cfg)
    axes = param_logical_axes(cfg)
    state = jax.eval_shape(make_optimizer(OptimizerConfig(name="adamw")).init, params)
    state_axes = optimizer_state_axes(state, params, axes)
    adam_state = state_axes[1][0]
    assert adam_state.mu["layers"]["mlp"]["up"] == ("layers", "embed", "mlp")
    assert adam_state.count == ()
