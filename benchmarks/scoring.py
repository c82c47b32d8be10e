"""Self-consistency subset scoring at GSM8K's eval size: `lsi.evaluation.accuracy_at_subsets` (answers grouped once
per question, every subset of a size voted at once as counts over group ids) against voting each subset afresh with
`vote_answers` (how lsi scored subsets before: one vote, and its answer comparisons, per question per subset).

The answers are synthetic but shaped like a small model's GSM8K paths: integers near the gold, a share written as
"1,234" or "1234.0", unparseable paths. Both sides score the same answers with the eval's defaults (sizes 1, 5, ...,
32; 20 random subsets per size); their random subsets differ, so their accuracies agree within sampling error only.

    python -m benchmarks.scoring          # -> benchmarks/results/scoring_cpu.json (~3 min, most of it the afresh side)
    python -m benchmarks.scoring --questions 200 --output /tmp/scoring.json
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any, Sequence

import numpy as np

from benchmarks import common
from lsi.evaluation import EvalConfig, accuracy_at_subsets, is_correct
from lsi.io_utils import write_json_atomic
from lsi.self_improve.voting import vote_answers
from lsi.tasks.base import Example

DEFAULT_OUTPUT = common.RESULTS / "scoring_cpu.json"


def gsm8k_like_answers(questions: int, paths: int, seed: int) -> tuple[list[list[str | None]], list[Example]]:
    """[questions][paths] parsed answers and their examples: each path is right with a per-question probability, else
    a nearby wrong integer; 10% are written with a thousands comma or a ".0", 8% are unparseable."""
    rng = np.random.default_rng(seed)
    answers, examples = [], []
    for q in range(questions):
        gold = int(rng.integers(2, 5000))
        p_right = rng.uniform(0.05, 0.8)
        row = []
        for _ in range(paths):
            roll = rng.random()
            value = gold if rng.random() < p_right else gold + int(rng.choice([-10, -2, -1, 1, 2, 5, 100]))
            row.append(None if roll < 0.08 else f"{value:,}" if roll < 0.13 else f"{value}.0" if roll < 0.18
                       else str(value))
        answers.append(row)
        examples.append(Example(str(q), "", str(gold)))
    return answers, examples


def score_afresh(sample_answers: Sequence[Sequence[str | None]], examples: Sequence[Example], answer_type: str,
                 sizes: Sequence[int], repeats: int, seed: int) -> dict[str, float]:
    """Accuracy at each subset size by voting every subset's answers with `vote_answers` (the reference side)."""
    rng = np.random.default_rng(seed)
    m = len(sample_answers[0])
    results = {}
    for size in sorted(set(s for s in sizes if 1 <= s <= m)):
        accuracies = []
        for _ in range(1 if size == m else repeats):
            correct = [is_correct(vote_answers([answers[i] for i in sorted(rng.choice(m, size, replace=False))],
                                               answer_type).answer, example, answer_type)
                       for answers, example in zip(sample_answers, examples)]
            accuracies.append(float(np.mean(correct)))
        results[str(size)] = float(np.mean(accuracies))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=1319, help="GSM8K's test split has 1319")
    parser.add_argument("--paths", type=int, default=32)
    common.add_timing_flags(parser, repeats=3, seed_help="seed of the synthetic answers and of both sides' subsets")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    answers, examples = gsm8k_like_answers(args.questions, args.paths, args.seed)
    config = EvalConfig(num_samples=args.paths)
    sizes, repeats = config.subsample_sizes, config.subsample_repeats
    scored: dict[str, dict[str, Any]] = {"ours": {}, "afresh": {}}
    record: dict[str, Any] = {
        "benchmark": "scoring",
        "workload": {"questions": args.questions, "paths": args.paths, "sizes": list(sizes), "repeats": repeats},
        "ours": common.time_call(lambda: scored["ours"].update(
            accuracy_at_subsets(answers, examples, "number", sizes, repeats, args.seed)),
            warmup=args.warmup, repeats=args.repeats),
    }
    if args.reference:  # one timed call: it takes minutes
        record["afresh"] = common.time_call(lambda: scored["afresh"].update(
            score_afresh(answers, examples, "number", sizes, repeats, args.seed)), warmup=0, repeats=1)
        record["speedup"] = record["afresh"]["median_s"] / record["ours"]["median_s"]
    record["accuracy_at_m"] = {"ours": {m: r["accuracy"] for m, r in scored["ours"].items()},
                               **({"afresh": scored["afresh"]} if args.reference else {})}
    record["environment"] = common.environment_info(("numpy",))
    write_json_atomic(args.output, record)
    print(f"ours {record['ours']['median_s']:.2f} s" + (
        f", afresh {record['afresh']['median_s']:.1f} s ({record['speedup']:.0f}x)" if args.reference else "")
        + f"; wrote {args.output}")
    return record


if __name__ == "__main__":
    main()
