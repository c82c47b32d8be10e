"""Writes a finished quickstart run's before/after figures as benchmarks/results/quickstart_*.json (issue 16's keys).

    python scripts/quickstart_record.py runs/quickstart --wall_s 1650 \
        --command "git clone ... && make demo" --output benchmarks/results/quickstart_arithmetic_smollm2.json

Keys: greedy_before/after (few-shot CoT greedy), sc_before/after (self-consistency), zero_shot_before/after
(zero-shot CoT greedy), each a fraction in [0, 1]; n; mcnemar_p_greedy, mcnemar_p_zero_shot (exact, paired on the
same questions); wall_s; command. `paired` adds the Newcombe intervals and the +gained/-lost counts per mode, and
`vote`, `train` and `pseudo_label_precision` what the run trained on.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from lsi import metrics
from lsi.evaluation import load_predictions
from lsi.io_utils import write_json_atomic
from lsi.run_layout import RunLayout, round_tag
from lsi.screen import gold_check
from lsi.self_improve.voting import read_pseudo_labels

KEYS = {"greedy": "cot_greedy", "sc": "self_consistency", "zero_shot": "zero_shot_cot"}


def correctness(layout: RunLayout, tag: str, task: str, mode: str) -> dict[str, bool]:
    return {r.id: r.correct for r in load_predictions(layout.predictions(tag, task, mode))}


def paired(layout: RunLayout, task: str, mode: str) -> metrics.PairedDifference:
    before, after = correctness(layout, round_tag(0), task, mode), correctness(layout, round_tag(1), task, mode)
    if list(before) != list(after):
        raise ValueError(f"{layout.root}: base and round_1 {mode} predictions cover different questions.")
    return metrics.paired_difference(list(before.values()), list(after.values()))


def label_precision(layout: RunLayout, task: Any) -> dict[str, Any]:
    """How many pseudo-labels and kept paths match the pool's hidden gold (read only after the run, for the record)."""
    check = gold_check(read_pseudo_labels(layout.pseudo_labels(1, task.name)), task.load_pool(), task.answer_type)
    return {"labels": check["label_precision"], "kept_paths_right": check["kept_paths_right"]}


def record(run_dir: pathlib.Path, wall_s: float, command: str) -> dict[str, Any]:
    from lsi.main import Experiment, parse_gin  # noqa: PLC0415

    layout = RunLayout(run_dir)
    parse_gin([str(layout.config_gin)], [])
    experiment = Experiment()
    task = experiment.task_obj()
    result: dict[str, Any] = {"command": command, "wall_s": wall_s, "run_dir": str(run_dir), "task": task.name,
                              "task_kwargs": experiment.task_kwargs, "paired": {}}
    for key, mode in KEYS.items():
        difference = paired(layout, task.name, mode)
        result[f"{key}_before"], result[f"{key}_after"] = difference.before.value, difference.after.value
        result["n"] = difference.n
        result["paired"][mode] = {"difference": difference.difference, "ci_low": difference.ci_low,
                                  "ci_high": difference.ci_high, "gained": difference.gained,
                                  "lost": difference.lost, "mcnemar_p": difference.p_value,
                                  "before": difference.before.as_dict(), "after": difference.after.as_dict()}
    result["mcnemar_p_greedy"] = result["paired"]["cot_greedy"]["mcnemar_p"]
    result["mcnemar_p_zero_shot"] = result["paired"]["zero_shot_cot"]["mcnemar_p"]
    summary = json.loads(layout.summary.read_text())
    result["vote"] = summary["rounds"]["1"]["vote"]
    result["train"] = summary["rounds"]["1"]["train"]
    result["pseudo_label_precision"] = label_precision(layout, task)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--wall_s", type=float, required=True, help="wall time of the command, install included")
    parser.add_argument("--command", required=True)
    parser.add_argument("--output", type=pathlib.Path, required=True)
    args = parser.parse_args()
    result = record(args.run_dir, args.wall_s, args.command)
    write_json_atomic(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
