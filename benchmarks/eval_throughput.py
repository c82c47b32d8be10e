"""The quickstart's eval against its sample stage: sampled tokens/s of each, in one run, with and without retiring
finished prompts from a decoding batch (`lsi.BatchSampler.retire_stages`).

Each setting runs the real stages (`python -m lsi.main --stage=sample`, then `--stage=eval` of the base model) of
`gin_configs/runs/quickstart.gin` in a fresh run directory with a fresh XLA compilation cache, so both settings
compile what they run. Tokens/s is what each stage reports: generated tokens (up to each sample's stop) over the
seconds its sampler ran, compiling included. The settings must sample the same paths: the samples' and predictions'
texts are compared across them.

    # -> benchmarks/results/eval_throughput_cpu.json (about 45 minutes on 2 cores: two settings)
    python -m benchmarks.eval_throughput
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

from benchmarks import common
from lsi.io_utils import write_json_atomic

DEFAULT_OUTPUT = common.RESULTS / "eval_throughput_cpu.json"
QUICKSTART = "gin_configs/runs/quickstart.gin"
TARGET_EVAL_OVER_SAMPLE = 0.75  # eval tokens/s at least this fraction of the sample stage's
PACKAGES = ("jax", "jaxlib", "flax", "numpy")


def stage_command(stage: str, run_dir: pathlib.Path, retire_stages: int, args: argparse.Namespace) -> list[str]:
    """The `lsi.main` command of one stage of the quickstart at `retire_stages`."""
    params = [f"lsi.BatchSampler.retire_stages = {retire_stages}",
              "lsi.Experiment.task_kwargs = {'pool_size': %d, 'eval_size': %d, 'config': {'operators': ('+',)}}"
              % (args.pool_size, args.eval_size)]
    command = [sys.executable, "-m", "lsi.main", f"--gin_file={args.gin_file}", f"--stage={stage}",
               f"--run_dir={run_dir}", f"--jax_cache_dir={run_dir / 'jax_cache'}"]
    command += [f"--gin_file={path}" for path in args.model_gin]
    return command + [f"--gin_param={param}" for param in params]


def run_stage(stage: str, run_dir: pathlib.Path, retire_stages: int, args: argparse.Namespace) -> float:
    """Runs one stage in its own interpreter; its wall seconds (model load and compiling included)."""
    command = stage_command(stage, run_dir, retire_stages, args)
    print(f"[eval_throughput] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    if finished.returncode:
        raise RuntimeError(f"{stage} stage failed ({finished.returncode}):\n{finished.stderr[-4000:]}")
    return time.perf_counter() - start


def sample_stage_record(run_dir: pathlib.Path, wall_s: float) -> dict[str, Any]:
    manifest = json.loads(next(run_dir.glob("round_1/*/samples/manifest.json")).read_text())
    last = manifest["last_run"]
    return {"sampled_tokens": last["sampled_tokens"], "seconds": last["seconds"],
            "tokens_per_s": last["sampled_tokens"] / last["seconds"], "stage_wall_s": wall_s,
            "prompts": manifest["counts"]["questions"], "samples_per_prompt": manifest["config"]["num_samples"],
            "batch_size": manifest["config"]["batch_size"], "max_new_tokens": manifest["config"]["max_new_tokens"]}


def eval_stage_record(run_dir: pathlib.Path, wall_s: float) -> dict[str, Any]:
    """Tokens and seconds of each sampler run of the eval (modes sampled together count once), and their sum."""
    metrics = json.loads(next(run_dir.glob("eval/base/*/metrics.json")).read_text())
    runs: dict[str, dict[str, Any]] = {}
    for mode, result in metrics["modes"].items():
        name = "+".join(sorted([mode, *result.get("sampled_with", [])]))
        stats = result["sampler"]
        run = runs.setdefault(name, {"sampled_tokens": stats["sampled_tokens"], "seconds": stats["seconds"],
                                     "tokens_per_s": stats["sampled_tokens"] / stats["seconds"],
                                     "prompts": stats["prompts"], "accuracy": {}})
        run["accuracy"][mode] = result["accuracy"]["value"]  # each mode of a shared run scores its own way
    tokens = sum(r["sampled_tokens"] for r in runs.values())
    seconds = sum(r["seconds"] for r in runs.values())
    return {"sampled_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "stage_wall_s": wall_s,
            "sampler_runs": runs, "questions": metrics["split_size"]}


def sampled_texts(run_dir: pathlib.Path) -> dict[str, Any]:
    """Every text of both stages: each sample by question and index, each eval question's predictions by mode."""
    texts: dict[str, Any] = {}
    for path in sorted(run_dir.glob("round_1/*/samples/*.jsonl")):  # one line per sample
        for line in path.read_text().splitlines():
            record = json.loads(line)
            texts[f"sample/{record['question_id']}/{record['sample_index']}"] = record["text"]
    for path in sorted(run_dir.glob("eval/base/*/*/predictions.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            texts[f"eval/{path.parent.name}/{record['id']}"] = [s["text"] for s in record["samples"]]
    return texts


def measure_setting(retire_stages: int, root: pathlib.Path, args: argparse.Namespace
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    run_dir = root / f"retire_stages_{retire_stages}"
    sample_wall = run_stage("sample", run_dir, retire_stages, args)
    eval_wall = run_stage("eval", run_dir, retire_stages, args)
    sample, evaluation = sample_stage_record(run_dir, sample_wall), eval_stage_record(run_dir, eval_wall)
    record = {"retire_stages": retire_stages, "sample": sample, "eval": evaluation,
              "eval_over_sample": evaluation["tokens_per_s"] / sample["tokens_per_s"]}
    print(f"[eval_throughput] retire_stages={retire_stages}: sample {sample['tokens_per_s']:.1f} tokens/s "
          f"({sample['seconds']:.0f} s), eval {evaluation['tokens_per_s']:.1f} tokens/s ({evaluation['seconds']:.0f} "
          f"s), eval/sample {record['eval_over_sample']:.2f}", flush=True)
    return record, sampled_texts(run_dir)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", default=QUICKSTART)
    parser.add_argument("--model_gin", action="append", default=[],
                        help="gin files applied after the run's (e.g. a tiny model for a smoke run)")
    parser.add_argument("--pool_size", type=int, default=160, help="unlabeled questions sampled (quickstart: 160)")
    parser.add_argument("--eval_size", type=int, default=400, help="eval questions (quickstart: 400)")
    parser.add_argument("--retire_stages", default="2,0",
                        help="comma-separated settings, the first is the default one the target is checked on")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--keep_dir", default=None,
                        help="run directories go here and are kept (default: a temporary directory, deleted)")
    args = parser.parse_args(argv)
    args.retire_stages = [int(s) for s in args.retire_stages.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("LSI_DATA_DIR", str(common.REPO.parent / "shared" / "data"))
    record: dict[str, Any] = {"benchmark": "eval_throughput", "gin_file": args.gin_file, "model_gin": args.model_gin,
                              "pool_size": args.pool_size, "eval_size": args.eval_size,
                              "target_eval_over_sample": TARGET_EVAL_OVER_SAMPLE, "settings": {},
                              "environment": common.environment_info(PACKAGES)}
    texts: dict[int, dict[str, Any]] = {}
    with _run_root(args.keep_dir) as root:
        for retire in args.retire_stages:
            record["settings"][f"retire_stages_{retire}"], texts[retire] = measure_setting(retire, root, args)
            write_json_atomic(args.output, _summarize(record, texts))  # each setting as it completes
    record = _summarize(record, texts)
    write_json_atomic(args.output, record)
    print(f"[eval_throughput] wrote {args.output}")
    return record


@contextlib.contextmanager
def _run_root(keep_dir: str | None) -> Iterator[pathlib.Path]:
    """A fresh directory for the settings' runs: under `keep_dir` and kept, or temporary."""
    if keep_dir is None:
        with tempfile.TemporaryDirectory(prefix="lsi-eval-throughput-") as tmp:
            yield pathlib.Path(tmp)
        return
    pathlib.Path(keep_dir).mkdir(parents=True, exist_ok=True)
    yield pathlib.Path(tempfile.mkdtemp(prefix="lsi-eval-throughput-", dir=keep_dir))


def _summarize(record: dict[str, Any], texts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    settings = record["settings"]
    default = next(iter(settings.values()))
    record["eval_tokens_per_s"] = default["eval"]["tokens_per_s"]
    record["sample_tokens_per_s"] = default["sample"]["tokens_per_s"]
    record["eval_over_sample"] = default["eval_over_sample"]
    record["target_met"] = default["eval_over_sample"] >= TARGET_EVAL_OVER_SAMPLE
    if len(settings) > 1:
        (first, a), (_, b) = list(texts.items())[:2]
        baseline = list(settings.values())[1]
        record["speedup_over_retire_stages_%d" % list(texts)[1]] = {
            stage: baseline[stage]["seconds"] / default[stage]["seconds"] for stage in ("sample", "eval")}
        record["same_samples_across_settings"] = {"equal": a == b, "compared": len(a),
                                                  "differing": sum(a.get(k) != b.get(k) for k in a)}
    return record


if __name__ == "__main__":
    main()
