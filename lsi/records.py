"""Typed records between stages: what one line of a stage's JSONL file holds, read and written only through these.

    samples-*.jsonl      SampleRecord  one sampled path of one pool question (sample stage -> vote stage)
    pseudo_labels.jsonl  PseudoLabel   a question's voted answer and the agreeing paths kept (vote -> format stage)
    predictions.jsonl    Prediction    one evaluated question: every sample, the vote, gold, correct (eval -> report)

Each is a frozen dataclass whose fields are the JSON keys, in file order, so `to_json` writes the same bytes the
stages always wrote. `from_json` checks every field and names the file, line and field of a bad one; a field added
later gets a default (older files still read), and keys a record does not declare are ignored (a reader keeps
working on files a later version extends).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from typing import Any, ClassVar, Iterable, TypeVar

from etils import epath

from lsi.io_utils import json_line, read_jsonl, write_text_atomic

R = TypeVar("R", bound="Record")


class Record:
    """Mixin of the record dataclasses: JSON round trips with checked fields."""

    # field name -> the record class of each element of that (list) field
    NESTED: ClassVar[dict[str, type[Record]]] = {}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_line(self) -> str:
        return json_line(self.to_json())

    @classmethod
    def from_json(cls: type[R], value: Any, where: str) -> R:
        """The record in `value` (a decoded JSON object); `where` ("file:line") prefixes every error."""
        if not isinstance(value, dict):
            raise ValueError(f"{where}: a {cls.__name__} is a JSON object, got {type(value).__name__}.")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        # A field added later has a default, so files written before it still read.
        missing = [f.name for f in fields if f.name not in value and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{where}: {cls.__name__} without field(s) {', '.join(missing)}.")
        return cls(**{f.name: cls._checked(f.name, value[f.name], where) for f in fields if f.name in value})

    @classmethod
    def _checked(cls, name: str, value: Any, where: str) -> Any:
        if name in cls.NESTED:
            if not isinstance(value, list):
                raise ValueError(f"{where}: field '{name}' is a {type(value).__name__}, not a list.")
            return tuple(cls.NESTED[name].from_json(item, f"{where}: {name}[{i}]") for i, item in enumerate(value))
        allowed = _json_types(_field_types(cls)[name])
        if allowed is not None and not _is_instance(value, allowed):
            expected = " or ".join(sorted(t.__name__ for t in allowed))
            raise ValueError(f"{where}: field '{name}' is {json.dumps(value)[:40]} ({type(value).__name__}), "
                             f"not {expected}.")
        return tuple(value) if isinstance(value, list) else value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _json_types(hint: Any) -> tuple[type, ...] | None:
    """The JSON value types a field annotation admits (None: not checked, e.g. a tuple of strings)."""
    if hint in (str, int, float, bool):
        return (hint,)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [_json_types(arg) if arg is not type(None) else (type(None),) for arg in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)  # type: ignore[union-attr]
    return None


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is a bool, never a number
        return bool in allowed
    if isinstance(value, int) and float in allowed:  # JSON 1 for a float field
        return True
    return isinstance(value, allowed)


def read_records(cls: type[R], path: str | os.PathLike) -> list[R]:
    """Every line of a JSONL file as `cls`; a malformed line or field is an error naming the file and line."""
    return [cls.from_json(value, f"{path}:{line}") for line, value in read_jsonl(path)]


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> epath.Path:
    """Writes the records as JSONL, atomically (a reader sees the old file or the whole new one)."""
    return write_text_atomic(path, "".join(r.to_line() for r in records))


@dataclasses.dataclass(frozen=True)
class SampleRecord(Record):
    """One sampled path of one pool question (a line of the sample stage's samples-*.jsonl)."""

    question_id: str
    prompt_format: str
    exemplar_set: str
    sample_index: int
    text: str
    answer: str | None  # the path's parsed, canonical answer; None where it gave none
    finish_reason: str  # "stop" | "eos" | "length"
    num_tokens: int
    sum_log_prob: float


@dataclasses.dataclass(frozen=True)
class KeptPath(Record):
    """A sampled path that agrees with its question's pseudo-label."""

    sample_index: int
    text: str


@dataclasses.dataclass(frozen=True)
class PseudoLabel(Record):
    """A question's majority-voted answer and the agreeing paths kept as training data (a pseudo_labels.jsonl line)."""

    FILE: ClassVar[str] = "pseudo_labels.jsonl"
    NESTED: ClassVar[dict[str, type[Record]]] = {"paths": KeptPath}

    question_id: str
    question: str
    answer: str
    vote_count: int
    num_parsed: int
    num_samples: int
    vote_share: float  # vote_count / num_samples
    vote_share_of_parsed: float  # vote_count / num_parsed
    tie: bool
    paths: tuple[KeptPath, ...]


@dataclasses.dataclass(frozen=True)
class PredictionSample(Record):
    """One sampled (or greedy) path of an evaluated question."""

    text: str
    answer: str | None
    finish_reason: str
    num_tokens: int
    sum_log_prob: float


@dataclasses.dataclass(frozen=True)
class Prediction(Record):
    """One evaluated question: its samples, their vote, the gold answer and whether the vote matches it (a line of
    an eval mode's predictions.jsonl)."""

    FILE: ClassVar[str] = "predictions.jsonl"
    NESTED: ClassVar[dict[str, type[Record]]] = {"samples": PredictionSample}

    id: str
    prompt_hash: str
    samples: tuple[PredictionSample, ...]
    vote: str | None
    vote_count: int
    vote_share: float
    vote_share_of_parsed: float
    tie: bool
    gold: str | None
    gold_alternatives: tuple[str, ...]
    correct: bool
    prompt: str | None = None  # the prompt's whole text (files written before it was kept have only its hash)

    @property
    def answers(self) -> list[str | None]:
        return [s.answer for s in self.samples]

    @property
    def golds(self) -> list[str]:
        """Every accepted gold answer (DROP lists alternatives)."""
        return [g for g in (self.gold, *self.gold_alternatives) if g is not None]
