"""Datasets, prompts and answers of the paper's tasks and of procedural reasoning-gym tasks.

`get_task(name, **kwargs)` builds a `Task` (lsi.tasks.registry lists the names and options); `build_prompt` writes
one of the paper's four prompt formats. SeqIO registration lives in lsi.tasks.seqio_tasks (it imports TensorFlow).
"""

from lsi.tasks.base import Example, Exemplar, ExemplarSet, Task
from lsi.tasks.prompting import PromptFormat, build_prompt, build_target
from lsi.tasks.registry import get_task, register_task, task_names

__all__ = [
    "Example",
    "Exemplar",
    "ExemplarSet",
    "PromptFormat",
    "Task",
    "build_prompt",
    "build_target",
    "get_task",
    "register_task",
    "task_names",
]
