"""Training: packing, the partitioned train step, gradient accumulation, exact resume, checkpoint fallback, export."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsi.models import Transformer, get_config, init_params
from lsi.partitioning import make_mesh
from lsi.training.checkpointing import Checkpointer
from lsi.training.data import PackedBatches, load_seqio_examples, pack_examples
from lsi.training.optimizers import OptimizerConfig
from lsi.training.trainer import (
    NonFiniteLossError,
    TrainConfig,
    cross_entropy_loss,
    export_hf,
    initial_state,
    make_train_step,
    train,
)
from tests.helpers.losses import per_example_losses

CFG = get_config("tiny")
EOS = 2
BATCH, LENGTH = 8, 32
OPT = OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=0.01)
# Adam divides by sqrt(v): for a weight whose gradient is near zero, float32 reduction-order differences between
# layouts move its update by a visible fraction of lr. 3% of one step's lr bounds that; losses agree to 1e-5.
PARAM_ATOL = 3e-5


def _examples(n: int = 60, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, CFG.vocab_size, rng.integers(1, 16)), rng.integers(3, CFG.vocab_size, rng.integers(1, 8)))
            for _ in range(n)]


@functools.lru_cache(maxsize=1)
def _params():
    return jax.tree.map(np.asarray, init_params(CFG, jax.random.PRNGKey(0)))


def _config(**kw) -> TrainConfig:
    base = TrainConfig(steps=4, batch_size=BATCH, seq_length=LENGTH, checkpoint_every=10, keep_checkpoints=3,
                       log_every=5, optimizer=OPT, progress_bar=False)
    return dataclasses.replace(base, **kw)


# --- data -------------------------------------------------------------------------------------------------------

def test_packed_row_gives_each_examples_own_loss():
    examples = [([5, 6, 7, 8], [9, 10]), ([11, 12], [13, 14, 15]), ([16, 17, 18], [19])]
    packed = pack_examples(examples, seq_length=24, eos_id=EOS)
    assert packed["tokens"].shape == (1, 24)
    np.testing.assert_array_equal(packed["segment_ids"][0], [1] * 7 + [2] * 6 + [3] * 5 + [0] * 6)
    np.testing.assert_array_equal(packed["positions"][0, 7:13], np.arange(6))
    np.testing.assert_array_equal(packed["loss_mask"][0, :7], [0, 0, 0, 0, 1, 1, 1])
    params = _params()
    together = per_example_losses(CFG, params, packed)[0]
    for i, example in enumerate(examples):
        alone = per_example_losses(CFG, params, pack_examples([example], seq_length=24, eos_id=EOS))[0, 0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-6)


def test_overlong_examples_lose_inputs_from_the_left():
    data = PackedBatches([(list(range(3, 23)), [30, 31]), ([4], [5])], batch_size=1, seq_length=8, eos_id=EOS,
                         shuffle=False)
    assert data.stats.inputs_truncated == 1 and data.stats.tokens_dropped == 15
    row = next(data)
    np.testing.assert_array_equal(row["tokens"][0], [18, 19, 20, 21, 22, 30, 31, EOS])
    np.testing.assert_array_equal(row["loss_mask"][0], [0, 0, 0, 0, 0, 1, 1, 1])
    assert 0 < data.stats.efficiency <= 1


def test_iterator_is_deterministic_resumable_and_reshuffles_epochs():
    examples = _examples(30)
    data = PackedBatches(examples, batch_size=4, seq_length=LENGTH, seed=3, eos_id=EOS)
    batches = [next(data) for _ in range(12)]  # several epochs
    assert data.get_state()["position"] == 12
    resumed = PackedBatches(examples, batch_size=4, seq_length=LENGTH, seed=3, eos_id=EOS)
    resumed.set_state({"position": 7, "num_examples": 30})
    for expected in batches[7:]:
        got = next(resumed)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    assert data._rows(0) != data._rows(1)
    assert sorted(i for row in data._rows(0) for i in row) == sorted(i for row in data._rows(1) for i in row) \
        == list(range(30))
    other_seed = PackedBatches(examples, batch_size=4, seq_length=LENGTH, seed=4, eos_id=EOS)
    assert not np.array_equal(next(other_seed)["tokens"], batches[0]["tokens"])


def _seqio_task(directory, name="test_training_seqio_source", pairs=(("What is 1 + 2?", "The answer is 3."),
                                                                       ("What is 2 + 2?", "The answer is 4."))):
    import tensorflow as tf

    from lsi.self_improve.formats import register_formatted_task
    from lsi.vocab import load_vocabulary

    vocab = load_vocabulary("smollm2-135m-instruct")
    directory.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(directory / "examples-00000-of-00001.tfrecord")) as writer:
        for q, a in pairs:
            feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
                       for k, v in (("inputs", q), ("targets", a))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return register_formatted_task(name, directory, vocab, prompt_style="plain"), vocab


def test_seqio_task_source(tmp_path):
    name, vocab = _seqio_task(tmp_path)
    import seqio

    if "test_training_seqio_mixture" in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove("test_training_seqio_mixture")
    seqio.MixtureRegistry.add("test_training_seqio_mixture", [(name, 1.0)])
    assert len(PackedBatches("test_training_seqio_mixture", batch_size=1, seq_length=64)._examples) == 2
    data = PackedBatches(name, batch_size=1, seq_length=64, shuffle=False)
    batch = next(data)
    assert data.stats.examples == 2 and batch["segment_ids"].max() == 2
    first = batch["tokens"][0][batch["segment_ids"][0] == 1]
    mask = batch["loss_mask"][0][batch["segment_ids"][0] == 1]
    assert vocab.decode(first[mask == 0].tolist()) == "What is 1 + 2?"
    assert first[-1] == vocab.eos_id and vocab.decode(first[mask == 1][:-1].tolist()) == "The answer is 3."


def _tagged_tasks(sizes: dict[str, int], first_ids: dict[str, int]) -> dict[str, list]:
    """{task: examples}; each example's first input token is its own id (task's first id + index), so a packed
    segment names the example it holds."""
    rng = np.random.default_rng(7)

    def example(first_token: int) -> tuple[list[int], np.ndarray]:
        return [first_token, *rng.integers(3, 300, rng.integers(0, 12))], rng.integers(3, 300, rng.integers(1, 6))

    return {task: [example(first_ids[task] + i) for i in range(size)] for task, size in sizes.items()}


def _stream_ids(batches) -> list[int]:
    """The first token of every packed example, in stream order (rows, then segments)."""
    ids = []
    for batch in batches:
        for tokens, segments in zip(batch["tokens"], batch["segment_ids"]):
            ids += [int(tokens[np.argmax(segments == s)]) for s in range(1, segments.max() + 1)]
    return ids


def _assert_same_batches(got_batches, expected_batches):
    for got, expected in zip(got_batches, expected_batches, strict=True):
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])


def test_rated_mixture_draws_tasks_at_their_rates_and_walks_each_tasks_passes():
    from lsi.training.data import TaskMixture

    tasks = _tagged_tasks({"a": 40, "b": 40}, {"a": 1000, "b": 2000})
    data = PackedBatches(TaskMixture(tasks, {"a": 3.0, "b": 1.0}), batch_size=4, seq_length=LENGTH, seed=1,
                         eos_id=EOS)
    assert data.rated and data.tasks == ("a", "b")
    ids = _stream_ids(next(data) for _ in range(80))
    from_a = [i for i in ids if i < 2000]
    # Each example draws its task independently: a's share is binomial(n, 0.75); 4 standard deviations.
    assert abs(len(from_a) / len(ids) - 0.75) < 4 * np.sqrt(0.75 * 0.25 / len(ids)) and len(ids) > 500
    np.testing.assert_array_equal(data.examples_per_task(), [len(from_a), len(ids) - len(from_a)])
    record = data.mixture_record()
    assert record["sampling"] == "rates" and record["batches"] == 80
    assert record["tasks"]["a"] == {"rate": 3.0, "share": 0.75, "examples": 40, "consumed": len(from_a)}
    # Within a task, every pass holds each of its examples once, in a new order each pass.
    passes = [from_a[i:i + 40] for i in range(0, len(from_a) - 39, 40)]
    assert len(passes) >= 5 and all(sorted(p) == list(range(1000, 1040)) for p in passes)
    assert passes[0] != passes[1]


@pytest.mark.parametrize("rates", [{"a": 45.0, "b": 15.0}, {"a": 3.0, "b": 1.0}])
def test_rates_proportional_to_sizes_keep_the_union_stream(rates):
    from lsi.training.data import TaskMixture

    tasks = _tagged_tasks({"a": 45, "b": 15}, {"a": 1000, "b": 2000})
    mixture = PackedBatches(TaskMixture(tasks, rates), batch_size=4, seq_length=LENGTH, seed=3, eos_id=EOS)
    union = PackedBatches(tasks["a"] + tasks["b"], batch_size=4, seq_length=LENGTH, seed=3, eos_id=EOS)
    assert not mixture.rated and "rates" not in mixture.get_state() and mixture.stats == union.stats
    _assert_same_batches([next(mixture) for _ in range(30)], [next(union) for _ in range(30)])
    assert mixture.mixture_record()["sampling"] == "union" and union.mixture_record() is None


def test_rated_mixture_resumes_exactly():
    from lsi.training.data import TaskMixture

    mixture = TaskMixture(_tagged_tasks({"a": 12, "b": 30}, {"a": 1000, "b": 2000}), {"a": 2.0, "b": 1.0})
    data = PackedBatches(mixture, batch_size=4, seq_length=LENGTH, seed=5, eos_id=EOS)
    batches = [next(data) for _ in range(25)]  # several epochs; task a makes several passes in each
    state = json.loads(json.dumps(data.get_state()))  # as a checkpoint stores it
    assert state["rates"] == {"a": 2.0, "b": 1.0}
    resumed = PackedBatches(mixture, batch_size=4, seq_length=LENGTH, seed=5, eos_id=EOS)
    resumed.set_state({**state, "position": 9})
    _assert_same_batches([next(resumed) for _ in range(16)], batches[9:])
    started_late = PackedBatches(mixture, batch_size=4, seq_length=LENGTH, seed=5, eos_id=EOS, position=17)
    _assert_same_batches([next(started_late) for _ in range(8)], batches[17:])
    other_rates = PackedBatches(TaskMixture(mixture.examples, {"a": 1.0, "b": 2.0}), batch_size=4,
                                seq_length=LENGTH, seed=5, eos_id=EOS)
    with pytest.raises(ValueError, match="drawn with mixture rates"):
        other_rates.set_state(state)
    union = PackedBatches(TaskMixture(mixture.examples, {"a": 12.0, "b": 30.0}), batch_size=4, seq_length=LENGTH)
    with pytest.raises(ValueError, match="drawn with mixture rates"):
        union.set_state(state)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_mixture_rates_must_be_finite_and_positive(rate, tmp_path):
    from lsi.self_improve.formats import register_mixture
    from lsi.training.data import TaskMixture

    with pytest.raises(ValueError, match=r"Mixture task 'b' has rate .*a rate must be a finite number > 0"):
        TaskMixture({"a": [([5], [6])], "b": [([7], [8])]}, {"a": 1.0, "b": rate})
    with pytest.raises(ValueError, match=r"Mixture task 'test_rate_b' has rate"):
        register_mixture("test_training_bad_rates", {"test_rate_a": tmp_path, "test_rate_b": tmp_path},
                         {"test_rate_a": 1.0, "test_rate_b": rate})


def test_seqio_mixture_is_read_task_by_task_with_its_rates(tmp_path):
    """Every example of every task (a SeqIO mixture's own dataset stops at its first exhausted task), weights kept."""
    from lsi.self_improve.formats import register_mixture
    from lsi.training.data import load_seqio_mixture

    dirs = {}
    for task, count in (("test_training_mix_a", 10), ("test_training_mix_b", 3)):
        _seqio_task(tmp_path / task, task, [(f"{task} question {i}?", f"answer {i}.") for i in range(count)])
        (tmp_path / task / "manifest.json").write_text(json.dumps({"counts": {"examples": count}}))
        dirs[task] = tmp_path / task
    by_size = register_mixture("test_training_mix_by_size", dirs)
    read = load_seqio_mixture(by_size)
    assert {task: len(examples) for task, examples in read.examples.items()} == {"test_training_mix_a": 10,
                                                                                 "test_training_mix_b": 3}
    assert read.rates == {"test_training_mix_a": 10.0, "test_training_mix_b": 3.0}
    assert len(load_seqio_examples(by_size)) == 13
    union = PackedBatches([e for examples in read.examples.values() for e in examples], batch_size=2, seq_length=64)
    mixture = PackedBatches(by_size, batch_size=2, seq_length=64)
    _assert_same_batches([next(mixture) for _ in range(6)], [next(union) for _ in range(6)])
    rated = PackedBatches(register_mixture("test_training_mix_rated", dirs, {"test_training_mix_a": 1.0,
                                                                            "test_training_mix_b": 1.0}),
                          batch_size=2, seq_length=64)
    assert rated.rated and rated.mixture_record()["tasks"]["test_training_mix_b"]["share"] == 0.5


# --- train step: sharding and accumulation ----------------------------------------------------------------------

def test_truncated_seqio_shard_is_an_error_naming_the_file(tmp_path):
    name, _ = _seqio_task(tmp_path / "formats", name="test_training_truncated_seqio_shard")
    shard = tmp_path / "formats" / "examples-00000-of-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-5])  # a copy cut off mid-record
    with pytest.raises(ValueError, match=r"'test_training_truncated_seqio_shard'.*truncated TFRecord shard\(s\) .*"
                                         r"examples-00000-of-00001\.tfrecord"):
        load_seqio_examples(name)


@pytest.mark.parametrize("steps", [0, -3])
def test_config_rejects_non_positive_steps(steps):
    with pytest.raises(ValueError, match=rf"TrainConfig\.steps must be >= 1, got {steps}"):
        _config(steps=steps)


def _run_steps(mesh, num_microbatches: int = 1, steps: int = 4):
    train_step = make_train_step(CFG, OPT, num_microbatches, mesh, (BATCH, LENGTH))
    state = initial_state(_params(), OPT, train_step.shardings)
    data = PackedBatches(_examples(), batch_size=BATCH, seq_length=LENGTH, seed=0, eos_id=EOS)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, next(data))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state.params)


@functools.lru_cache(maxsize=1)
def _single_device_run():
    return _run_steps(make_mesh((1, 1, 1), devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_meshes_match_one_device(shape):
    ref_losses, ref_params = _single_device_run()
    losses, params = _run_steps(make_mesh(shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=PARAM_ATOL), params, ref_params)
    assert ref_losses[-1] < ref_losses[0]


def test_microbatches_match_one_batch():
    ref_losses, ref_params = _single_device_run()
    losses, params = _run_steps(make_mesh((1, 1, 1), devices=jax.devices()[:1]), num_microbatches=2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=PARAM_ATOL), params, ref_params)


# Three accumulated (2-microbatch) steps on one device as the train step gave them before it was built from a LossFn
# (recorded under conftest's XLA flags): the losses, and the params' update after them as its norm and its projection
# on a fixed random direction (which a flipped sign or a swapped leaf changes). Bit-exact pins of these (float hex,
# a digest of the params' bytes) held on AVX2 machines but not with AVX-512, whose kernels round differently: the
# tolerances admit that rounding, orders of magnitude below what a change to the step moves.
PINNED_LOSSES = (5.545304298400879, 5.587536811828613, 5.581181049346924)  # the AVX2 pins, exactly
PINNED_UPDATE_NORM, PINNED_UPDATE_PROJECTION = 0.6678736480097411, -0.7954110274864178  # recorded with AVX-512


def test_train_step_outputs_are_pinned():
    """The reshape changed no result: three train steps' losses and update equal the pinned ones to rounding."""
    train_step = make_train_step(CFG, OPT, 2, make_mesh((1, 1, 1), devices=jax.devices()[:1]), (BATCH, LENGTH))
    initial = [np.asarray(x, np.float64) for x in jax.tree.leaves(_params())]
    state, data, losses = initial_state(_params(), OPT, train_step.shardings), _fresh_data(), []
    for _ in range(3):
        state, metrics = train_step(state, next(data))
        losses.append(float(metrics["loss"]))
    updates = [np.asarray(x, np.float64) - x0 for x, x0 in zip(jax.tree.leaves(state.params), initial)]
    direction = np.random.default_rng(0)
    norm = float(np.sqrt(sum(np.sum(u * u) for u in updates)))
    projection = float(sum(np.sum(u * direction.standard_normal(u.shape)) for u in updates))
    np.testing.assert_allclose(losses, PINNED_LOSSES, rtol=1e-6)
    assert norm == pytest.approx(PINNED_UPDATE_NORM, rel=1e-5)
    assert projection == pytest.approx(PINNED_UPDATE_PROJECTION, rel=1e-4)


def test_a_loss_fn_is_the_seam_for_another_objective():
    """A LossFn passed to the step replaces the objective: scaling the summed loss by 2 doubles the reported loss and
    the gradient (so its norm), and its extra summed metric is reported per target token."""
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])

    def doubled(model, params, batch):
        loss_sum, sums = cross_entropy_loss(model, params, batch)
        return 2.0 * loss_sum, {**sums, "scored": sums["target_tokens"]}

    batch = next(_fresh_data())
    plain = make_train_step(CFG, OPT, 1, mesh, (BATCH, LENGTH))
    custom = make_train_step(CFG, OPT, 1, mesh, (BATCH, LENGTH), doubled)
    _, base = plain(initial_state(_params(), OPT, plain.shardings), batch)
    _, other = custom(initial_state(_params(), OPT, custom.shardings), batch)
    np.testing.assert_allclose(float(other["loss"]), 2 * float(base["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(other["grad_norm"]), 2 * float(base["grad_norm"]), rtol=1e-5)
    assert float(other["scored"]) == 1.0 and float(other["accuracy"]) == float(base["accuracy"])


def test_example_weights_scale_each_examples_share_of_the_loss():
    """loss_weights: the loss is the weighted mean of target-token cross entropy (a weight-0 example adds nothing to
    the loss or the gradient), and all-ones weights give exactly the unweighted step."""
    params = _params()
    examples = _examples()[:2]
    (inp_a, tgt_a), (inp_b, tgt_b) = examples
    a_alone, b_alone = (per_example_losses(CFG, params, pack_examples([e], 64, eos_id=EOS))[0, 0] for e in examples)
    n_a, n_b = len(tgt_a) + 1, len(tgt_b) + 1  # + EOS: each target token is predicted once
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    train_step = make_train_step(CFG, OPT, 1, mesh, (1, 64))
    state = lambda: initial_state(params, OPT, train_step.shardings)  # noqa: E731
    for weights in [(1.0, 1.0), (0.25, 1.0), (1.0, 0.0)]:
        batch = pack_examples([(inp_a, tgt_a, weights[0]), (inp_b, tgt_b, weights[1])], 64, eos_id=EOS)
        _, metrics = train_step(state(), batch)
        expected = (weights[0] * n_a * a_alone + weights[1] * n_b * b_alone) / (weights[0] * n_a + weights[1] * n_b)
        np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    only_a = pack_examples([(inp_a, tgt_a, 1.0), (inp_b, tgt_b, 0.0)], 64, eos_id=EOS)
    alone = dict(pack_examples([examples[0]], 64, eos_id=EOS))
    new_weighted, _ = train_step(state(), only_a)
    new_alone, _ = train_step(state(), alone)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), new_weighted.params,
                 new_alone.params)
    unweighted = {k: v for k, v in pack_examples(examples, 64, eos_id=EOS).items() if k != "loss_weights"}
    ones = pack_examples(examples, 64, eos_id=EOS)
    (_, m1), (_, m2) = train_step(state(), unweighted), train_step(state(), ones)
    assert float(m1["loss"]) == float(m2["loss"]) and float(m1["grad_norm"]) == float(m2["grad_norm"])


def test_bfloat16_compute_trains_close_to_float32():
    ref_losses, _ = _single_device_run()
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    train_step = make_train_step(CFG.replace(dtype=jnp.bfloat16), OPT, 1, mesh, (BATCH, LENGTH))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(train_step.abstract.params))  # float32 master weights
    state = initial_state(_params(), OPT, train_step.shardings)
    state, metrics = train_step(state, next(PackedBatches(_examples(), BATCH, LENGTH, seed=0, eos_id=EOS)))
    np.testing.assert_allclose(float(metrics["loss"]), ref_losses[0], rtol=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


# --- the loop: resume, fallback, non-finite loss ------------------------------------------------------------------

def _fresh_data():
    return PackedBatches(_examples(), batch_size=BATCH, seq_length=LENGTH, seed=0, eos_id=EOS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 20-step run, and a run whose process ended after its step-10 checkpoint, resumed to 20."""
    root = tmp_path_factory.mktemp("runs")
    full, _ = train(_config(steps=20), CFG, _params(), _fresh_data(), root / "full")
    # The first 10 steps run in another process (same XLA flags, from conftest); this one only sees its files.
    script = ("import sys; sys.path.insert(0, 'tests'); import conftest, test_training as t; "
              f"t.train(t._config(steps=10), t.CFG, t._params(), t._fresh_data(), {str(root / 'interrupted')!r})")
    result = subprocess.run([sys.executable, "-c", script], cwd=pathlib.Path(__file__).resolve().parents[1],
                            env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(root / "interrupted", root / "at10")
    data = _fresh_data()  # new objects, as a new process would build them; the position comes from the checkpoint
    resumed, summary = train(_config(steps=20), CFG, "unused: resuming", data, root / "interrupted")
    return root, full, resumed, summary, data


def test_resume_is_exact(runs):
    root, full, resumed, summary, data = runs
    assert summary.restored_from == 10 and summary.start_step == 10 and int(resumed.step) == 20
    assert data.position == 20
    # Bitwise: the same compiled step on the same inputs from the restored state.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), resumed.params,
                 full.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), resumed.opt_state,
                 full.opt_state)
    assert json.loads((root / "full" / "data_stats.json").read_text())["examples"] == 60
    lines = (root / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_lines = (root / "interrupted" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in resumed_lines] == [json.loads(x)["step"] for x in lines] == [5, 10, 15, 20]
    assert len(lines) == 4 and '"loss"' in lines[0] and '"tokens_per_s"' in lines[-1]


def test_metrics_reach_tensorboard(runs):
    """clu's default writer puts the same scalars in a TensorBoard events file next to metrics.jsonl."""
    from tensorflow.core.util import event_pb2  # noqa: PLC0415
    from tensorflow.python.lib.io import tf_record  # noqa: PLC0415

    root, *_ = runs
    (events_file,) = (root / "full" / "tensorboard").glob("events.out.tfevents.*")
    scalars: dict[str, dict[int, float]] = {}
    for record in tf_record.tf_record_iterator(str(events_file)):
        event = event_pb2.Event.FromString(record)
        for value in event.summary.value:
            number = value.simple_value if value.HasField("simple_value") else float(
                np.frombuffer(value.tensor.tensor_content, np.float32)[0] if value.tensor.tensor_content
                else value.tensor.float_val[0])
            scalars.setdefault(value.tag, {})[event.step] = number
    jsonl = [json.loads(x) for x in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert set(scalars["loss"]) == {r["step"] for r in jsonl} == {5, 10, 15, 20}
    for row in jsonl:
        np.testing.assert_allclose(scalars["loss"][row["step"]], row["loss"], rtol=1e-6)
        np.testing.assert_allclose(scalars["learning_rate"][row["step"]], row["learning_rate"], rtol=1e-6)


# Orbax's async reader may leave a callback for its closed event loop after a failed restore: harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["corrupt_state", "delete_data"])
def test_damaged_latest_checkpoint_falls_back(runs, tmp_path, caplog, damage):
    root, full, *_ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "full", run)  # steps 10 and 20
    latest = run / "checkpoints" / "20"
    if damage == "delete_data":
        shutil.rmtree(latest / "data")
    for f in (latest / "state").rglob("*"):
        if damage == "corrupt_state" and f.is_file() and (f.parent.name.startswith("ocdbt")
                                                          or f.name == "manifest.ocdbt"):
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        resumed, summary = train(_config(steps=20), CFG, None, _fresh_data(), run)
    assert summary.restored_from == 10
    assert any("could not be restored" in r.getMessage() for r in caplog.records)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7),
                 resumed.params, full.params)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(runs, tmp_path):
    root, *_ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "at10", run)
    data = _fresh_data()

    class Poisoned:
        get_state, set_state = data.get_state, data.set_state

        def __next__(self):
            batch = next(data)
            if data.position == 13:  # an out-of-range token id makes the embedding lookup NaN
                batch = dict(batch, tokens=np.full_like(batch["tokens"], 10 ** 6))
            return batch

    with pytest.raises(NonFiniteLossError, match="step 13.*last good checkpoint is step 12"):
        train(_config(steps=20, checkpoint_every=2, log_every=1), CFG, None, Poisoned(), run)
    checkpointer = Checkpointer(run / "checkpoints")
    assert checkpointer.all_steps()[-1] == 12
    train_step = make_train_step(CFG, OPT, 1, make_mesh((8, 1, 1)), (BATCH, LENGTH))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), train_step.abstract,
                            train_step.shardings)
    step, state, data_state = checkpointer.restore_latest(abstract)
    assert step == 12 and data_state["position"] == 12
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


# --- export -----------------------------------------------------------------------------------------------------

def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from lsi.vocab import load_vocabulary

    params = jax.tree.map(lambda x: x + 0.01, _params())  # "fine-tuned"
    directory = export_hf(CFG, params, tmp_path / "hf", vocabulary=load_vocabulary("smollm2-135m-instruct"))
    assert (directory / "tokenizer.json").exists() and (directory / "config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 12))
    ours = np.asarray(Transformer(CFG).apply({"params": params}, jnp.asarray(tokens)))
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_finetune_stage_from_checkpoint_and_task(tmp_path):
    from lsi.checkpoints import load_checkpoint, save_hf_directory
    from lsi.training.trainer import finetune

    task, vocab = _seqio_task(tmp_path / "task", "test_training_finetune_task")
    cfg = get_config("tiny", vocab_size=49152, num_layers=1)
    save_hf_directory(cfg, init_params(cfg, jax.random.PRNGKey(1)), tmp_path / "base")
    config = _config(steps=2, batch_size=2, seq_length=16, mesh=(2, 1, 1), checkpoint_every=2)
    with pytest.raises(ValueError, match="needs 2 devices"):  # the mesh spans all 8 devices
        finetune(config, tmp_path / "base", task, tmp_path / "run", vocabulary=vocab)
    result = finetune(dataclasses.replace(config, mesh=(2, 2, 2)), tmp_path / "base", task, tmp_path / "run",
                      vocabulary=vocab)
    assert result["steps"] == 2 and result["data"]["examples"] == 2
    assert np.isfinite(result["final_metrics"]["loss"])
    exported_cfg, exported = load_checkpoint(result["hf_directory"])
    assert exported_cfg.vocab_size == 49152 and (tmp_path / "run" / "hf" / "tokenizer.json").exists()
    # LoRA through the same stage: the exported checkpoint is the base with only the targeted kernels moved.
    from lsi.training.lora import LoraConfig

    lora = finetune(dataclasses.replace(config, mesh=(2, 2, 2), lora=LoraConfig(rank=2, targets=("query",))),
                    tmp_path / "base", task, tmp_path / "lora_run")
    _, base = load_checkpoint(tmp_path / "base")
    _, merged = load_checkpoint(lora["hf_directory"])
    np.testing.assert_array_equal(merged["layers"]["attention"]["key"], base["layers"]["attention"]["key"])
    np.testing.assert_array_equal(merged["embedding"], base["embedding"])
    assert not np.array_equal(merged["layers"]["attention"]["query"], base["layers"]["attention"]["query"])
