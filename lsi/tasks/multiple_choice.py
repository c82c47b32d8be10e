"""Multiple-choice commonsense QA: ARC-Challenge and OpenBookQA (both in-domain in the paper).

Options are lettered by position, "(a) ... (b) ...", whatever the file labels them (ARC uses "1"-"4" for some
questions; one OpenBookQA train row, 12-1145, lists five options with "(D)" twice and keeps all five as (a)-(e)).
The gold is the letter "(x)" of the keyed option.

- arc_challenge: pool = ARC-Challenge-Dev.jsonl (299; the paper used the 1,119-question train split, which is not
  among the local files), eval = ARC-Challenge-Test.jsonl (1,172). Options end with a period, as in the paper's prompt.
- openbookqa: pool = Main/train.tsv (4,957), eval = Main/test.tsv (500).
"""

from __future__ import annotations

import os
import re

from lsi.tasks import loading
from lsi.tasks.base import Example, Task, data_file

ARC_FILES = {"pool": "arc_challenge/ARC-Challenge-Dev.jsonl", "eval": "arc_challenge/ARC-Challenge-Test.jsonl"}
OPENBOOKQA_FILES = {"pool": "openbookqa/train.tsv", "eval": "openbookqa/test.tsv"}
_OBQA_OPTION = re.compile(r"\(([A-Z])\)\s*")


def load_arc(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(ARC_FILES[split], data_dir)
    examples = []
    for line, record in loading.read_jsonl(path):
        stem = " ".join(loading.field(record, "question.stem", path, line).split())
        choices = loading.field(record, "question.choices", path, line)
        labels = [str(loading.field(c, "label", path, line)) for c in choices]
        options = [loading.field(c, "text", path, line) for c in choices]
        key = str(loading.field(record, "answerKey", path, line)).strip()
        if key not in labels:
            raise ValueError(f"{path}:{line}: field 'answerKey' {key!r} is not one of the choice labels {labels}.")
        index = labels.index(key)
        examples.append(Example(
            id=f"arc_challenge-{loading.field(record, 'id', path, line)}",
            question=f"{stem} {loading.format_options(options, end_with_period=True)}",
            answer=loading.canonical_gold(loading.option_label(index), "option", path, line),
            metadata={"source": f"{path.name}:{line}", "options": options},
        ))
    return examples


def load_openbookqa(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(OPENBOOKQA_FILES[split], data_dir)
    examples = []
    for line, record in loading.read_delimited(path, delimiter="\t"):
        stem = " ".join(loading.field(record, "Question Stem", path, line).split())
        choices = loading.field(record, "Choices", path, line)
        pieces = _OBQA_OPTION.split(choices)  # ['', 'A', 'text', 'B', 'text', ...]
        if pieces[0].strip() or len(pieces) < 5:
            raise ValueError(f"{path}:{line}: field 'Choices' is not '(A) ... (B) ...': {choices!r}.")
        labels, options = pieces[1::2], [p.strip() for p in pieces[2::2]]
        key = loading.field(record, "Answer Key", path, line).strip()
        if key not in labels:
            raise ValueError(f"{path}:{line}: field 'Answer Key' {key!r} is not one of the choice labels {labels}.")
        examples.append(Example(
            id=f"openbookqa-{loading.field(record, 'ID', path, line)}",
            question=f"{stem} {loading.format_options(options)}",
            answer=loading.canonical_gold(loading.option_label(labels.index(key)), "option", path, line),
            metadata={"source": f"{path.name}:{line}", "options": options},
        ))
    return examples


def arc_challenge(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task:
    return loading.make_task(
        "arc_challenge", "option",
        lambda: load_arc("pool", data_dir), lambda: load_arc("eval", data_dir),
        {"default": loading.load_exemplars("arc_challenge")},
        seed=seed, pool_size=pool_size, eval_size=eval_size,
        description="ARC-Challenge: pool = dev (299), eval = test (1,172).",
    )


def openbookqa(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task:
    return loading.make_task(
        "openbookqa", "option",
        lambda: load_openbookqa("pool", data_dir), lambda: load_openbookqa("eval", data_dir),
        {"default": loading.load_exemplars("openbookqa")},
        seed=seed, pool_size=pool_size, eval_size=eval_size,
        description="OpenBookQA: pool = train (4,957), eval = test (500).",
    )
