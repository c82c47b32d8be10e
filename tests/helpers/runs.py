"""`python -m lsi.main` runs of a tiny model for the end-to-end tests: the environment, the bindings, and what a run's
files must reproduce (timing fields aside)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[2]

# What differs between two runs of the same work, and nothing else: wall-clock times, speeds, the machine's
# description, and the code version ("code": git commit and dirty flag, the same in CI, but a developer's commit or
# edit while the test runs changes it).
TIMING_FIELDS = frozenset({"code",
    "seconds", "time_utc", "since_utc", "last_run", "environment", "wall_s", "tokens_per_second", "tokens_per_s",
    "prompts_per_s", "steps_per_s", "examples_per_s", "slots_per_s", "mfu", "step_seconds", "elapsed_s", "sampler",
})
# Compared through other files: checkpoints/ is training state (the export and metrics.jsonl are its outputs);
# tensorboard/ holds metrics.jsonl's scalars with a wall time per record (and a pid in the file name); report/ is
# rendered from the compared files with wall times in it.
NOT_COMPARED = ("checkpoints/", "tensorboard/", "report/")


def environment() -> dict[str, str]:
    """One CPU device at XLA's normal optimisation level (the tiny model has SmolLM2's 49152-token vocabulary, whose
    matrices the suite's unoptimised 8-device setting makes ~10x slower), and a shared compilation cache."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), "lsi-test-jax-cache-o2")
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]))
    return env


def build_answering_model(directory: pathlib.Path) -> pathlib.Path:
    """`helpers.toy.answering_checkpoint` in a subprocess (the tests' own process has 8 simulated devices)."""
    script = f"from helpers.toy import answering_checkpoint; print(answering_checkpoint({str(directory)!r}))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment(), capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def bindings(run_dir: pathlib.Path, model: pathlib.Path, num_rounds: int = 1) -> list[str]:
    return [
        f"lsi.Experiment.run_dir = '{run_dir}'",
        f"lsi.Experiment.model = '{model}'",
        "lsi.Experiment.task = 'arithmetic'",
        "lsi.Experiment.task_kwargs = {'pool_size': 8, 'eval_size': 6}",
        f"lsi.Experiment.num_rounds = {num_rounds}",
        "lsi.Experiment.sample = @lsi.SampleStageConfig()",
        "lsi.SampleStageConfig.num_samples = 4",
        "lsi.SampleStageConfig.max_new_tokens = 8",
        "lsi.SampleStageConfig.num_shards = 2",
        "lsi.SampleStageConfig.batch_size = 4",
        "lsi.Experiment.format = @lsi.FormatStageConfig()",
        "lsi.FormatStageConfig.num_shards = 2",
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


def command(run_dir: pathlib.Path, model: pathlib.Path, stage: str = "self_improve", num_rounds: int = 1,
            extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "lsi.main", f"--stage={stage}", *extra] + [
        f"--gin_param={binding}" for binding in bindings(run_dir, model, num_rounds)]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _drop_hashes_of_timed_files(manifest: dict[str, Any]) -> None:
    """A manifest's sha256 of a JSON output (eval's metrics.json) covers that file's timings; the file itself is
    compared without them, so its hash is left out."""
    for name, record in (manifest.get("outputs") or {}).items():
        if name.endswith(".json") and isinstance(record, dict):
            record.pop("sha256", None)


def snapshot(directory: pathlib.Path, run_dir: pathlib.Path) -> dict[str, Any]:
    """Every file under `directory` (but NOT_COMPARED): JSON and JSONL parsed with TIMING_FIELDS removed, any other
    file as its bytes; the run folder's own path (which manifests record) reads as $RUN_DIR."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = str(path.relative_to(directory))
        if any(name.startswith(prefix) or f"/{prefix}" in name for prefix in NOT_COMPARED):
            continue
        if path.suffix in (".json", ".jsonl", ".gin"):
            text = path.read_text().replace(str(run_dir), "$RUN_DIR")
        if path.suffix == ".json":
            files[name] = _without_timing(json.loads(text))
            if path.name == "manifest.json":
                _drop_hashes_of_timed_files(files[name])
        elif path.suffix == ".jsonl":
            files[name] = [_without_timing(json.loads(line)) for line in text.splitlines()]
        elif path.suffix == ".gin":
            files[name] = text
        else:
            files[name] = path.read_bytes()
    return files
