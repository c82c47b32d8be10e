"""Arithmetic word problems: GSM8K (in-domain), SVAMP and AQuA (out-of-domain, evaluation only).

- gsm8k: pool = train.jsonl (7,473), eval = test.jsonl (1,319); the gold is the number after "####" in the worked
  solution (commas removed).
- svamp: eval only (SVAMP.json, 1,000), prompted with the GSM8K exemplars as in the paper; question = Body + " " +
  Question; gold = Answer as a number.
- aqua: eval only (test.json, 254; JSON lines despite the name), its own 4-shot prompt; the question is followed by
  "Answer Choices: (a) ... (e) ..." and the gold is the option letter "(x)".
"""

from __future__ import annotations

import os
import re

from lsi.tasks import loading
from lsi.tasks.base import Example, Task, data_file

GSM8K_FILES = {"pool": "gsm8k/train.jsonl", "eval": "gsm8k/test.jsonl"}
SVAMP_FILE = "svamp/SVAMP.json"
AQUA_FILE = "aqua/test.json"
_AQUA_OPTION = re.compile(r"^\s*([A-E])\s*\)\s*(.*)$", re.S)


def load_gsm8k(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(GSM8K_FILES[split], data_dir)
    examples = []
    for line, record in loading.read_jsonl(path):
        question = loading.field(record, "question", path, line)
        solution = loading.field(record, "answer", path, line)
        if "####" not in solution:
            raise ValueError(f"{path}:{line}: field 'answer' has no '####' before the final answer.")
        gold = loading.canonical_gold(solution.rsplit("####", 1)[1].strip(), "number", path, line)
        examples.append(Example(
            id=f"gsm8k-{'train' if split == 'pool' else 'test'}-{line - 1:05d}",
            question=" ".join(question.split()),
            answer=gold,
            metadata={"source": f"{path.name}:{line}"},
        ))
    return examples


def load_svamp(data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(SVAMP_FILE, data_dir)
    examples = []
    for index, (at, record) in enumerate(loading.read_json_array(path)):
        body = loading.field(record, "Body", path, at).strip()
        question = loading.field(record, "Question", path, at).strip()
        answer = loading.field(record, "Answer", path, at)
        examples.append(Example(
            id=f"svamp-{loading.field(record, 'ID', path, at)}",
            question=" ".join(f"{body} {question}".split()),
            answer=loading.canonical_gold(answer, "number", path, at),
            metadata={"source": f"{path.name}[{index}]", "type": record.get("Type", "")},
        ))
    return examples


def load_aqua(data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(AQUA_FILE, data_dir)
    examples = []
    for line, record in loading.read_jsonl(path):
        question = " ".join(loading.field(record, "question", path, line).split())
        raw_options = loading.field(record, "options", path, line)
        options = []
        for expected, raw in zip("ABCDE", raw_options):
            m = _AQUA_OPTION.match(raw)
            if not m or m.group(1) != expected:
                raise ValueError(f"{path}:{line}: field 'options' entry {raw!r} is not '{expected})...'.")
            options.append(m.group(2))
        if len(options) != len(raw_options) or not options:
            raise ValueError(f"{path}:{line}: field 'options' must hold 1-5 entries 'A)...'..'E)...'.")
        correct = loading.field(record, "correct", path, line).strip()
        if correct not in "ABCDE"[: len(options)] or len(correct) != 1:
            raise ValueError(f"{path}:{line}: field 'correct' is {correct!r}, not one of the option letters.")
        examples.append(loading.multiple_choice_example(
            f"aqua-test-{line - 1:03d}", f"{question} Answer Choices: {loading.format_options(options)}", options,
            "ABCDE".index(correct), path, line))
    return examples


gsm8k = loading.split_file_task(
    "gsm8k", "number", load_gsm8k,
    "GSM8K grade-school math: pool = train (7,473), eval = test (1,319).")


def svamp(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task:
    del pool_size
    return loading.eval_only_task("svamp", "number", lambda: load_svamp(data_dir), "gsm8k", seed=seed,
                                  eval_size=eval_size,
                                  description="SVAMP (1,000), evaluation only, prompted with the GSM8K exemplars.")


def aqua(data_dir=None, seed=0, pool_size=None, eval_size=None) -> Task:
    del pool_size
    return loading.eval_only_task(
        "aqua", "option", lambda: load_aqua(data_dir), "aqua", seed=seed, eval_size=eval_size,
        description="AQuA-RAT test (254), evaluation only, own 4-shot prompt, options (a)-(e).")
