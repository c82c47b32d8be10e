"""What every task is made of: examples, exemplars, and the `Task` that ties loading, prompting and scoring.

A task loads two disjoint splits from local files: the unlabeled `pool` that self-improvement samples from and the
`eval` split that scores models. Gold answers travel with examples for scoring only; the self-improvement stages
never read them (they are dropped from every file those stages write).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Sequence

from lsi.io_utils import open_text
from lsi.tasks import answers

ANSWER_TYPES = tuple(answers.ANSWER_TYPES)  # the names; the rules of each are `answers.ANSWER_TYPES[name]`
DATA_DIR_ENV = "LSI_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Example:
    """One question. `question` is the full text that follows the question prefix in a prompt (options, passage or
    premise/hypothesis already formatted as the task's exemplars are)."""

    id: str
    question: str
    answer: str | None = None  # gold, canonical form of the task's answer type (see lsi.tasks.answers)
    alternatives: tuple[str, ...] = ()  # further accepted gold answers (DROP)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def without_answer(self) -> "Example":
        return dataclasses.replace(self, answer=None, alternatives=())

    @property
    def golds(self) -> list[str]:
        """Every accepted gold answer (none for an unlabeled question)."""
        return [g for g in (self.answer, *self.alternatives) if g is not None]


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """A few-shot exemplar: the question, the reasoning, and the final answer as it is written in the answer
    sentence (e.g. "6", "(b)", "it is not possible to tell", "21 yards")."""

    question: str
    rationale: str
    answer: str


@dataclasses.dataclass(frozen=True)
class ExemplarSet:
    """The exemplars of one prompt and how they are written."""

    name: str
    exemplars: tuple[Exemplar, ...]
    question_prefix: str = "Q: "  # "" for NLI, whose question text starts with "Premise:"
    answer_prefix: str = "The answer is"  # DROP's exemplars say "So the answer is"
    source: str = ""

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ExemplarSet":
        """Reads a prompts/*.json file: {name, question_prefix?, answer_prefix?, exemplars: [{question, rationale,
        answer}]}; errors name the file and the exemplar index."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Exemplar file {path} does not exist.")
        try:
            with open_text(path) as f:
                raw = json.loads(f.read())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}.") from None
        exemplars = []
        for index, item in enumerate(raw.get("exemplars", [])):
            missing = [k for k in ("question", "rationale", "answer") if not str(item.get(k, "")).strip()]
            if missing:
                raise ValueError(f"{path}: exemplar {index} is missing field(s) {', '.join(missing)}.")
            exemplars.append(Exemplar(item["question"].strip(), item["rationale"].strip(), str(item["answer"]).strip()))
        if not exemplars:
            raise ValueError(f"{path}: no exemplars.")
        return cls(
            name=raw.get("name", path.stem),
            exemplars=tuple(exemplars),
            question_prefix=raw.get("question_prefix", "Q: "),
            answer_prefix=raw.get("answer_prefix", "The answer is"),
            source=str(path),
        )


PROMPTS_DIR = pathlib.Path(__file__).parent / "prompts"


def data_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
    """The benchmark data folder: `override`, else $LSI_DATA_DIR, else ../shared/data beside the repo checkout."""
    if override is not None:
        return pathlib.Path(override)
    if os.environ.get(DATA_DIR_ENV):
        return pathlib.Path(os.environ[DATA_DIR_ENV])
    return pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def data_file(relative: str, override: str | os.PathLike | None = None) -> pathlib.Path:
    """A file under the data folder; a missing one is an error that names the path and the variable to set."""
    path = data_dir(override) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"Dataset file {path} does not exist. Set {DATA_DIR_ENV} to the folder that holds {relative} "
            f"(see shared/data/SOURCES.md for where each file comes from)."
        )
    return path


@dataclasses.dataclass
class Task:
    """A dataset family's loading, prompting and scoring, bound to one answer type and exemplar set(s)."""

    name: str
    answer_type: str
    load_pool: Callable[[], list[Example]]
    load_eval: Callable[[], list[Example]]
    exemplar_sets: dict[str, ExemplarSet]
    choose_exemplars: Callable[[Example], str] = lambda example: "default"  # which set prompts an example
    description: str = ""
    load_dev: Callable[[], list[Example]] | None = None  # a labelled dev split, disjoint from pool and eval

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"Task {self.name}: answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}.")

    def exemplars_for(self, example: Example) -> ExemplarSet:
        return self.exemplar_sets[self.choose_exemplars(example)]

    def with_exemplars(self, sets: dict[str, ExemplarSet]) -> "Task":
        """The same task prompted with other exemplar sets (user files, or self-generated ones)."""
        return dataclasses.replace(self, exemplar_sets={**self.exemplar_sets, **sets})


def check_unique_ids(examples: Sequence[Example], source: str) -> None:
    seen: dict[str, int] = {}
    for index, example in enumerate(examples):
        if example.id in seen:
            raise ValueError(f"{source}: example id {example.id!r} appears at records {seen[example.id]} and {index}.")
        if not example.question.strip():
            raise ValueError(f"{source}: example {example.id!r} (record {index}) has an empty question.")
        seen[example.id] = index
