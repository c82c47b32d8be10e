"""Plain few-shot text vs SmolLM2-135M-Instruct's own chat turns, on the same eval questions (issue 15's table).

For each task and style: few-shot CoT greedy, zero-shot CoT greedy, one sampled path and self-consistency (m = 8,
T = 0.7, top-k 40), each with its 95% Wilson interval, and a paired comparison chat - plain per metric (Newcombe
interval, exact McNemar p). "One sample" is the first sampled path of self-consistency's batch (a paired quantity);
`one_sample_mean_over_paths` is the accuracy averaged over all 8 paths.

    XLA_FLAGS= python scripts/prompt_style_smollm2.py    # ~40 min on 2 cores; writes as each cell completes
"""

from __future__ import annotations

import argparse
import json
import pathlib

from lsi import metrics
from lsi.batch_decoding import LoadedModel
from lsi.decoding import TransformerLM
from lsi.evaluation import EvalConfig, evaluate, load_predictions
from lsi.io_utils import write_json_atomic
from lsi.records import Prediction
from lsi.sampling_methods import Temperature
from lsi.tasks import get_task
from lsi.tasks.answers import answers_equal
from lsi.tasks.prompt_style import Prompter

MODEL = "smollm2-135m-instruct"
# (task, eval questions, new tokens): arithmetic, and StrategyQA (yes/no), where the model is above 20%.
TASKS = (("arithmetic", 400, 64), ("strategyqa", 200, 64))
STYLES = ("plain", "chat")


def correctness(run_dir: pathlib.Path, answer_type: str) -> dict[str, list[bool]]:
    """Per-question correctness of each reported metric, in question order."""
    greedy, sc, zero = (load_predictions(run_dir / mode / Prediction.FILE)
                        for mode in ("cot_greedy", "self_consistency", "zero_shot_cot"))

    def right(answer: str | None, record: Prediction) -> bool:
        return any(answers_equal(answer, g, answer_type) for g in record.golds)

    return {
        "few_shot_cot_greedy": [r.correct for r in greedy],
        "zero_shot_cot_greedy": [r.correct for r in zero],
        "one_sample": [right(r.samples[0].answer, r) for r in sc],
        "self_consistency": [r.correct for r in sc],
        "mean_over_paths": [sum(right(s.answer, r) for s in r.samples) / len(r.samples) for r in sc],
    }


def truncated_fractions(run_dir: pathlib.Path) -> dict[str, float]:
    """Per mode, the share of paths that stopped at max_new_tokens."""
    fractions = {}
    for mode in ("cot_greedy", "self_consistency", "zero_shot_cot"):
        reasons = [s.finish_reason for r in load_predictions(run_dir / mode / Prediction.FILE) for s in r.samples]
        fractions[mode] = reasons.count("max_length") / len(reasons)
    return fractions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run_dir", default="runs/prompt_style")
    parser.add_argument("--output", default="benchmarks/results/prompt_style_smollm2.json")
    parser.add_argument("--tasks", nargs="*", default=[name for name, _, _ in TASKS], help="a subset of TASKS")
    args = parser.parse_args()
    from lsi.checkpoints import load_checkpoint
    from lsi.vocab import load_vocabulary

    cfg, params = load_checkpoint(MODEL)
    lm, vocab = TransformerLM(cfg), load_vocabulary(MODEL)
    results: dict = {"model": MODEL, "command": "XLA_FLAGS= python scripts/prompt_style_smollm2.py",
                     "settings": {"num_samples": 8, "temperature": 0.7, "top_k": 40}, "tasks": {}}
    for task_name, n, new_tokens in (t for t in TASKS if t[0] in args.tasks):
        task = get_task(task_name, eval_size=n)
        examples = task.load_eval()[:n]
        config = EvalConfig(modes=("cot_greedy", "self_consistency", "zero_shot_cot"), num_samples=8,
                            method=Temperature(0.7, top_k=40), max_new_tokens=new_tokens, subsample_sizes=(1, 8),
                            batch_size=16)
        per_style, seconds = {}, {}
        for style in STYLES:
            out = pathlib.Path(args.run_dir) / task_name / style
            result = evaluate(task, LoadedModel(lm, params, vocab, cfg.max_length), config, out, examples=examples,
                              prompter=Prompter.for_vocabulary(vocab, style))
            # Each sampling run's wall time as it ran (a rerun keeps complete modes and their times); the machine
            # was shared with other jobs, so these are not speed figures.
            seconds[style] = {mode: m["seconds"] for mode, m in result["modes"].items()}
            per_style[style] = correctness(out, task.answer_type)
        table = {}
        for metric in ("few_shot_cot_greedy", "zero_shot_cot_greedy", "one_sample", "self_consistency"):
            paired = metrics.paired_difference(per_style["plain"][metric], per_style["chat"][metric])
            table[metric] = {"plain": paired.before.as_dict(), "chat": paired.after.as_dict(),
                             "chat_minus_plain": {k: getattr(paired, k) for k in
                                                  ("difference", "ci_low", "ci_high", "gained", "lost", "p_value")}}
        table["one_sample_mean_over_paths"] = {s: sum(per_style[s]["mean_over_paths"]) / len(examples) for s in STYLES}
        # Paths cut at max_new_tokens before an answer sentence or end of turn: a cap artefact, not a wrong answer.
        table["cut_at_max_new_tokens"] = {s: truncated_fractions(pathlib.Path(args.run_dir) / task_name / s)
                                          for s in STYLES}
        results["tasks"][task_name] = {"n": len(examples), "max_new_tokens": new_tokens, "metrics": table,
                                       "eval_seconds": seconds}
        write_json_atomic(args.output, results)
        print(json.dumps(results["tasks"][task_name], indent=1), flush=True)


if __name__ == "__main__":
    main()
