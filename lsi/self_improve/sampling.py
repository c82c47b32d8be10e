"""Stage 1 of self-improvement: m reasoning paths for every unlabeled pool question (PAPER.md section 2, step 1).

The pool is split into `num_shards` contiguous shards; process p of P samples shards p, p+P, ... (so hosts of a
pod split the work), and within a process the sampler spreads each batch over the local mesh. Each shard is written
atomically as `samples-00003-of-00064.jsonl` once complete, with one line per (question, sample) in question order
then sample order. A restarted run validates and skips complete shards, so a run killed at any moment and restarted
with the same command ends with files byte-identical to an uninterrupted run (a sample's randomness depends only on
(seed, question id, sample index)).

Gold answers never reach this stage: the pool is stripped of them on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Callable, Sequence

from lsi.batch_decoding import BatchSampler, LoadedModel, SampleRequest
from lsi.io_utils import as_path, write_json_atomic, write_text_atomic
from lsi.records import SampleRecord, read_records
from lsi.sampling_methods import SamplingMethod, Temperature
from lsi.self_improve.manifest import file_output, stage_manifest, write_manifest
from lsi.tasks.answers import parse_answer
from lsi.tasks.base import Example, Task, check_unique_ids
from lsi.tasks.prompt_style import Prompter
from lsi.tasks.prompting import PromptFormat

log = logging.getLogger(__name__)

SHARD_PATTERN = "samples-{index:05d}-of-{count:05d}.jsonl"


@dataclasses.dataclass(frozen=True)
class SampleStageConfig:
    """Paper defaults: m=32, T=0.7, top-k 40 (inherited from Self-Consistency), 256 new tokens, few-shot CoT."""

    num_samples: int = 32
    method: SamplingMethod = Temperature(0.7, top_k=40)  # gin: @sample/lsi.Temperature() (lsi.sampling_methods)
    max_new_tokens: int = 256
    num_shards: int = 64
    batch_size: int = 8
    seed: int = 0
    prompt_format: str = PromptFormat.FEW_SHOT_COT.value
    max_questions: int | None = None  # use the first N pool questions

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}.")
        PromptFormat(self.prompt_format)


def shard_path(output_dir: pathlib.Path, index: int, count: int) -> pathlib.Path:
    return output_dir / SHARD_PATTERN.format(index=index, count=count)


def shard_ranges(num_questions: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) question ranges; the first `num_questions % num_shards` shards get one extra."""
    base, extra = divmod(num_questions, num_shards)
    ranges, start = [], 0
    for index in range(num_shards):
        end = start + base + (1 if index < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def pool_fingerprint(questions: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for q in questions:
        digest.update(f"{q.id}\t{q.question}\n".encode("utf-8"))
    return digest.hexdigest()


def read_shard(path: pathlib.Path) -> list[SampleRecord]:
    """All sample records of a shard; a truncated last line (a crash mid-write), a malformed line or a missing field
    is an error naming the file and line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        last_line = data.count(b"\n") + 1
        raise ValueError(f"{path}:{last_line}: truncated last line (the shard was cut off mid-write).")
    return read_records(SampleRecord, path)


def _shard_is_complete(path: pathlib.Path, questions: Sequence[Example], num_samples: int) -> bool:
    """Whether an existing shard holds exactly the expected (question, sample) records; a damaged one is moved
    aside (renamed `*.corrupt`) and reported, then resampled."""
    if not path.exists():
        return False
    try:
        records = read_shard(path)
        expected = [(q.id, j) for q in questions for j in range(num_samples)]
        if [(r.question_id, r.sample_index) for r in records] != expected:
            raise ValueError(f"{path}: holds {len(records)} records that do not match the {len(expected)} expected "
                             "(question, sample) pairs of this shard.")
        return True
    except ValueError as e:
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)  # on an object store a copy and a delete: fine for a file set aside
        log.warning("%s; moved to %s and resampling the shard.", e, aside)
        return False


def _check_config_matches(output_dir: pathlib.Path, settings: dict[str, Any]) -> None:
    """A restart must use the settings the existing shards were sampled with."""
    path = output_dir / "sampling_config.json"
    if not path.exists():
        write_json_atomic(path, settings)
        return
    previous = json.loads(path.read_text())
    changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
    if changed:
        details = "; ".join(f"{k}: shards have {old!r}, config says {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{output_dir} holds samples made with other settings ({details}). Use a new output "
                         "directory, or delete the old shards to resample.")


def _shard_lines(questions: Sequence[Example], completions: dict[str, Any], task: Task, fmt: str) -> str:
    lines = []
    for question in questions:
        completion = completions[question.id]
        exemplar_set = task.exemplars_for(question).name
        for j, (text, ids, reason, log_prob) in enumerate(zip(completion.texts, completion.token_ids,
                                                              completion.finish_reasons, completion.sum_log_probs)):
            lines.append(SampleRecord(
                question_id=question.id, prompt_format=fmt, exemplar_set=exemplar_set, sample_index=j, text=text,
                answer=parse_answer(text, task.answer_type), finish_reason=reason, num_tokens=len(ids),
                sum_log_prob=round(float(log_prob), 6)).to_line())
    return "".join(lines)


def load_pool(task: Task, max_questions: int | None = None) -> list[Example]:
    """The task's unlabeled pool with gold answers removed; duplicate ids or empty questions are errors."""
    pool = [e.without_answer() for e in task.load_pool()]
    check_unique_ids(pool, f"task {task.name} pool")
    if max_questions is not None:
        pool = pool[:max_questions]
    if not pool:
        raise ValueError(f"Task {task.name}: the unlabeled pool is empty.")
    return pool


def run_sample_stage(task: Task, model: LoadedModel, config: SampleStageConfig, output_dir: str | os.PathLike, *,
                     model_id: str = "", process_index: int = 0, process_count: int = 1,
                     progress: bool = True, wait_for_all_processes: Callable[[], None] | None = None,
                     prompter: Prompter | None = None) -> dict[str, Any]:
    """Samples every incomplete shard owned by this process; returns (and writes) the stage manifest.

    `prompter` writes the prompts (default: the vocabulary's own style, chat when it carries a template). With several
    processes, `wait_for_all_processes` (a barrier) runs before process 0 writes the manifest, so it lists every
    process's shards."""
    output_dir = as_path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pool = load_pool(task, config.max_questions)
    prompter = prompter or Prompter.for_vocabulary(model.vocab, source=model_id)
    settings = {**dataclasses.asdict(config), "task": task.name, "answer_type": task.answer_type,
                "pool_sha256": pool_fingerprint(pool),
                "model": model_id, "exemplar_sets": sorted(task.exemplar_sets), **prompter.describe()}
    _check_config_matches(output_dir, settings)
    fmt = PromptFormat(config.prompt_format)
    sampler = BatchSampler.for_model(
        model, num_samples=config.num_samples, max_new_tokens=config.max_new_tokens, method=config.method,
        stop_strings=prompter.stop_strings(task.exemplars_for(pool[0])), eos_ids=prompter.eos_ids,
        batch_size=config.batch_size, seed=config.seed, progress=progress,
    )
    start = time.perf_counter()
    ranges = shard_ranges(len(pool), config.num_shards)
    skipped = sampled = 0
    for index in range(process_index, config.num_shards, process_count):
        questions = pool[ranges[index][0]: ranges[index][1]]
        path = shard_path(output_dir, index, config.num_shards)
        if _shard_is_complete(path, questions, config.num_samples):
            skipped += 1
            continue
        requests = [SampleRequest(q.id, prompter.prompt(fmt, q.question, task.exemplars_for(q))) for q in questions]
        completions = {c.example_id: c for c in sampler.run(requests, total=len(requests))} if requests else {}
        write_text_atomic(path, _shard_lines(questions, completions, task, fmt.value))
        sampled += 1
    if wait_for_all_processes is not None:
        wait_for_all_processes()
    manifest = _manifest(output_dir, pool, config, settings, ranges, sampler, time.perf_counter() - start,
                         skipped, sampled)
    return write_manifest(output_dir, manifest) if process_index == 0 else manifest


def _manifest(output_dir: pathlib.Path, pool: Sequence[Example], config: SampleStageConfig,
              settings: dict[str, Any], ranges: list[tuple[int, int]], sampler: BatchSampler, seconds: float,
              skipped: int, sampled: int) -> dict[str, Any]:
    shards = [shard_path(output_dir, i, config.num_shards) for i in range(config.num_shards)]
    present = [p for p in shards if p.exists()]
    return stage_manifest(
        "sample", settings,
        inputs={"task": settings["task"], "pool_questions": len(pool), "pool_sha256": settings["pool_sha256"],
                "model": settings["model"]},
        outputs={p.name: file_output(p, questions=ranges[i][1] - ranges[i][0])
                 for i, p in enumerate(shards) if p.exists()},
        counts={"questions": len(pool), "shards": config.num_shards, "shards_complete": len(present),
                "samples_expected": len(pool) * config.num_samples},
        seconds=seconds,
        # What this invocation did; the only part that differs between a resumed and an uninterrupted run.
        last_run={"shards_sampled": sampled, "shards_skipped_complete": skipped,
                  "sampled_tokens": sampler.stats["sampled_tokens"],
                  "tokens_per_second": sampler.stats["sampled_tokens"] / seconds if seconds > 0 else None})


def read_samples(output_dir: str | os.PathLike) -> list[SampleRecord]:
    """All records of a complete sample stage, in shard order; missing shards are an error naming them."""
    output_dir = as_path(output_dir)
    settings_path = output_dir / "sampling_config.json"
    if not settings_path.exists():
        raise FileNotFoundError(f"{output_dir} has no sampling_config.json: run the sample stage first.")
    num_shards = json.loads(settings_path.read_text())["num_shards"]
    missing = [shard_path(output_dir, i, num_shards).name for i in range(num_shards)
               if not shard_path(output_dir, i, num_shards).exists()]
    if missing:
        raise FileNotFoundError(f"{output_dir}: {len(missing)} sample shard(s) missing, e.g. {missing[0]}; rerun the "
                                "sample stage to complete them.")
    records = []
    for i in range(num_shards):
        records.extend(read_shard(shard_path(output_dir, i, num_shards)))
    return records
