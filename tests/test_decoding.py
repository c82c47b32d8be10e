"""The sampler: greedy exactness, layout-independent randomness, stops, bad input (the sampled distribution of each
method: test_sampling_methods.py)."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsi import partitioning
from lsi.decoding import (
    FINISH_EOS,
    FINISH_MAX_LENGTH,
    FINISH_STOP,
    SamplerSpec,
    TransformerLM,
    bucket_length,
    make_sampler,
    retire_capacities,
    temperature_sample,
)
from lsi.models import Transformer, get_config, init_params, param_logical_axes
from lsi.sampling_methods import Greedy, Temperature

CFG = get_config("tiny")


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def _prompts(lengths, width, seed=0):
    rng = np.random.RandomState(seed)
    tokens = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.randint(1, CFG.vocab_size, n)
    return jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32)


def _run(params, spec, tokens, lengths, ids, seed=0, mesh=None, cfg=CFG, layerwise=True):
    return jax.device_get(make_sampler(TransformerLM(cfg, layerwise), spec, mesh)(params, tokens, lengths,
                                                                                   jnp.asarray(ids, jnp.int32), seed))


def test_greedy_equals_argmax_of_full_forward(params):
    tokens, lengths = _prompts([5, 11, 16], 16)
    out = _run(params, SamplerSpec(num_samples=2, max_new_tokens=6, method=Greedy()), tokens, lengths, [0, 1, 2])
    forward = jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))
    for i, n in enumerate([5, 11, 16]):
        sequence = list(np.asarray(tokens[i, :n]))
        for _ in range(6):
            sequence.append(int(jnp.argmax(forward(params, jnp.asarray([sequence]))[0, -1])))
        assert list(out.tokens[i, 0]) == sequence[n:]
        assert list(out.tokens[i, 1]) == sequence[n:]  # greedy samples are all the same
    assert (out.finish_reason == FINISH_MAX_LENGTH).all() and (out.lengths == 6).all()


def test_samples_do_not_depend_on_batch_companions_or_padding(params):
    spec = SamplerSpec(num_samples=4, max_new_tokens=8, method=Temperature(1.0, top_k=50))
    alone_tokens, alone_lengths = _prompts([7], 16, seed=3)
    alone = _run(params, spec, alone_tokens, alone_lengths, [42])
    others, other_lengths = _prompts([12, 3, 30], 32, seed=4)
    mixed_tokens = jnp.concatenate([others[:2], jnp.pad(alone_tokens, ((0, 0), (0, 16))), others[2:]])
    mixed_lengths = jnp.concatenate([other_lengths[:2], alone_lengths, other_lengths[2:]])
    mixed = _run(params, spec, mixed_tokens, mixed_lengths, [7, 8, 42, 9])
    np.testing.assert_array_equal(mixed.tokens[2], alone.tokens[0])
    np.testing.assert_allclose(mixed.log_probs[2], alone.log_probs[0], atol=1e-5)
    # Different samples of a prompt differ, and another seed changes them.
    assert len({tuple(row) for row in alone.tokens[0]}) > 1
    reseeded = _run(params, spec, alone_tokens, alone_lengths, [42], seed=1)
    assert not np.array_equal(reseeded.tokens, alone.tokens)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_samples_identical_on_one_device_and_on_meshes(params, mesh_shape):
    spec = SamplerSpec(num_samples=4, max_new_tokens=6, method=Temperature(0.7, top_k=40))
    tokens, lengths = _prompts([5, 9, 16, 2, 7, 8, 3, 11], 16, seed=5)
    ids = list(range(100, 108))
    single = _run(params, spec, tokens, lengths, ids)
    mesh = partitioning.make_mesh(mesh_shape)
    sharded_params = partitioning.shard_tree(params, param_logical_axes(CFG), mesh)
    sharded = _run(sharded_params, spec, tokens, lengths, ids, mesh=mesh)
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.finish_reason, single.finish_reason)


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_scanned_decode_samples_what_the_layerwise_decode_samples(params, mesh_shape):
    spec = SamplerSpec(num_samples=3, max_new_tokens=7, method=Temperature(0.9, top_k=40))
    tokens, lengths = _prompts([5, 9, 16, 2, 7, 8, 3, 11], 16, seed=8)
    ids = list(range(8))
    mesh = partitioning.make_mesh(mesh_shape) if mesh_shape else None
    placed = partitioning.shard_tree(params, param_logical_axes(CFG), mesh) if mesh else params
    layerwise = _run(placed, spec, tokens, lengths, ids, mesh=mesh)
    scanned = _run(placed, spec, tokens, lengths, ids, mesh=mesh, layerwise=False)
    np.testing.assert_array_equal(scanned.tokens, layerwise.tokens)
    np.testing.assert_array_equal(scanned.lengths, layerwise.lengths)
    np.testing.assert_allclose(scanned.log_probs, layerwise.log_probs, atol=1e-5)
    assert len({tuple(row) for row in layerwise.tokens[:, 0]}) > 1  # real, varied samples


def test_eos_and_stop_sequences_end_samples_exactly(params):
    tokens, lengths = _prompts([5, 9], 16, seed=7)
    free = _run(params, SamplerSpec(1, 8, Greedy()), tokens, lengths, [0, 1])
    row0, row1 = list(free.tokens[0, 0]), list(free.tokens[1, 0])
    eos = row0[3]
    stop = tuple(row1[4:6])
    spec = SamplerSpec(1, 8, Greedy(), eos_ids=(eos,), stop_sequences=(stop,))
    out = _run(params, spec, tokens, lengths, [0, 1])
    first_eos = row0.index(eos)
    assert out.finish_reason[0, 0] == FINISH_EOS and out.lengths[0, 0] == first_eos + 1
    assert list(out.tokens[0, 0, : first_eos + 1]) == row0[: first_eos + 1]
    assert (out.tokens[0, 0, first_eos + 1:] == 0).all()  # nothing after EOS
    if eos in row1[:6]:
        pytest.skip("random model emitted the EOS token early in row 1")
    stop_end = next(i for i in range(1, 8) if tuple(row1[i - 1: i + 1]) == stop) + 1
    assert out.finish_reason[1, 0] == FINISH_STOP and out.lengths[1, 0] == stop_end


@dataclasses.dataclass(frozen=True)
class StepCountingLM(TransformerLM):
    """Counts, as it runs, the decode steps taken at each number of batch rows."""

    steps: collections.Counter = dataclasses.field(default_factory=collections.Counter, compare=False, hash=False)

    def decode(self, decode_params, tokens, positions, cache):
        jax.debug.callback(lambda: self.steps.update([tokens.shape[0]]))
        return super().decode(decode_params, tokens, positions, cache)


@pytest.mark.parametrize("layerwise, mesh_shape", [(True, None), (False, None), (True, (2, 2, 2))])
def test_finished_prompts_leave_the_batch_and_samples_stay_the_same(params, layerwise, mesh_shape):
    # A tenth of the vocabulary ends a sample, so the 8 prompts finish at scattered steps.
    eos = tuple(range(1, CFG.vocab_size, 10))
    tokens, lengths = _prompts([5, 9, 16, 2, 7, 8, 3, 11], 16, seed=9)
    ids = jnp.arange(8, dtype=jnp.int32)
    mesh = partitioning.make_mesh(mesh_shape) if mesh_shape else None
    placed = partitioning.shard_tree(params, param_logical_axes(CFG), mesh) if mesh else params
    outputs, steps = {}, {}
    for stages in (0, 2):
        lm = StepCountingLM(CFG, layerwise)
        spec = SamplerSpec(num_samples=2, max_new_tokens=40, method=Temperature(0.9, top_k=40), eos_ids=eos,
                           retire_stages=stages)
        outputs[stages] = jax.device_get(make_sampler(lm, spec, mesh)(placed, tokens, lengths, ids, 0))
        jax.effects_barrier()
        steps[stages] = dict(lm.steps)
    whole, retired = outputs[0], outputs[2]
    np.testing.assert_array_equal(retired.tokens, whole.tokens)
    np.testing.assert_array_equal(retired.lengths, whole.lengths)
    np.testing.assert_array_equal(retired.finish_reason, whole.finish_reason)
    np.testing.assert_allclose(retired.log_probs, whole.log_probs, atol=1e-5)
    # The whole batch steps until its last sample ends; retiring runs the later steps at 4 and then 2 rows (the
    # (2, 2, 2) mesh splits the batch 4 ways, so it stops at 4), and takes the same number of steps.
    last_step = int(whole.lengths.max()) - 1
    assert steps[0] == {8: last_step} and sum(steps[2].values()) == last_step
    assert set(steps[2]) == ({8, 4} if mesh_shape else {8, 4, 2}) and steps[2][8] < last_step / 2
    assert (whole.finish_reason == FINISH_EOS).mean() > 0.9 and len(set(whole.lengths.max(axis=1))) > 4


def test_retiring_halves_the_batch_while_it_divides_over_the_devices():
    assert retire_capacities(32, 2) == (32, 16, 8)
    assert retire_capacities(32, 0) == (32,)
    assert retire_capacities(6, 3) == (6, 3)
    assert retire_capacities(1, 2) == (1,)
    assert retire_capacities(16, 4, multiple=4) == (16, 8, 4)
    assert retire_capacities(8, 2, multiple=8) == (8,)


def test_max_length_rows_are_reported_not_cut(params):
    tokens, lengths = _prompts([4], 16, seed=8)
    out = _run(params, SamplerSpec(3, 5, Temperature(1.0), eos_ids=(-5,)), tokens, lengths, [0])
    assert (out.finish_reason == FINISH_MAX_LENGTH).all() and (out.lengths == 5).all()


def test_bad_sampler_settings_are_rejected():
    with pytest.raises(ValueError, match="num_samples"):
        temperature_sample(TransformerLM(CFG), {}, jnp.ones((1, 4), jnp.int32), jnp.ones((1,), jnp.int32),
                           jnp.zeros((1,), jnp.int32), seed=0, num_samples=0, max_new_tokens=4)


def test_bucket_lengths_are_powers_of_two():
    assert [bucket_length(n) for n in (1, 16, 17, 400, 512, 513)] == [16, 16, 32, 512, 512, 1024]
