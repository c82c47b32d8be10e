"""Evaluation with the paper's three prompting methods (PAPER.md section 6).

- `standard`: few-shot direct-answer prompt, greedy.
- `cot_greedy`: few-shot chain-of-thought prompt, greedy ("single path"). With self-consistency in the same run,
  the greedy path is an argmax sample of self-consistency's batch: one prefill and one decode loop serve both.
- `self_consistency`: m sampled CoT paths (`EvalConfig.method`: temperature T, top-k 40 by default), majority vote
  over parsed answers.
  Accuracy at smaller m comes from the same run by subsampling paths (Figure 5), averaged over seeded subsets.
- `zero_shot_cot`: the zero-shot "Let's think step by step." prompt, greedy: what the paper's zero-shot training
  formats teach ("so that the model will learn to think on its own").

Prompts are written in the run's prompt style (lsi.tasks.prompt_style: plain few-shot text or the model's chat turns),
which metrics.json records.

Each mode writes `<output_dir>/<mode>/predictions.jsonl` (one line per question: id, prompt hash, every sample's
text / parsed answer / finish reason, the vote and its share, gold, correct) and all modes share
`<output_dir>/metrics.json` (accuracy with N and a 95% interval, accuracy at several m, calibration bins, counts).
A rerun with the same config on the same questions keeps the modes already complete.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Iterable, Sequence

import numpy as np

from lsi import metrics
from lsi.batch_decoding import BatchSampler, Completion, LoadedModel, SampleRequest
from lsi.io_utils import as_path, write_json_atomic
from lsi.records import Prediction, PredictionSample, read_records, write_records
from lsi.sampling_methods import Greedy, SamplingMethod, Temperature
from lsi.self_improve.voting import answer_groups, vote_answers
from lsi.tasks.answers import answers_equal, parse_answer
from lsi.tasks.base import Example, Task
from lsi.tasks.prompt_style import Prompter
from lsi.tasks.prompting import PromptFormat

# The prompt format of each mode.
MODE_FORMATS = {
    "standard": PromptFormat.FEW_SHOT_DIRECT,
    "cot_greedy": PromptFormat.FEW_SHOT_COT,
    "self_consistency": PromptFormat.FEW_SHOT_COT,
    "zero_shot_cot": PromptFormat.ZERO_SHOT_COT,
}
MODES = tuple(MODE_FORMATS)
PAPER_MODES = ("standard", "cot_greedy", "self_consistency")  # Table 3's prompting methods
SPLITS = ("eval", "dev")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to evaluate. Defaults follow the paper: 256 new tokens; self-consistency T=0.7 before LMSI (1.2 after),
    top-k 40 (the Self-Consistency paper's PaLM setting), m=32."""

    modes: tuple[str, ...] = PAPER_MODES
    num_samples: int = 32
    method: SamplingMethod = Temperature(0.7, top_k=40)  # self-consistency's; gin: @eval/lsi.Temperature()
    max_new_tokens: int = 256
    subsample_sizes: tuple[int, ...] = (1, 5, 10, 15, 20, 25, 32)
    subsample_repeats: int = 20
    batch_size: int = 8
    seed: int = 0
    limit: int | None = None  # evaluate the first `limit` questions of the split
    # 'eval' for reported numbers; 'dev' (the labelled split carved from the pool, procedural tasks) for choices
    # made before the eval split is read once (DESIGN.md, research protocol).
    split: str = "eval"
    calibration_bins: int = 10

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"EvalConfig.split must be one of {SPLITS}, got {self.split!r}.")
        unknown = set(self.modes) - set(MODES)
        if unknown:
            raise ValueError(f"Unknown evaluation mode(s) {sorted(unknown)}; known: {MODES}.")


def split_examples(task: Task, split: str) -> list[Example]:
    """The labelled questions of `split` ('eval' or 'dev')."""
    if split == "eval":
        return task.load_eval()
    if task.load_dev is None:
        raise ValueError(f"Task {task.name} has no labelled dev split (EvalConfig.split='dev'); the procedural tasks "
                         "(arithmetic, chain_sum, leg_counting, gsm_symbolic) have one.")
    return task.load_dev()


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def is_correct(prediction: str | None, example: Example, answer_type: str) -> bool:
    golds = [g for g in (example.answer, *example.alternatives) if g is not None]
    return any(answers_equal(prediction, gold, answer_type) for gold in golds)


def _requests(task: Task, examples: Sequence[Example], fmt: PromptFormat, prompter: Prompter
              ) -> list[SampleRequest]:
    return [SampleRequest(e.id, prompter.prompt(fmt, e.question, task.exemplars_for(e))) for e in examples]


def accuracy_at_subsets(sample_answers: Sequence[Sequence[str | None]], examples: Sequence[Example],
                        answer_type: str, sizes: Iterable[int], repeats: int, seed: int) -> dict[str, Any]:
    """Self-consistency accuracy with m' of the m sampled paths, averaged over `repeats` seeded random subsets.

    Each question's answers are grouped and checked against the gold once; a subset's vote is then a count over
    group ids, for every (repeat, question) subset of a size at once. A subset of sorted sample indices votes as
    `vote_answers` on those samples would: most members wins, the group seen first among them breaks a tie."""
    rng = np.random.default_rng(seed)
    m = len(sample_answers[0]) if sample_answers else 0
    groups, group_is_correct = grouped_answers(sample_answers, examples, answer_type)  # [q, m], [q, G + 1]
    rows = np.arange(len(groups))[None, :]  # [1, q]
    results = {}
    for size in sorted(set(s for s in sizes if 1 <= s <= m)):
        trials = 1 if size == m else repeats
        # [trials, q, size]: each row's subset, a uniformly random `size` of the m samples in index order.
        chosen = np.sort(np.argsort(rng.random((trials, len(groups), m)), axis=-1)[..., :size], axis=-1)
        winners = subset_vote_winners(np.take_along_axis(np.broadcast_to(groups, chosen.shape[:2] + (m,)), chosen,
                                                         axis=-1), group_is_correct.shape[1] - 1)  # [trials, q]
        accuracies = group_is_correct[rows, winners].mean(axis=1) if len(groups) else np.zeros(trials)
        results[str(size)] = {"accuracy": float(np.mean(accuracies)), "std_over_subsets": float(np.std(accuracies)),
                              "subsets": trials}
    return results


def grouped_answers(sample_answers: Sequence[Sequence[str | None]], examples: Sequence[Example], answer_type: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """[q, m] answer group ids (-1 unparseable; `answer_groups`) and [q, G + 1] whether group g's representative is
    correct, G the most groups any question has; column G (a subset where nothing parsed, and padding) is False."""
    grouped = [answer_groups(answers, answer_type) for answers in sample_answers]
    num_groups = max((len(reps) for _, reps in grouped), default=0)
    groups = np.array([ids for ids, _ in grouped], np.int32).reshape(len(grouped), -1)
    correct = np.zeros((len(grouped), num_groups + 1), bool)
    for row, ((_, representatives), example) in enumerate(zip(grouped, examples)):
        correct[row, :len(representatives)] = [is_correct(r, example, answer_type) for r in representatives]
    return groups, correct


def subset_vote_winners(groups: np.ndarray, num_groups: int) -> np.ndarray:
    """[..., size] group ids of a subset's samples (-1 unparseable) -> [...] the winning group, `num_groups` when no
    sample parsed. Most members wins; among tied groups, the one whose first member comes first."""
    one_hot = groups[..., None] == np.arange(num_groups)  # [..., size, G]
    counts = one_hot.sum(axis=-2)  # [..., G]
    first_seen = np.where(counts > 0, one_hot.argmax(axis=-2), groups.shape[-1])  # [..., G]
    # Higher count first, then earlier first member: count * (size + 1) - first position orders both at once.
    score = np.where(counts > 0, counts * (groups.shape[-1] + 1) - first_seen, -1)
    winners = score.argmax(axis=-1) if num_groups else np.zeros(groups.shape[:-1], np.int64)
    return np.where(counts.sum(axis=-1) > 0, winners, num_groups)


def prediction_record(example: Example, prompt: str, completion: Completion, answer_type: str) -> Prediction:
    """One predictions.jsonl line: every sample's text and parsed answer, the vote and its share, gold, correct."""
    answers = [parse_answer(text, answer_type) for text in completion.texts]
    vote = vote_answers(answers, answer_type)
    return Prediction(
        id=example.id,
        prompt_hash=prompt_hash(prompt),
        samples=tuple(
            PredictionSample(text=text, answer=answer, finish_reason=reason, num_tokens=len(ids), sum_log_prob=lp)
            for text, answer, reason, ids, lp in zip(completion.texts, answers, completion.finish_reasons,
                                                      completion.token_ids, completion.sum_log_probs)),
        vote=vote.answer, vote_count=vote.count, vote_share=vote.share_of_all,
        vote_share_of_parsed=vote.share_of_parsed, tie=vote.tie, gold=example.answer,
        gold_alternatives=tuple(example.alternatives), correct=is_correct(vote.answer, example, answer_type),
        prompt=prompt)


def _sampling_runs(modes: Sequence[str]) -> list[tuple[str, ...]]:
    """Modes grouped into sampler runs: greedy CoT rides along as sample 0 of self-consistency's batch (the same
    prompts, so one prefill and one decode loop serve both; its path equals a greedy-only run's)."""
    if "cot_greedy" in modes and "self_consistency" in modes:
        return [(m,) for m in modes if m not in ("cot_greedy", "self_consistency")] + [
            ("cot_greedy", "self_consistency")]
    return [(m,) for m in modes]


def _samples(completion: Completion, first: int, last: int) -> Completion:
    """Samples [first, last) of a completion."""
    return dataclasses.replace(
        completion, texts=completion.texts[first:last], token_ids=completion.token_ids[first:last],
        finish_reasons=completion.finish_reasons[first:last], sum_log_probs=completion.sum_log_probs[first:last])


def _mode_records(mode: str, task: Task, examples: Sequence[Example], completions: dict[str, Completion],
                  prompts: dict[str, str]) -> tuple[list[Prediction], list[list[str | None]]]:
    records = [prediction_record(e, prompts[e.id], completions[e.id], task.answer_type) for e in examples]
    return records, [r.answers for r in records]


def _mode_metrics(mode: str, task: Task, records: list[Prediction], all_answers: list[list[str | None]],
                  examples: Sequence[Example], config: EvalConfig, sampler: BatchSampler) -> dict[str, Any]:
    correct = [r.correct for r in records]
    result: dict[str, Any] = {
        "accuracy": metrics.accuracy(correct).as_dict(),
        "num_questions": len(records),
        "unparseable_samples": sum(a is None for answers in all_answers for a in answers),
        "questions_without_answer": sum(r.vote is None for r in records),
        "ties": sum(r.tie for r in records),
        "finish_reasons": dict(collections.Counter(s.finish_reason for r in records for s in r.samples)),
        "sampler": dict(sampler.stats),
        # lm-eval's n-shot: the exemplars in a few-shot prompt (the first question's set; tasks use one size)
        "shots": len(task.exemplars_for(examples[0]).exemplars) if MODE_FORMATS[mode].is_few_shot else 0,
    }
    if task.answer_type == "drop":
        f1 = [metrics.drop_f1(r.vote or "", [g for g in r.golds if g]) for r in records]
        result["f1"] = metrics.bootstrap_ci(f1, seed=config.seed).as_dict()
    if mode == "self_consistency":
        result["accuracy_at_m"] = accuracy_at_subsets(all_answers, examples, task.answer_type,
                                                      config.subsample_sizes, config.subsample_repeats, config.seed)
        result["calibration"] = metrics.calibration_bins([r.vote_share for r in records], correct,
                                                         num_bins=config.calibration_bins)
    return result


def evaluate(task: Task, model: LoadedModel, config: EvalConfig, output_dir: str | os.PathLike,
             examples: Sequence[Example] | None = None, progress: bool = True, prompter: Prompter | None = None,
             provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs every mode of `config` on the task's eval split and writes predictions and metrics under `output_dir`.
    `prompter` writes the prompts (default: the vocabulary's own style, chat when it carries a template);
    `provenance` (`lsi.provenance`'s block: model, code, packages, config) is written into metrics.json."""
    output_dir = as_path(output_dir)
    prompter = prompter or Prompter.for_vocabulary(model.vocab)
    examples = list(split_examples(task, config.split) if examples is None else examples)
    split_size = len(examples)
    if config.limit is not None:
        examples = examples[: config.limit]
    if not examples:
        raise ValueError(f"Task {task.name}: the {config.split} split is empty.")
    all_metrics: dict[str, Any] = {"task": task.name, "answer_type": task.answer_type, "config":
                                   dataclasses.asdict(config), **prompter.describe(), "split_size": split_size,
                                   "modes": {},
                                   **({"provenance": provenance} if provenance is not None else {})}
    done = _complete_modes(output_dir, all_metrics, examples)
    results = dict(done)
    all_metrics["modes"] = _in_mode_order(results, config.modes)  # a rerun with every mode done returns these
    # Modes sampled together are redone together: a kill between their writes must not resample the rest alone
    # (greedy rides as sample 0 of self-consistency's batch, so alone its samples would differ).
    for modes in [run for run in _sampling_runs(config.modes) if not all(mode in done for mode in run)]:
        fmt = MODE_FORMATS[modes[0]]
        greedy_modes = [mode for mode in modes if mode != "self_consistency"]
        num_samples = len(greedy_modes) + (config.num_samples if "self_consistency" in modes else 0)
        sampler = BatchSampler.for_model(
            model, num_samples=num_samples, argmax_samples=len(greedy_modes), max_new_tokens=config.max_new_tokens,
            method=config.method if "self_consistency" in modes else Greedy(),
            stop_strings=prompter.stop_strings(task.exemplars_for(examples[0])), eos_ids=prompter.eos_ids,
            batch_size=config.batch_size, seed=config.seed, progress=progress,
        )
        requests = _requests(task, examples, fmt, prompter)
        prompts = {r.example_id: r.prompt for r in requests}
        start = time.perf_counter()
        completions = {c.example_id: c for c in sampler.run(requests, total=len(requests))}
        seconds = time.perf_counter() - start
        for mode in modes:
            # A greedy mode's path is its argmax sample; self-consistency's paths are the samples after those.
            if mode == "self_consistency":
                first, last = len(greedy_modes), num_samples
            else:
                first = greedy_modes.index(mode)
                last = first + 1
            mode_completions = {i: _samples(c, first, last) for i, c in completions.items()}
            records, answers = _mode_records(mode, task, examples, mode_completions, prompts)
            write_records(output_dir / mode / Prediction.FILE, records)
            mode_metrics = _mode_metrics(mode, task, records, answers, examples, config, sampler)
            mode_metrics["seconds"] = seconds
            if len(modes) > 1:
                mode_metrics["sampled_with"] = [other for other in modes if other != mode]
            results[mode] = mode_metrics
            all_metrics["modes"] = _in_mode_order(results, config.modes)
            write_json_atomic(output_dir / "metrics.json", all_metrics)  # after each mode: a crash keeps it
    return all_metrics


def _in_mode_order(results: dict[str, Any], modes: Sequence[str]) -> dict[str, Any]:
    """The finished modes' metrics in the config's order, however the sampling runs grouped them."""
    return {mode: results[mode] for mode in modes if mode in results}


def _complete_modes(output_dir: pathlib.Path, fresh: dict[str, Any], examples: Sequence[Example]
                    ) -> dict[str, Any]:
    """Modes a previous run of the same config already finished on the same questions (a rerun keeps them)."""
    path = output_dir / "metrics.json"
    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it to evaluate again.") from None
    keys = ("task", "answer_type", "config", "prompt_style", "chat_template_sha256")
    same_run = {k: previous.get(k) for k in keys} == json.loads(json.dumps({k: fresh.get(k) for k in keys}))
    if not same_run:
        return {}
    ids = [e.id for e in examples]
    done = {}
    for mode, result in previous.get("modes", {}).items():
        predictions = output_dir / mode / Prediction.FILE
        if predictions.exists() and [r.id for r in load_predictions(predictions)] == ids:
            done[mode] = result
    return done


def format_summary(all_metrics: dict[str, Any]) -> str:
    """One line per mode: accuracy with its interval and N."""
    lines = [f"{all_metrics['task']}:"]
    for mode, result in all_metrics["modes"].items():
        acc = result["accuracy"]
        lines.append(f"  {mode:<17} {100 * acc['value']:5.1f}% [{100 * acc['ci_low']:.1f}, "
                     f"{100 * acc['ci_high']:.1f}] (n={acc['n']})")
    return "\n".join(lines)


def load_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Reads a predictions.jsonl; a malformed line or field is an error naming the file, line and field."""
    return read_records(Prediction, path)
