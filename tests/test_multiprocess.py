"""Two CPU processes joined by `jax.distributed` (a local coordinator) run `sample` on disjoint shards and a `train`
step together; the files they write equal those of one process with the same two devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers.toy import save_tiny_checkpoint
from lsi.checkpoints import load_checkpoint
from lsi.stage_lineage import seal

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_model"))


def _bindings(run_dir, model) -> list[str]:
    return [
        f"lsi.Experiment.run_dir = '{run_dir}'",
        f"lsi.Experiment.model = '{model}'",
        "lsi.Experiment.task_kwargs = {'pool_size': 6, 'eval_size': 2}",
        "lsi.Experiment.sample = @lsi.SampleStageConfig()",
        "lsi.SampleStageConfig.num_samples = 2",
        "lsi.SampleStageConfig.max_new_tokens = 5",
        "lsi.SampleStageConfig.num_shards = 4",
        "lsi.SampleStageConfig.batch_size = 2",
        "lsi.Experiment.train = @lsi.TrainConfig()",
        "lsi.TrainConfig.steps = 1",
        "lsi.TrainConfig.batch_size = 2",
        "lsi.TrainConfig.seq_length = 384",
        "lsi.TrainConfig.progress_bar = False",
        "lsi.TrainConfig.optimizer = @lsi.OptimizerConfig()",
        "lsi.OptimizerConfig.name = 'adamw'",
        "lsi.OptimizerConfig.learning_rate = 1e-3",
    ]


def _environment(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _lsi(stages: list[str], bindings: list[str], processes: int) -> None:
    """Runs `lsi.main` as `processes` cooperating processes with one CPU device each (or one process, 2 devices)."""
    commands = []
    port = _free_port()
    for index in range(processes):
        extra = [] if processes == 1 else [
            "lsi.Experiment.distributed = True", f"lsi.Experiment.coordinator_address = 'localhost:{port}'",
            f"lsi.Experiment.num_processes = {processes}", f"lsi.Experiment.process_id = {index}"]
        commands.append([sys.executable, "-m", "lsi.main"] + [f"--stage={s}" for s in stages] + [
            f"--gin_param={b}" for b in bindings + extra])
    env = _environment(1 if processes > 1 else 2)
    running = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for c in commands]
    for process in running:
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]


def _write_pseudo_labels(run_dir: pathlib.Path) -> None:
    """A random model answers nothing parseable: hand-written pseudo-labels feed the train stage instead."""
    votes = run_dir / "round_1" / "arithmetic" / "votes"
    votes.mkdir(parents=True, exist_ok=True)
    labels = [{"question_id": f"x{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "vote_count": 2,
               "num_parsed": 2, "num_samples": 2, "vote_share": 1.0, "vote_share_of_parsed": 1.0, "tie": False,
               "paths": [{"sample_index": 0, "text": f" {i} + 1 = {i + 1}. The answer is {i + 1}."}]}
              for i in range(3)]
    (votes / "pseudo_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    seal(votes, ["pseudo_labels.jsonl"])  # recorded as the vote stage's output, so the format stage accepts it


def test_two_processes_sample_and_train_like_one(tiny_checkpoint, tmp_path):
    outputs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"processes_{processes}"
        _lsi(["sample"], _bindings(run_dir, tiny_checkpoint), processes)
        _write_pseudo_labels(run_dir)
        _lsi(["format"], _bindings(run_dir, tiny_checkpoint), 1)
        _lsi(["train"], _bindings(run_dir, tiny_checkpoint), processes)
        samples = run_dir / "round_1" / "arithmetic" / "samples"
        outputs[processes] = (
            {p.name: p.read_text() for p in sorted(samples.glob("samples-*.jsonl"))},
            [json.loads(line)["loss"] for line in (run_dir / "round_1" / "train" / "metrics.jsonl").open()],
            load_checkpoint(run_dir / "round_1" / "train" / "hf")[1],
        )
    (shards_1, loss_1, params_1), (shards_2, loss_2, params_2) = outputs[1], outputs[2]
    assert sorted(shards_2) == sorted(shards_1) and len(shards_1) == 4
    for name, text in shards_1.items():
        # Same samples; log-probs only to float rounding (one device per process here, a 2-device mesh there).
        one = [json.loads(line) for line in text.splitlines()]
        two = [json.loads(line) for line in shards_2[name].splitlines()]
        assert [{k: v for k, v in r.items() if k != "sum_log_prob"} for r in two] == [
            {k: v for k, v in r.items() if k != "sum_log_prob"} for r in one]
        np.testing.assert_allclose([r["sum_log_prob"] for r in two], [r["sum_log_prob"] for r in one], rtol=1e-5)
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(params_2), jax.tree.leaves(params_1)):
        np.testing.assert_allclose(a, b, atol=1e-6)
