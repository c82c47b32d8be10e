"""An lsi evaluation as lm-evaluation-harness results JSON, so lsi rows can sit beside lm-eval rows in one table.

    python -m lsi.lm_eval_export RUN_DIR [--tag base]     # -> RUN_DIR/eval/<tag>/lm_eval_results.json

Each (task, mode) of eval/<tag>/ becomes one lm-eval task named `lsi_<task>_<mode>` (lm-eval, too, names a task per
prompting method, as gsm8k_cot and gsm8k_cot_self_consistency). The metric is lm-eval's `exact_match` of the voted
answer; its filter says how the answer was picked: `greedy` for one greedy path, `maj@m` for a majority vote of m
sampled paths (lm-eval's self-consistency filter names), and self-consistency also reports every subset size of
accuracy@m as `maj@m'`. Standard errors are lm-eval's for a mean, sqrt(p(1 - p) / (n - 1)). The keys follow
`lm_eval.result_schema.EvalResults` (lm-eval 0.4.13): results, configs, versions, n-shot, higher_is_better,
n-samples, config, git_hash, date, model_name, model_source, total_evaluation_time_seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from typing import Any, Sequence

from etils import epath

from lsi.io_utils import as_path, write_json_atomic
from lsi.run_layout import RunLayout

LM_EVAL_FILE = "lm_eval_results.json"


def mean_stderr(p: float, n: int) -> float:
    """lm-eval's standard error of a mean of 0/1 scores (sample standard deviation / sqrt(n))."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def _filter_name(mode: str, config: dict[str, Any]) -> str:
    return f"maj@{config['num_samples']}" if mode == "self_consistency" else "greedy"


def task_result(task: str, mode: str, metrics: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """One lm-eval `results` entry: name, alias, sample_len and "metric,filter" values with their stderrs."""
    name, accuracy = f"lsi_{task}_{mode}", metrics["accuracy"]
    entry: dict[str, Any] = {"name": name, "alias": name, "sample_len": accuracy["n"]}

    def add(metric: str, filter_name: str, value: float) -> None:
        entry[f"{metric},{filter_name}"] = value
        entry[f"{metric}_stderr,{filter_name}"] = mean_stderr(value, accuracy["n"])

    add("exact_match", _filter_name(mode, config), accuracy["value"])
    for size, at_size in (metrics.get("accuracy_at_m") or {}).items():
        if int(size) != config["num_samples"]:
            add("exact_match", f"maj@{size}", at_size["accuracy"])
    if "f1" in metrics:  # DROP's token F1 of the voted answer (its interval is a bootstrap: no stderr given)
        entry[f"f1,{_filter_name(mode, config)}"] = metrics["f1"]["value"]
    return entry


def task_config(task: str, mode: str, metrics: dict[str, Any]) -> dict[str, str | bool | None]:
    """The lm-eval `configs` entry: flat strings, as the schema asks (nested settings as JSON text)."""
    config = metrics["config"]
    return {
        "task": f"lsi_{task}_{mode}",
        "tag": task,
        "dataset_path": f"lsi.tasks:{task}",  # lsi's own reader (a file under LSI_DATA_DIR, or generated)
        "test_split": config["split"],
        "output_type": "generate_until",
        "prompt_style": metrics.get("prompt_style"),
        "lsi_mode": mode,
        "generation_kwargs": json.dumps({
            "do_sample": mode == "self_consistency", "max_gen_toks": config["max_new_tokens"],
            **({"num_samples": config["num_samples"], **_sampling_method(config)} if mode == "self_consistency"
               else {})}),
        "should_decontaminate": False,
    }


def _sampling_method(config: dict[str, Any]) -> dict[str, Any]:
    """The eval's sampling settings: its `method` (metrics.json since sampling methods became objects), or the
    temperature/top-k/top-p fields of older files."""
    if isinstance(config.get("method"), dict):
        return config["method"]
    return {k: config[k] for k in ("temperature", "top_k", "top_p") if k in config}


def lm_eval_results(eval_dir: str | os.PathLike) -> dict[str, Any]:
    """The lm-eval results dict of every task's metrics.json under `eval_dir` (run_dir/eval/<tag>)."""
    eval_dir = as_path(eval_dir)
    task_metrics = {p.parent.name: json.loads(p.read_text()) for p in sorted(eval_dir.glob("*/metrics.json"))}
    if not task_metrics:
        raise FileNotFoundError(f"No <task>/metrics.json under {eval_dir}: run the eval stage first.")
    out: dict[str, Any] = {key: {} for key in ("results", "configs", "versions", "n-shot", "higher_is_better",
                                                "n-samples")}
    seconds = 0.0
    for task, metrics in task_metrics.items():
        for mode, mode_metrics in metrics["modes"].items():
            name = f"lsi_{task}_{mode}"
            out["results"][name] = task_result(task, mode, mode_metrics, metrics["config"])
            out["configs"][name] = task_config(task, mode, metrics)
            out["versions"][name] = _lsi_version(metrics)
            if mode_metrics.get("shots") is not None:
                out["n-shot"][name] = mode_metrics["shots"]
            out["higher_is_better"][name] = {"exact_match": True, **({"f1": True} if "f1" in mode_metrics else {})}
            n = mode_metrics["accuracy"]["n"]
            out["n-samples"][name] = {"original": metrics.get("split_size", n), "effective": n}
            seconds += mode_metrics.get("seconds") or 0.0
    return {**out, **_run_fields(list(task_metrics.values()), seconds)}


def _lsi_version(metrics: dict[str, Any]) -> str | None:
    code = (metrics.get("provenance") or {}).get("code") or {}
    return code.get("lsi")


def _run_fields(all_metrics: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The top-level config and identity fields, from the first task's provenance (one model per eval tag)."""
    origin = all_metrics[0].get("provenance") or {}
    model, code, config = origin.get("model") or {}, origin.get("code") or {}, all_metrics[0]["config"]
    name = model.get("name", "unknown")
    return {
        "config": {"model": "lsi", "model_args": f"pretrained={model.get('path', name)}",
                   "model_sha": model.get("fingerprint", ""), "batch_size": str(config["batch_size"]),
                   "limit": config.get("limit"), "random_seed": config["seed"], "numpy_seed": config["seed"],
                   "gen_kwargs": None},
        "git_hash": (code.get("git_commit") or "")[:7] + ("-dirty" if code.get("git_dirty") else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).timestamp(),
        "model_source": "lsi",
        "model_name": name,
        "model_name_sanitized": name.replace("/", "__"),
        "total_evaluation_time_seconds": str(seconds),
    }


def export(run_dir: str | os.PathLike, tag: str) -> epath.Path:
    """Writes run_dir/eval/<tag>/lm_eval_results.json; returns its path."""
    eval_dir = RunLayout(run_dir).eval_root / tag
    return write_json_atomic(eval_dir / LM_EVAL_FILE, lm_eval_results(eval_dir))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--tag", action="append", help="eval/<tag> to export (repeatable; default: every tag)")
    args = parser.parse_args(argv)
    eval_root = RunLayout(args.run_dir).eval_root
    tags = args.tag or sorted(p.name for p in eval_root.iterdir() if p.is_dir() and list(p.glob("*/metrics.json")))
    for tag in tags:
        print(f"wrote {export(args.run_dir, tag)}")


if __name__ == "__main__":
    main()
