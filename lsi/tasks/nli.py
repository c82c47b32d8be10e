"""Natural language inference: ANLI rounds 1-3 and MNLI, all prompted with the paper's 6-shot NLI prompt.

Question text (the NLI exemplar set has question_prefix ""):

    Premise:
    "<premise>"
    Based on this premise, can we conclude the hypothesis "<hypothesis>" is true?
    OPTIONS:
    - yes
    - no
    - it is not possible to tell

Labels map entailment / e -> "yes", contradiction / c -> "no", neutral / n -> "it is not possible to tell".

- anli_r{1,2,3}: pool = the round's dev CSV (1,000 / 1,000 / 1,198; the ANLI train files are not local), eval = the
  rows of anli/test.jsonl tagged r{N}_test (1,000 / 1,000 / 1,200). The paper trains on A2 and A3; A1 is out-of-domain.
- mnli: eval only, matched dev (9,815), out-of-domain in the paper.
"""

from __future__ import annotations

import os
import pathlib

from lsi.tasks import loading
from lsi.tasks.base import Example, Task, data_file

ANLI_DEV = "anli/ANLI_analysis_r{round}_dev.csv"
ANLI_TEST = "anli/test.jsonl"
MNLI_FILE = "mnli/dev.jsonl"
NLI_OPTIONS = ("yes", "no", "it is not possible to tell")
_LABELS = {
    "e": "yes", "entailment": "yes",
    "c": "no", "contradiction": "no",
    "n": "it is not possible to tell", "neutral": "it is not possible to tell",
}


def nli_question(premise: str, hypothesis: str) -> str:
    premise, hypothesis = " ".join(premise.split()), " ".join(hypothesis.split())
    options = "\n".join(f"- {o}" for o in NLI_OPTIONS)
    return (f'Premise:\n"{premise}"\nBased on this premise, can we conclude the hypothesis "{hypothesis}" is true?\n'
            f"OPTIONS:\n{options}")


def _gold(label: str, path, line) -> str:
    key = str(label).strip().lower()
    if key not in _LABELS:
        raise ValueError(f"{loading.where(path, line)}: label {label!r} is not one of {sorted(_LABELS)}.")
    return loading.canonical_gold(_LABELS[key], "nli", path, line)


def _nli_example(example_id: str, record: dict, fields: tuple[str, str, str], path: pathlib.Path,
                 line: int) -> Example:
    """An NLI example from a record's (premise, hypothesis, label) fields, named as the file names them."""
    premise, hypothesis, label = (loading.field(record, name, path, line) for name in fields)
    return Example(id=example_id, question=nli_question(premise, hypothesis), answer=_gold(label, path, line),
                   metadata={"source": f"{path.name}:{line}"})


def load_anli_dev(round_: int, data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(ANLI_DEV.format(round=round_), data_dir)
    return [_nli_example(f"anli_r{round_}-dev-{loading.field(row, 'uid', path, line)}", row,
                         ("context", "statement", "gold_label"), path, line)
            for line, row in loading.read_delimited(path)]


def load_anli_test(round_: int, data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(ANLI_TEST, data_dir)
    tag = f"r{round_}_test"
    examples = []
    for line, record in loading.read_jsonl(path):
        if loading.field(record, "tag", path, line) != tag:
            continue
        examples.append(_nli_example(f"anli_r{round_}-test-{len(examples):04d}", record,
                                     ("premise", "hypothesis", "label"), path, line))
    return examples


def load_mnli(data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(MNLI_FILE, data_dir)
    return [_nli_example(f"mnli-dev_matched-{line - 1:05d}", record, ("premise", "hypothesis", "label"), path, line)
            for line, record in loading.read_jsonl(path)]


def anli(round_: int):
    def factory(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task:
        return loading.make_task(
            f"anli_r{round_}", "nli",
            lambda: load_anli_dev(round_, data_dir), lambda: load_anli_test(round_, data_dir),
            {"default": loading.load_exemplars("nli")},
            seed=seed, pool_size=pool_size, eval_size=eval_size,
            description=f"ANLI round {round_}: pool = dev CSV, eval = r{round_}_test rows of test.jsonl.",
        )

    factory.__name__ = f"anli_r{round_}"
    return factory


def mnli(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task:
    del pool_size
    return loading.eval_only_task("mnli", "nli", lambda: load_mnli(data_dir), "nli", seed=seed, eval_size=eval_size,
                                  description="MNLI matched dev (9,815), evaluation only, NLI prompt.")
