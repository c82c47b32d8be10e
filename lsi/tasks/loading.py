"""Shared helpers of the dataset loaders: reading records with errors that name file, line and field; stable hashing;
deterministic subsampling; the canonical gold answer.

Every reader yields `(line, record)` so that an error raised about a record can point at the line that holds it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import pathlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lsi.io_utils import open_text, read_jsonl  # noqa: F401 - read_jsonl is part of this module's reader set
from lsi.tasks.answers import normalize_gold
from lsi.tasks.base import PROMPTS_DIR, Example, ExemplarSet, Task, check_unique_ids

_MISSING = object()


class EvalOnlyTaskError(ValueError):
    """Raised when the pool of an evaluation-only task (SVAMP, AQuA, MNLI: out-of-domain in the paper) is asked for."""


def read_json_array(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """("record N", object) of a file holding one JSON array of objects (SVAMP, StrategyQA); the first item is a
    location for `field` and `where`."""
    try:
        with open_text(path) as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON array of records, got {type(records).__name__}.")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is a {type(record).__name__}, not an object.")
        yield f"record {index}", record


def read_delimited(path: str | os.PathLike, delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number of the record's first line, row) of a CSV/TSV file with a header; a row whose column count differs
    from the header's is an error naming the line."""
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a header row.") from None
        line_no = reader.line_num + 1
        for row in reader:
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_no}: {len(row)} columns where the header has {len(header)}.")
            yield line_no, dict(zip(header, row))
            line_no = reader.line_num + 1


def where(path: str | os.PathLike, line: int | str) -> str:
    """'file:12' for a line number, 'file (record 3)' for a position in a JSON array."""
    return f"{path}:{line}" if isinstance(line, int) else f"{path} ({line})"


def field(record: dict[str, Any], name: str, path: str | os.PathLike, line: int | str, default: Any = _MISSING) -> Any:
    """record[name], where a dotted name reaches into nested objects ("question.stem"); a missing or empty field is a
    KeyError-like ValueError naming file, line and field (unless a default is given)."""
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value or value[part] is None or value[part] == "":
            if default is not _MISSING:
                return default
            raise ValueError(f"{where(path, line)}: record has no field {name!r}.")
        value = value[part]
    return value


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same on every machine and run (unlike Python's salted `hash`)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def in_eval_bucket(key: str, eval_fraction: float, salt: str) -> bool:
    """Whether `key` belongs to the eval side of a deterministic hash split of `eval_fraction`."""
    return stable_hash(f"{salt}\x00{key}") % 1_000_000 < round(eval_fraction * 1_000_000)


def subsample(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    """`size` examples drawn without replacement with `seed`, kept in file order; all of them when size is None or
    not smaller than the list."""
    if size is None or size >= len(examples):
        return examples
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}.")
    keep = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in keep]


def memoize_loader(load: Callable[[], list[Example]], source: str) -> Callable[[], list[Example]]:
    """Reads once per Task, checks ids, and hands every caller its own list."""

    @functools.lru_cache(maxsize=1)
    def cached() -> tuple[Example, ...]:
        examples = load()
        check_unique_ids(examples, source)
        return tuple(examples)

    return lambda: list(cached())


def eval_only_pool(task_name: str, reason: str) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        raise EvalOnlyTaskError(f"Task {task_name} is evaluation-only ({reason}); it has no question pool.")

    return load


def format_options(options: Sequence[str], end_with_period: bool = False) -> str:
    """'(a) first (b) second ...' with letters by position; ARC's exemplars end every option with a period."""
    parts = []
    for index, text in enumerate(options):
        text = " ".join(str(text).split())
        if end_with_period and text and text[-1] not in ".?!":
            text += "."
        parts.append(f"({chr(ord('a') + index)}) {text}")
    return " ".join(parts)


def option_label(index: int) -> str:
    return f"({chr(ord('a') + index)})"


def multiple_choice_example(example_id: str, question: str, options: Sequence[str], correct_index: int,
                            path: pathlib.Path, line: int) -> Example:
    """An "option" example: `question` already ends with its formatted options; the gold is the correct option's
    label, and the metadata keeps the source line and the option texts."""
    return Example(id=example_id, question=question,
                   answer=canonical_gold(option_label(correct_index), "option", path, line),
                   metadata={"source": f"{path.name}:{line}", "options": list(options)})


# --- canonical gold answers --------------------------------------------------------------------------------------


def canonical_gold(answer: Any, answer_type: str, path: str | os.PathLike, line: int | str) -> str:
    """The gold answer in lsi.tasks.answers' canonical form ("1234", "b", "yes", ...); an answer that does not fit
    the type is an error naming file and line."""
    try:
        return normalize_gold(answer, answer_type)
    except ValueError as e:
        raise ValueError(
            f"{where(path, line)}: gold answer {answer!r} is not a valid {answer_type} answer ({e}).") from None


# --- building tasks ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def load_exemplars(name: str) -> ExemplarSet:
    """An exemplar set by the stem of a file in lsi/tasks/prompts/, or by a path to a JSON file of the same schema."""
    candidate = pathlib.Path(name)
    if candidate.suffix == ".json" or candidate.is_file():
        return ExemplarSet.from_file(candidate)
    path = PROMPTS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.json"))
        raise FileNotFoundError(f"No exemplar file {path} (and {name!r} is not a path); known prompt names: {known}.")
    return ExemplarSet.from_file(path)


def make_task(
    name: str,
    answer_type: str,
    load_pool: Callable[[], list[Example]],
    load_eval: Callable[[], list[Example]],
    exemplar_sets: dict[str, ExemplarSet],
    *,
    seed: int = 0,
    pool_size: int | None = None,
    eval_size: int | None = None,
    choose_exemplars: Callable[[Example], str] | None = None,
    description: str = "",
) -> Task:
    """A Task whose splits are read once, id-checked, and optionally subsampled (`pool_size`, `eval_size`: a seeded
    sample kept in file order; the pool and eval samples use different streams of `seed`)."""

    def sized(load: Callable[[], list[Example]], size: int | None, split: str) -> Callable[[], list[Example]]:
        if size is None:
            return load
        return lambda: subsample(load(), size, stable_hash(f"{name}/{split}/{seed}"))

    kwargs: dict[str, Any] = {}
    if choose_exemplars is not None:
        kwargs["choose_exemplars"] = choose_exemplars
    return Task(
        name=name,
        answer_type=answer_type,
        load_pool=memoize_loader(sized(load_pool, pool_size, "pool"), f"{name} pool"),
        load_eval=memoize_loader(sized(load_eval, eval_size, "eval"), f"{name} eval"),
        exemplar_sets=exemplar_sets,
        description=description,
        **kwargs,
    )


def split_file_task(name: str, answer_type: str, load_split: Callable[[str, Any], list[Example]],
                    description: str) -> Callable[..., Task]:
    """The registry factory `(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task` of a task whose pool
    and eval splits come from one loader, `load_split("pool" | "eval", data_dir)`, prompted with the exemplars named
    after the task."""

    def factory(data_dir: str | os.PathLike | None = None, seed: int = 0, pool_size: int | None = None,
                eval_size: int | None = None) -> Task:
        return make_task(name, answer_type, lambda: load_split("pool", data_dir), lambda: load_split("eval", data_dir),
                         {"default": load_exemplars(name)}, seed=seed, pool_size=pool_size, eval_size=eval_size,
                         description=description)

    factory.__name__ = name
    return factory


def eval_only_task(name: str, answer_type: str, load_eval: Callable[[], list[Example]], exemplars: str, *,
                   seed: int = 0, eval_size: int | None = None, description: str = "") -> Task:
    """An out-of-domain task of the paper (SVAMP, AQuA, MNLI): an eval split, a prompt, and a pool that raises
    `EvalOnlyTaskError` when asked for."""
    return make_task(name, answer_type, eval_only_pool(name, "out-of-domain in the paper"), load_eval,
                     {"default": load_exemplars(exemplars)}, seed=seed, eval_size=eval_size,
                     description=description)


def assert_disjoint(pool: Sequence[Example], evaluation: Sequence[Example], task_name: str,
                    key: Callable[[Example], str] = lambda e: e.question) -> None:
    """No question (or other key) in both splits."""
    overlap = {key(e) for e in pool} & {key(e) for e in evaluation}
    if overlap:
        raise AssertionError(f"Task {task_name}: {len(overlap)} question(s) in both pool and eval, e.g. "
                             f"{next(iter(overlap))[:120]!r}.")
