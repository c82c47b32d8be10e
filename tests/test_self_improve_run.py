"""`self_improve` end to end on a tiny model: two rounds through the entry point, and a run killed in the middle of
training that, rerun with the same command, ends with the same results as an uninterrupted one.

Every run is a `python -m lsi.main` subprocess on one CPU device at XLA's normal optimisation level: the tiny model
has SmolLM2's 49152-token vocabulary, whose matrices the suite's unoptimised 8-device setting makes ~10x slower.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), "lsi-test-jax-cache-o2")
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="module")
def answering_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("answering_model")
    script = f"from helpers.toy import answering_checkpoint; print(answering_checkpoint({str(directory)!r}))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_environment(), capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def _bindings(run_dir, model):
    return [
        f"lsi.Experiment.run_dir = '{run_dir}'",
        f"lsi.Experiment.model = '{model}'",
        "lsi.Experiment.task = 'arithmetic'",
        "lsi.Experiment.task_kwargs = {'pool_size': 8, 'eval_size': 6}",
        "lsi.Experiment.num_rounds = 2",
        "lsi.Experiment.sample = @lsi.SampleStageConfig()",
        "lsi.SampleStageConfig.num_samples = 4",
        "lsi.SampleStageConfig.max_new_tokens = 8",
        "lsi.SampleStageConfig.num_shards = 2",
        "lsi.SampleStageConfig.batch_size = 4",
        "lsi.Experiment.format = @lsi.FormatStageConfig()",
        "lsi.FormatStageConfig.num_shards = 1",
        "lsi.Experiment.train = @lsi.TrainConfig()",
        "lsi.TrainConfig.steps = 4",
        "lsi.TrainConfig.batch_size = 2",
        "lsi.TrainConfig.seq_length = 384",
        "lsi.TrainConfig.checkpoint_every = 1",
        "lsi.TrainConfig.log_every = 1",
        "lsi.TrainConfig.progress_bar = False",
        "lsi.TrainConfig.optimizer = @lsi.OptimizerConfig()",
        "lsi.OptimizerConfig.name = 'adamw'",
        "lsi.OptimizerConfig.learning_rate = 1e-3",
        "lsi.Experiment.eval = @lsi.EvalConfig()",
        "lsi.EvalConfig.modes = ('cot_greedy', 'self_consistency')",
        "lsi.EvalConfig.num_samples = 2",
        "lsi.EvalConfig.max_new_tokens = 8",
        "lsi.EvalConfig.subsample_sizes = (1, 2)",
    ]


def _command(run_dir, model) -> list[str]:
    return [sys.executable, "-m", "lsi.main", "--stage=self_improve"] + [
        f"--gin_param={binding}" for binding in _bindings(run_dir, model)]


def _run(run_dir, model) -> None:
    result = subprocess.run(_command(run_dir, model), cwd=REPO, env=_environment(), capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]


def _results(run_dir: pathlib.Path) -> dict:
    """What a finished run must reproduce: every eval's predictions, every round's training metrics and data."""
    out = {}
    for path in sorted(run_dir.glob("eval/*/*/*/predictions.jsonl")):
        out[str(path.relative_to(run_dir))] = path.read_text()
    for path in sorted(run_dir.glob("round_*/train/metrics.jsonl")):
        out[str(path.relative_to(run_dir))] = [{k: v for k, v in json.loads(line).items()  # timings differ
                                                if not k.endswith("_per_s") and k != "mfu"}
                                               for line in path.read_text().splitlines()]
    for path in sorted(run_dir.glob("round_*/*/votes/pseudo_labels.jsonl")):
        out[str(path.relative_to(run_dir))] = path.read_text()
    return out


def test_two_rounds_then_a_run_killed_mid_training_resumes_to_the_same_results(answering_model, tmp_path):
    reference = tmp_path / "uninterrupted"
    _run(reference, answering_model)
    summary = json.loads((reference / "summary.json").read_text())
    assert set(summary["eval"]) == {"base", "round_1", "round_2"}
    for round_index in (1, 2):
        round_dir = reference / f"round_{round_index}"
        assert json.loads((round_dir / "arithmetic" / "votes" / "manifest.json").read_text())["counts"][
            "pseudo_labels"] > 0
        assert (round_dir / "train" / "hf" / "config.json").exists()
    # Round 2 samples with round 1's model, not the base model.
    assert json.loads((reference / "round_2" / "arithmetic" / "samples" / "sampling_config.json").read_text())[
        "model"] == str(reference / "round_1" / "train" / "hf")
    assert (reference / "report" / "report.md").exists()

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed, answering_model), cwd=REPO, env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = killed / "round_1" / "train" / "checkpoints"
    deadline = time.monotonic() + 1200
    while not (checkpoints / "2").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "round_1" / "train" / "hf").exists(), "the kill came after training finished"

    _run(killed, answering_model)  # the same command again
    assert _results(killed) == _results(reference)
