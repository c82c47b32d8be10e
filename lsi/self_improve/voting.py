"""Majority voting over parsed answers (self-consistency), PAPER.md section 2, steps 3-4.

Unparseable samples (answer None) do not vote. Answers are grouped with `answers_equal`, so "1,000" and "1000.0", or
"(B)" and "b", vote together once parsed. Ties are broken by the answer seen first among the tied ones (sample order
is the sampler's sample index, so the rule is deterministic); a tie is flagged so it can be counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import TYPE_CHECKING, Sequence

from lsi.io_utils import as_path
from lsi.records import KeptPath, PseudoLabel, SampleRecord, read_records, write_records
from lsi.self_improve.manifest import MANIFEST_FILE, file_output, stage_manifest, write_manifest
from lsi.self_improve.sampling import load_pool, read_samples
from lsi.tasks.answers import answer_key, answers_equal, keys_equal

if TYPE_CHECKING:
    from lsi.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Vote:
    answer: str | None  # the voted answer; None when no sample parsed
    count: int  # samples whose answer equals `answer`
    num_parsed: int  # samples with a parseable answer
    num_samples: int  # all samples, parsed or not
    tie: bool  # another answer had the same count
    agreeing: tuple[int, ...]  # indices of the samples that reached `answer`

    @property
    def share_of_parsed(self) -> float:
        return self.count / self.num_parsed if self.num_parsed else 0.0

    @property
    def share_of_all(self) -> float:
        """The paper's confidence: paths leading to the voted answer / m."""
        return self.count / self.num_samples if self.num_samples else 0.0


def answer_groups(answers: Sequence[str | None], answer_type: str) -> tuple[list[int], list[str]]:
    """Each sample's answer group (-1 when unparseable) and each group's representative, groups numbered in the order
    they are first seen. An answer joins the first group whose representative equals it; `answer_key` makes the
    search a dict lookup for every repeat of an answer seen before."""
    group_of_sample: list[int] = []
    representatives: list[str] = []
    representative_keys: list[tuple[str | None, str]] = []
    group_of_key: dict[tuple[str | None, str], int] = {}
    for answer in answers:
        if answer is None:
            group_of_sample.append(-1)
            continue
        key = answer_key(answer, answer_type)
        if key not in group_of_key:
            found = next((g for g, rep in enumerate(representative_keys) if keys_equal(rep, key, answer_type)), None)
            if found is None:
                found = len(representatives)
                representatives.append(answer)
                representative_keys.append(key)
            group_of_key[key] = found
        group_of_sample.append(group_of_key[key])
    return group_of_sample, representatives


def vote_answers(answers: Sequence[str | None], answer_type: str) -> Vote:
    """The majority answer of `answers` (one per sample, None when unparseable)."""
    group_of_sample, representatives = answer_groups(answers, answer_type)
    members: list[list[int]] = [[] for _ in representatives]
    for index, group in enumerate(group_of_sample):
        if group >= 0:
            members[group].append(index)
    if not representatives:
        return Vote(None, 0, 0, len(answers), False, ())
    best = max(len(m) for m in members)
    tied = [g for g, m in enumerate(members) if len(m) == best]
    winner = tied[0]  # groups are numbered in first-seen order: the first seen wins a tie
    num_parsed = sum(len(m) for m in members)
    return Vote(representatives[winner], best, num_parsed, len(answers), len(tied) > 1, tuple(members[winner]))


LABEL_SOURCES = ("vote", "oracle", "anti_oracle")


@dataclasses.dataclass(frozen=True)
class VoteStageConfig:
    """Paper defaults: no confidence threshold, no de-duplication, every agreeing path kept."""

    min_vote_share: float = 0.0  # of all m samples; questions below it are dropped (an extension, not the paper)
    dedupe_paths: bool = False  # keep one copy of identical path texts
    max_paths_per_question: int | None = None  # cap kept paths (lowest sample indices first)
    # A vote that keeps no pseudo-label is an error (nothing to train on, usually a model that never states its
    # answer in the parsed form); True writes the empty file instead, for runs that expect it.
    allow_empty: bool = False
    # Controls that read the pool's hidden gold answers (never a self-improvement run): 'oracle' keeps only the paths
    # that reach the gold answer (what this sampling budget could teach at best), 'anti_oracle' only wrong paths
    # (the majority among wrong answers; training on them must hurt). 'vote' is the method.
    label_source: str = "vote"
    # Cap on kept paths over all questions, taken round-robin across questions (each question's first path, then
    # its second, ...), so a control can train on as many paths as the vote kept.
    max_total_paths: int | None = None

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}.")
        if self.max_total_paths is not None and self.max_total_paths < 1:
            raise ValueError(f"max_total_paths must be >= 1 or None, got {self.max_total_paths}.")
        if not 0.0 <= self.min_vote_share <= 1.0:
            raise ValueError(f"min_vote_share must be in [0, 1], got {self.min_vote_share}.")
        if self.max_paths_per_question is not None and self.max_paths_per_question < 1:
            raise ValueError(f"max_paths_per_question must be >= 1 or None, got {self.max_paths_per_question}.")


def eligible_answers(answers: Sequence[str | None], answer_type: str, label_source: str, gold: str | None
                     ) -> list[str | None]:
    """The answers that may vote under `label_source`: all of them for the method; for the controls only those that
    match the gold answer (oracle) or only those that do not (anti-oracle), the others counted as unparsed."""
    if label_source == "vote":
        return list(answers)
    if gold is None:
        raise ValueError(f"label_source={label_source!r} needs the pool's gold answers, and a question has none.")
    keep_right = label_source == "oracle"
    return [a if a is not None and answers_equal(a, gold, answer_type) == keep_right else None for a in answers]


def pseudo_label(question_id: str, question: str, samples: Sequence[SampleRecord], answer_type: str,
                 config: VoteStageConfig, gold: str | None = None) -> tuple[PseudoLabel | None, dict[str, int]]:
    """The pseudo-label of one question from its sample records (sorted by sample index), or None when it yields no
    training data; plus counters for the manifest. `gold` is read only by the oracle controls."""
    counts = {"no_parseable_answer": 0, "tie": 0, "below_min_share": 0, "deduped_paths": 0, "capped_paths": 0}
    vote = vote_answers(eligible_answers([s.answer for s in samples], answer_type, config.label_source, gold),
                        answer_type)
    if vote.answer is None:
        counts["no_parseable_answer"] = 1
        return None, counts
    counts["tie"] = int(vote.tie)
    if vote.share_of_all < config.min_vote_share:
        counts["below_min_share"] = 1
        return None, counts
    paths = [samples[i] for i in vote.agreeing]
    if config.dedupe_paths:
        seen: set[str] = set()
        unique = [p for p in paths if not (p.text.strip() in seen or seen.add(p.text.strip()))]
        counts["deduped_paths"] = len(paths) - len(unique)
        paths = unique
    if config.max_paths_per_question is not None and len(paths) > config.max_paths_per_question:
        counts["capped_paths"] = len(paths) - config.max_paths_per_question
        paths = paths[: config.max_paths_per_question]
    label = PseudoLabel(
        question_id=question_id, question=question, answer=vote.answer, vote_count=vote.count,
        num_parsed=vote.num_parsed, num_samples=vote.num_samples, vote_share=vote.share_of_all,
        vote_share_of_parsed=vote.share_of_parsed, tie=vote.tie,
        paths=tuple(KeptPath(p.sample_index, p.text) for p in paths))
    return label, counts


def run_vote_stage(task: Task, samples_dir: str | os.PathLike, output_dir: str | os.PathLike,
                   config: VoteStageConfig = VoteStageConfig()) -> dict:
    """Votes every question of a complete sample stage; writes pseudo_labels.jsonl and manifest.json."""
    start = time.perf_counter()
    samples_dir, output_dir = as_path(samples_dir), as_path(output_dir)
    sampling = json.loads((samples_dir / "sampling_config.json").read_text())
    pool = load_pool(task, sampling.get("max_questions"))
    by_question: dict[str, list[SampleRecord]] = {q.id: [] for q in pool}
    for record in read_samples(samples_dir):
        if record.question_id not in by_question:
            raise ValueError(f"{samples_dir}: samples for question {record.question_id!r}, which is not in the "
                             f"pool of task {task.name}; were they sampled from another task?")
        by_question[record.question_id].append(record)
    totals = {"questions": len(pool), "no_parseable_answer": 0, "tie": 0, "below_min_share": 0, "deduped_paths": 0,
              "capped_paths": 0, "pseudo_labels": 0, "kept_paths": 0}
    golds = _pool_golds(task) if config.label_source != "vote" else {}
    records = []
    for question in pool:
        samples = sorted(by_question[question.id], key=lambda s: s.sample_index)
        record, counts = pseudo_label(question.id, question.question, samples, task.answer_type, config,
                                      golds.get(question.id))
        for key, value in counts.items():
            totals[key] += value
        if record is not None:
            records.append(record)
    if config.max_total_paths is not None:
        records, capped = cap_total_paths(records, config.max_total_paths)
        totals["capped_paths"] += capped
    records = [r for r in records if r.paths]
    totals["pseudo_labels"] = len(records)
    totals["kept_paths"] = sum(len(r.paths) for r in records)
    shares = [r.vote_share for r in records]
    if not records and not config.allow_empty:
        raise ValueError(_no_pseudo_labels_message(samples_dir, totals, config))
    path = write_records(output_dir / PseudoLabel.FILE, records)
    totals["mean_vote_share"] = sum(shares) / len(shares) if shares else 0.0
    samples_manifest = samples_dir / MANIFEST_FILE
    return write_manifest(output_dir, stage_manifest(
        "vote", {**dataclasses.asdict(config), "task": task.name, "answer_type": task.answer_type,
                 "prompt_style": sampling.get("prompt_style", "plain")},
        inputs={"samples_dir": str(samples_dir), "sampling_config": sampling,
                "sample_shards_sha256": json.loads(samples_manifest.read_text()).get("outputs")
                if samples_manifest.exists() else None},
        outputs={path.name: file_output(path, records=totals["pseudo_labels"])},
        counts=totals, seconds=time.perf_counter() - start))


def _pool_golds(task: Task) -> dict[str, str | None]:
    return {example.id: example.answer for example in task.load_pool()}


def cap_total_paths(records: Sequence[PseudoLabel], cap: int) -> tuple[list[PseudoLabel], int]:
    """At most `cap` paths over all records, taken round-robin across questions (each record's first path, then its
    second, ...); returns the capped records and how many paths were dropped."""
    quota = [0] * len(records)
    taken, depth = 0, 0
    while taken < cap and any(len(r.paths) > depth for r in records):
        for index, record in enumerate(records):
            if taken < cap and len(record.paths) > depth:
                quota[index] += 1
                taken += 1
        depth += 1
    dropped = sum(len(record.paths) - keep for record, keep in zip(records, quota))
    return [dataclasses.replace(r, paths=r.paths[:keep]) for r, keep in zip(records, quota)], dropped


def _no_pseudo_labels_message(samples_dir: pathlib.Path, totals: dict[str, int], config: VoteStageConfig) -> str:
    reasons = [f"{totals['no_parseable_answer']} had no parseable answer in any sample"]
    if config.min_vote_share > 0:
        reasons.append(f"{totals['below_min_share']} were below min_vote_share={config.min_vote_share}")
    return (f"{samples_dir}: the vote kept 0 pseudo-labels of {totals['questions']} questions voted "
            f"({'; '.join(reasons)}), so there is nothing to train on. Read a few samples: does the model end with "
            f"'The answer is X'? Lower min_vote_share if it is set, or set VoteStageConfig.allow_empty = True to "
            f"write the empty pseudo_labels.jsonl anyway.")


def read_pseudo_labels(path: str | os.PathLike) -> list[PseudoLabel]:
    """pseudo_labels.jsonl records; a malformed line or field is an error naming the file, line and field."""
    return read_records(PseudoLabel, path)
