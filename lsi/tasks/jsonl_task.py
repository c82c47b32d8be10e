"""A task from the user's own JSONL file(s): name the file, the question and answer fields, and the answer type.

    get_task("jsonl", path="my.jsonl", question_field="q", answer_field="a", answer_type="number")

Splits:
- `pool_path` and/or `eval_path`: each file is one split (a task may have only one of them);
- or `path`: one file split by a stable hash of the question text, `eval_fraction` (default 0.2) of it to eval.
Fields may be dotted ("question.stem"). `id_field` names a unique id (default "<file stem>-<line>"). Every record
needs the question; eval records need the answer, pool records may omit it (the pool is unlabeled). Errors name the
file, the line and the field; duplicate ids are an error. Exemplars: get_task's `exemplar_file` (a prompts/ name or a
path), else a default per answer type (number: gsm8k, option: arc_challenge, nli: nli, yes_no: strategyqa, drop:
drop_nonfootball).
"""

from __future__ import annotations

import os
import pathlib

from lsi.tasks import loading
from lsi.tasks.base import ANSWER_TYPES, Example, Task

DEFAULT_EXEMPLARS = {
    "number": "gsm8k",
    "option": "arc_challenge",
    "nli": "nli",
    "yes_no": "strategyqa",
    "drop": "drop_nonfootball",
}


def load_jsonl_examples(path: str | os.PathLike, question_field: str, answer_field: str | None, answer_type: str,
                        id_field: str | None = None, answer_required: bool = True) -> list[Example]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL task file {path} does not exist.")
    examples = []
    for line, record in loading.read_jsonl(path):
        question = loading.field(record, question_field, path, line)
        if not isinstance(question, str):
            raise ValueError(f"{path}:{line}: field {question_field!r} is a {type(question).__name__}, not text.")
        answer = None
        if answer_field is not None:
            raw = loading.field(record, answer_field, path, line, default=None)
            if raw is None and answer_required:
                loading.field(record, answer_field, path, line)  # raises the file/line/field error
            if raw is not None:
                answer = loading.canonical_gold(raw, answer_type, path, line)
        example_id = (str(loading.field(record, id_field, path, line)) if id_field else f"{path.stem}-{line}")
        examples.append(Example(id=example_id, question=question.strip(), answer=answer,
                                metadata={"source": f"{path.name}:{line}"}))
    return examples


def jsonl(data_dir=None, seed=0, pool_size=None, eval_size=None, *, path=None, pool_path=None, eval_path=None,
          question_field: str = "question", answer_field: str | None = "answer", answer_type: str = "number",
          id_field: str | None = None, eval_fraction: float = 0.2, name: str | None = None) -> Task:
    del data_dir  # the user's files are named directly
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"jsonl: answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}.")
    if path is not None and (pool_path is not None or eval_path is not None):
        raise ValueError("jsonl: give either `path` (split by hash) or `pool_path`/`eval_path`, not both.")
    if path is None and pool_path is None and eval_path is None:
        raise ValueError("jsonl: name a file with `path=`, or `pool_path=` and/or `eval_path=`.")
    task_name = name or f"jsonl:{pathlib.Path(path or eval_path or pool_path).stem}"

    def read(file, answer_required):
        return lambda: load_jsonl_examples(file, question_field, answer_field, answer_type, id_field, answer_required)

    if path is not None:
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"jsonl: eval_fraction must be in (0, 1), got {eval_fraction}.")
        everything = loading.memoize_loader(read(path, True), str(path))

        def side(is_eval):
            return lambda: [e for e in everything()
                            if loading.in_eval_bucket(e.question, eval_fraction, task_name) == is_eval]

        load_pool, load_eval = side(False), side(True)
    else:
        no_file = "no file was given for it"
        load_pool = read(pool_path, False) if pool_path else loading.eval_only_pool(task_name, no_file)
        load_eval = read(eval_path, True) if eval_path else _no_eval(task_name)
    exemplars = loading.load_exemplars(DEFAULT_EXEMPLARS[answer_type])  # get_task's exemplar_file= replaces it
    return loading.make_task(
        task_name, answer_type, load_pool, load_eval, {"default": exemplars},
        seed=seed, pool_size=pool_size, eval_size=eval_size,
        description=f"JSONL task: {path or ''}{pool_path or ''} {eval_path or ''}".strip(),
    )


def _no_eval(task_name: str):
    def load() -> list[Example]:
        raise ValueError(f"Task {task_name} has no eval split: no eval_path was given.")

    return load
