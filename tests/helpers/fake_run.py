"""A small run folder in the layout `lsi.main` writes, built without a model: for report and notebook tests.

Sampled answers are drawn with a seeded generator instead of a model; everything downstream of them is computed by
the real code where that needs no model or TensorFlow: votes by `run_vote_stage`, eval predictions by
`lsi.evaluation.prediction_record`, eval metrics by `lsi.metrics` and `accuracy_at_subsets`, training example counts by
`training_examples`. Files whose writer needs a model (sample shards, metrics.jsonl) are written with the exact
records the writer produces. TFRecords are not written (the report reads only the format stage's manifest).

    build_fake_run(path)                                    base + round_1 evals, a temperature sweep, one round
    build_fake_run(path, rounds=0, eval_specs=BASE_ONLY)    before self-improvement only
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import zlib

import numpy as np

from lsi import metrics
from lsi.batch_decoding import Completion
from lsi.evaluation import EvalConfig, accuracy_at_subsets, prediction_record
from lsi.io_utils import write_json_atomic, write_text_atomic
from lsi.records import PseudoLabel, SampleRecord, read_records, write_records
from lsi.run_layout import RunLayout
from lsi.sampling_methods import Temperature
from lsi.self_improve.formats import FORMAT_PRESETS, training_examples
from lsi.self_improve.manifest import file_sha256
from lsi.self_improve.sampling import pool_fingerprint, shard_path
from lsi.self_improve.voting import run_vote_stage
from lsi.tasks.base import PROMPTS_DIR, Example, ExemplarSet, Task
from lsi.training.data import PackingStats

NUM_EVAL = 10
NUM_POOL = 6
NUM_SAMPLES = 8
TASK = "toy_sums"


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One eval tag: how many of the NUM_EVAL questions the greedy modes get right, and how often a sampled path
    reaches the gold answer in self-consistency."""

    tag: str
    temperature: float
    standard_correct: int | None  # None: mode not evaluated
    cot_correct: int | None
    path_accuracy: float


DEFAULT_EVALS = (
    EvalSpec("base", 0.7, standard_correct=3, cot_correct=4, path_accuracy=0.35),
    EvalSpec("round_1", 1.2, standard_correct=6, cot_correct=7, path_accuracy=0.5),
    EvalSpec("round_1_t0.7", 0.7, standard_correct=None, cot_correct=None, path_accuracy=0.5),
    EvalSpec("round_1_t1.5", 1.5, standard_correct=None, cot_correct=None, path_accuracy=0.45),
)
BASE_ONLY = DEFAULT_EVALS[:1]


def toy_task(name: str = TASK) -> Task:
    pool = [Example(f"{name}-pool-{i}", f"What is {i} + {i + 2}?", str(2 * i + 2)) for i in range(NUM_POOL)]
    evals = [Example(f"{name}-eval-{i}", f"What is {i} + {i + 5}?", str(2 * i + 5)) for i in range(NUM_EVAL)]
    return Task(name, "number", load_pool=lambda: list(pool), load_eval=lambda: list(evals),
                exemplar_sets={"default": ExemplarSet.from_file(PROMPTS_DIR / "gsm8k.json")})


def _rng(*keys: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, keys)).encode()))


def _sampled_answers(gold: str, path_accuracy: float, rng: np.random.Generator) -> list[str | None]:
    """NUM_SAMPLES parsed answers: gold with probability path_accuracy, unparseable 1 in 10, else one of two wrong."""
    answers = []
    for _ in range(NUM_SAMPLES):
        draw = rng.random()
        if draw < path_accuracy:
            answers.append(gold)
        elif draw < path_accuracy + 0.1:
            answers.append(None)
        else:
            answers.append(str(int(gold) + int(rng.integers(1, 3))))
    return answers


def _text(answer: str | None) -> str:
    return " Adding the two numbers. The answer is " + (f"{answer}." if answer is not None else "unclear")


# --- eval ------------------------------------------------------------------------------------------------------------

def _prediction(example: Example, answers: list[str | None]) -> dict:
    """One predictions.jsonl record, written by lsi.evaluation's own record builder from samples whose texts
    parse to `answers`."""
    completion = Completion(example.id, 0, [_text(a) for a in answers], [[0] * 12 for _ in answers],
                            ["stop"] * len(answers), [-3.5] * len(answers))
    return prediction_record(example, example.question, completion, "number")


def _mode_answers(mode: str, spec: EvalSpec, task: str, examples: list[Example]) -> list[list[str | None]]:
    if mode == "self_consistency":
        return [_sampled_answers(e.answer, spec.path_accuracy, _rng(spec.tag, task, e.id)) for e in examples]
    correct = spec.standard_correct if mode == "standard" else spec.cot_correct
    return [[e.answer if i < correct else str(int(e.answer) + 1)] for i, e in enumerate(examples)]


def write_eval(run_dir: pathlib.Path, spec: EvalSpec, task: Task) -> dict:
    """eval/<tag>/<task>/: predictions.jsonl per mode and metrics.json, with lsi.evaluation.evaluate's schema."""
    modes = tuple(m for m, n in (("standard", spec.standard_correct), ("cot_greedy", spec.cot_correct),
                                 ("self_consistency", 0)) if n is not None)
    config = EvalConfig(modes=modes, num_samples=NUM_SAMPLES, method=Temperature(spec.temperature, top_k=40),
                        subsample_sizes=(1, 2, 4, 8), subsample_repeats=5, calibration_bins=10)
    examples = task.load_eval()
    output_dir = RunLayout(run_dir).eval_dir(spec.tag, task.name)
    all_metrics = {"task": task.name, "answer_type": task.answer_type, "config": dataclasses.asdict(config),
                   "modes": {}}
    for mode in modes:
        answers = _mode_answers(mode, spec, task.name, examples)
        records = [_prediction(e, a) for e, a in zip(examples, answers)]
        write_records(RunLayout(run_dir).predictions(spec.tag, task.name, mode), records)
        correct = [r.correct for r in records]
        result = {
            "accuracy": metrics.accuracy(correct).as_dict(),
            "num_questions": len(records),
            "unparseable_samples": sum(a is None for row in answers for a in row),
            "questions_without_answer": sum(r.vote is None for r in records),
            "ties": sum(r.tie for r in records),
            "finish_reasons": dict(collections.Counter(s.finish_reason for r in records for s in r.samples)),
            "sampler": {"prompts": len(records), "sampled_tokens": 12 * sum(map(len, answers)), "batches": 2,
                        "padding_rows": 0, "seconds": 0.5},
        }
        if mode == "self_consistency":
            result["accuracy_at_m"] = accuracy_at_subsets(answers, examples, task.answer_type,
                                                          config.subsample_sizes, config.subsample_repeats,
                                                          config.seed)
            result["calibration"] = metrics.calibration_bins([r.vote_share for r in records], correct,
                                                             num_bins=config.calibration_bins)
        result["seconds"] = 0.5
        all_metrics["modes"][mode] = result
    write_json_atomic(output_dir / "metrics.json", all_metrics)
    return all_metrics


# --- self-improvement rounds -----------------------------------------------------------------------------------------

def write_samples(samples_dir: pathlib.Path, task: Task, round_index: int, num_shards: int = 2) -> None:
    """Sample shards, sampling_config.json and manifest.json as lsi.self_improve.sampling writes them."""
    pool = [e.without_answer() for e in task.load_pool()]
    golds = {e.id: e.answer for e in task.load_pool()}
    settings = {"num_samples": NUM_SAMPLES, "method": dataclasses.asdict(Temperature(0.7, top_k=40)),
                "max_new_tokens": 64,
                "num_shards": num_shards, "batch_size": 4, "seed": round_index, "prompt_format": "few_shot_cot",
                "max_questions": None, "task": task.name, "answer_type": task.answer_type,
                "pool_sha256": pool_fingerprint(pool), "model": "fake", "exemplar_sets": ["default"]}
    write_json_atomic(samples_dir / "sampling_config.json", settings)
    per_shard = -(-len(pool) // num_shards)
    outputs = {}
    for index in range(num_shards):
        questions = pool[index * per_shard:(index + 1) * per_shard]
        records = []
        for q in questions:
            answers = _sampled_answers(golds[q.id], 0.4 + 0.2 * round_index, _rng("pool", round_index, q.id))
            records.extend(SampleRecord(question_id=q.id, prompt_format="few_shot_cot", exemplar_set="default",
                                        sample_index=j, text=_text(answer), answer=answer, finish_reason="stop",
                                        num_tokens=12, sum_log_prob=-3.5) for j, answer in enumerate(answers))
        path = write_records(shard_path(samples_dir, index, num_shards), records)
        outputs[path.name] = {"sha256": file_sha256(path), "questions": len(questions)}
    write_json_atomic(samples_dir / "manifest.json", {
        "stage": "sample", "config": settings,
        "inputs": {"task": task.name, "pool_questions": len(pool), "pool_sha256": settings["pool_sha256"],
                   "model": "fake"},
        "outputs": outputs,
        "counts": {"questions": len(pool), "shards": num_shards, "shards_complete": num_shards,
                   "samples_expected": len(pool) * NUM_SAMPLES},
        "last_run": {"shards_sampled": num_shards, "shards_skipped_complete": 0, "sampled_tokens": 0, "seconds": 0.1},
    })


def write_formats_manifest(formats_dir: pathlib.Path, task: Task, pseudo_labels_path: pathlib.Path) -> None:
    """The format stage's manifest (its counts from the real `training_examples`), without the TFRecords."""
    labels = read_records(PseudoLabel, pseudo_labels_path)
    formats = FORMAT_PRESETS["all"]
    per_format = collections.Counter(r["format"] for r in training_examples(task, labels, formats))
    write_json_atomic(formats_dir / "manifest.json", {
        "stage": "format",
        "config": {"formats": [f.value for f in formats], "num_shards": 1, "example_weight": "uniform",
                   "task": task.name, "answer_type": task.answer_type},
        "inputs": {"pseudo_labels": str(pseudo_labels_path), "sha256": file_sha256(pseudo_labels_path)},
        "outputs": {},
        "counts": {"questions": len(labels), "kept_paths": sum(len(r.paths) for r in labels),
                   "examples": sum(per_format.values()),
                   "examples_per_format": {f.value: per_format[f.value] for f in formats}},
        "last_run": {"seconds": 0.1},
    })


def train_metrics(num_steps: int = 100, log_every: int = 10, round_index: int = 1) -> list[dict]:
    """metrics.jsonl records as lsi.training.trainer._MetricsLog writes them: a decreasing loss."""
    records = []
    for step in range(log_every, num_steps + 1, log_every):
        loss = 2.0 / round_index * (0.5 + 0.5 * np.exp(-step / 30))
        records.append({"step": step, "loss": float(loss), "accuracy": float(1 - loss / 3), "target_tokens": 512.0,
                        "grad_norm": 1.5, "learning_rate": 5e-5, "tokens_per_s": 1000.0 + step,
                        "slots_per_s": 1200.0, "steps_per_s": 2.0, "mfu": 0.01})
    return records


def write_train(train_dir: pathlib.Path, round_index: int) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in train_metrics(round_index=round_index))
    write_text_atomic(train_dir / "metrics.jsonl", lines)
    stats = PackingStats(examples=96, inputs_truncated=0, targets_truncated=1, tokens_dropped=3, rows_per_epoch=12,
                         real_tokens_per_epoch=5000, efficiency=0.81)
    write_json_atomic(train_dir / "data_stats.json", dataclasses.asdict(stats))
    write_json_atomic(train_dir / "hf" / "config.json", {"model_type": "llama"})


def build_fake_run(run_dir: str | pathlib.Path, *, rounds: int = 1, eval_specs=DEFAULT_EVALS,
                   tasks: tuple[str, ...] = (TASK,)) -> pathlib.Path:
    layout = RunLayout(run_dir)
    for name in tasks:
        task = toy_task(name)
        for r in range(1, rounds + 1):
            samples, votes = layout.stage_dir(r, name, "samples"), layout.stage_dir(r, name, "votes")
            write_samples(samples, task, r)
            run_vote_stage(task, samples, votes)
            write_formats_manifest(layout.stage_dir(r, name, "formats"), task, layout.pseudo_labels(r, name))
        for spec in eval_specs:
            write_eval(layout.root, spec, task)
    for r in range(1, rounds + 1):
        write_train(layout.train_dir(r), r)
    return layout.root
