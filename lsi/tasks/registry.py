"""Tasks by name: `get_task("gsm8k", data_dir=..., seed=..., pool_size=..., eval_size=..., exemplar_file=...)`.

Every factory takes `data_dir` (default $LSI_DATA_DIR), `seed` (default 0), `pool_size` and `eval_size` (file-based
tasks: a seeded subsample kept in file order, default all; procedural tasks: how many problems to take, default
2,000 / 500, plus a labelled `dev_size` split, default 200, and the `universe_size` they are drawn from), plus its own
options (drop: eval_fraction; reasoning-gym tasks: config; jsonl: path, pool_path,
eval_path, question_field, answer_field, answer_type, id_field, eval_fraction, name). `exemplar_file` replaces the
task's exemplars: a prompts/ name ("gsm8k") or a path to a JSON file of the same schema; a str replaces every
exemplar set of the task (DROP has two), a dict {set name: file} replaces the sets it names.

| name | answer type | pool | eval |
|---|---|---|---|
| gsm8k | number | train (7,473) | test (1,319) |
| svamp | number | (evaluation only) | SVAMP (1,000), GSM8K prompt |
| aqua | option | (evaluation only) | test (254) |
| drop | drop | dev, passages hashed to the pool: 4,549 (276 passages) | the rest: 4,987 (303 passages) |
| arc_challenge | option | dev (299) | test (1,172) |
| openbookqa | option | train (4,957) | test (500) |
| anli_r1/r2/r3 | nli | round dev (1,000 / 1,000 / 1,198) | round test (1,000 / 1,000 / 1,200) |
| mnli | nli | (evaluation only) | matched dev (9,815) |
| strategyqa | yes_no | train.json (2,061) | dev.json (229) |
| arithmetic, chain_sum, leg_counting, gsm_symbolic | number | reasoning-gym: 70% of one problem set (dev 10%) | 20% |
| jsonl | user's | user's file(s) | user's file(s) |
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lsi.tasks import drop, jsonl_task, math_word, multiple_choice, nli, procedural, strategyqa
from lsi.tasks.base import Task
from lsi.tasks.loading import load_exemplars

TaskFactory = Callable[..., Task]

_REGISTRY: dict[str, TaskFactory] = {}


def register_task(name: str, factory: TaskFactory, *, replace: bool = False) -> None:
    """Registers `factory(data_dir=None, seed=0, pool_size=None, eval_size=None, **options) -> Task` under `name`."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"Task {name!r} is already registered (pass replace=True to replace it).")
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str, /, *, exemplar_file: str | os.PathLike | dict[str, Any] | None = None, **kwargs: Any) -> Task:
    """The task `name` built with `kwargs` (see the module docstring); `exemplar_file` swaps its exemplars."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown task {name!r}; known tasks: {', '.join(task_names())}.")
    task = _REGISTRY[name](**kwargs)
    if exemplar_file is None:
        return task
    if isinstance(exemplar_file, dict):
        unknown = set(exemplar_file) - set(task.exemplar_sets)
        if unknown:
            raise KeyError(f"Task {name}: no exemplar set(s) {sorted(unknown)}; it has {sorted(task.exemplar_sets)}.")
        return task.with_exemplars({k: load_exemplars(str(v)) for k, v in exemplar_file.items()})
    exemplars = load_exemplars(str(exemplar_file))
    return task.with_exemplars({k: exemplars for k in task.exemplar_sets})


for _name, _factory in {
    "gsm8k": math_word.gsm8k,
    "svamp": math_word.svamp,
    "aqua": math_word.aqua,
    "drop": drop.drop,
    "arc_challenge": multiple_choice.arc_challenge,
    "openbookqa": multiple_choice.openbookqa,
    "anli_r1": nli.anli(1),
    "anli_r2": nli.anli(2),
    "anli_r3": nli.anli(3),
    "mnli": nli.mnli,
    "strategyqa": strategyqa.strategyqa,
    "arithmetic": procedural.procedural_factory("arithmetic"),
    "gsm_symbolic": procedural.procedural_factory("gsm_symbolic"),
    "chain_sum": procedural.procedural_factory("chain_sum"),
    "leg_counting": procedural.procedural_factory("leg_counting"),
    "jsonl": jsonl_task.jsonl,
}.items():
    register_task(_name, _factory)
