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
from lsi.tasks.base import Example, data_file

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
        examples.append(loading.multiple_choice_example(
            f"arc_challenge-{loading.field(record, 'id', path, line)}",
            f"{stem} {loading.format_options(options, end_with_period=True)}", options, labels.index(key), path, line))
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
        examples.append(loading.multiple_choice_example(
            f"openbookqa-{loading.field(record, 'ID', path, line)}", f"{stem} {loading.format_options(options)}",
            options, labels.index(key), path, line))
    return examples


arc_challenge = loading.split_file_task(
    "arc_challenge", "option", load_arc,
    "ARC-Challenge: pool = dev (299), eval = test (1,172).")


openbookqa = loading.split_file_task(
    "openbookqa", "option", load_openbookqa,
    "OpenBookQA: pool = train (4,957), eval = test (500).")
