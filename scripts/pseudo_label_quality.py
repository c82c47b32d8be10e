"""How good are a vote stage's pseudo-labels? Compares them with the pool's hidden gold answers after the fact (the
stages never read gold) and bins accuracy by vote share: the calibration of the paper's Figure 2 on the unlabeled
pool. Writes JSON next to the votes (or to --output) and prints a table.

    python scripts/pseudo_label_quality.py runs/arithmetic_data --task arithmetic --task_kwargs '{"pool_size": 300}'
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lsi import metrics  # noqa: E402
from lsi.io_utils import write_json_atomic  # noqa: E402
from lsi.run_layout import RunLayout  # noqa: E402
from lsi.screen import gold_check  # noqa: E402
from lsi.self_improve.sampling import read_samples  # noqa: E402
from lsi.self_improve.voting import read_pseudo_labels  # noqa: E402
from lsi.tasks import get_task  # noqa: E402
from lsi.tasks.answers import answers_equal  # noqa: E402


def pseudo_label_quality(run_dir: pathlib.Path, task_name: str, task_kwargs: dict, round_index: int = 1,
                         num_bins: int = 5) -> dict:
    task = get_task(task_name, **task_kwargs)
    layout = RunLayout(run_dir)
    pool = task.load_pool()
    check = gold_check(read_pseudo_labels(layout.pseudo_labels(round_index, task.name)), pool, task.answer_type,
                       calibration_bins=num_bins)
    gold = {q.id: q for q in pool}
    single = [any(answers_equal(s.answer, g, task.answer_type) for g in gold[s.question_id].golds)
              for s in read_samples(layout.stage_dir(round_index, task.name, "samples"))]
    return {
        "run_dir": str(run_dir), "task": task.name, "round": round_index,
        "pseudo_label_accuracy": check["label_precision"],
        "single_sample_accuracy": metrics.accuracy(single).as_dict(),
        "kept_path_accuracy": check["kept_paths_right"],
        "kept_paths": check["kept_paths"],
        "calibration": check["calibration"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--task_kwargs", type=json.loads, default={})
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    result = pseudo_label_quality(args.run_dir, args.task, args.task_kwargs, args.round)
    votes = RunLayout(args.run_dir).stage_dir(args.round, result["task"], "votes")
    output = args.output or votes / "gold_check.json"
    write_json_atomic(output, result)
    acc = result["pseudo_label_accuracy"]
    print(f"pseudo-label accuracy {100 * acc['value']:.1f}% [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}] "
          f"(n={acc['n']}); single sample {100 * result['single_sample_accuracy']['value']:.1f}%; kept paths "
          f"{100 * (result['kept_path_accuracy'] or 0):.1f}% of {result['kept_paths']}")
    for b in result["calibration"]:
        print(json.dumps(b))
    print(output)
    return result


if __name__ == "__main__":
    main()
