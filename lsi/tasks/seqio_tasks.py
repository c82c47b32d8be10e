"""A `Task` as a registered SeqIO Task: prompts in one of the paper's four formats as "inputs", the gold answer
sentence as "targets".

    name = register_seqio_task(get_task("gsm8k"), load_vocabulary("smollm2-135m-instruct"), fmt="few_shot_cot")
    seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="eval", shuffle=False)

Each example has "inputs" / "targets" (tokenized; the text is kept in "inputs_pretokenized" /
"targets_pretokenized"), "id" (the example id) and "answer" (the canonical gold, "" when there is none). Prompts
and targets are written in a prompt style (lsi.tasks.prompt_style; default: the vocabulary's own). Plain targets
start with a space, as text after "A:" does: " So the answer is 7." for DROP's CoT formats (its exemplars' answer
prefix), " The answer is X." otherwise, and end with EOS (seqio's append_eos_after_trim, which also trims to
`sequence_length` when one is given); chat targets are the assistant turn, ending with its end-of-turn token.
"" for an unlabeled example. Inputs start with BOS where the tokenizer adds it and get no EOS.
Splits "pool" and "eval" are read when a dataset is asked for, so an evaluation-only task registers fine and only
its "pool" dataset raises. Registering a name again replaces the earlier registration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import seqio
import tensorflow as tf

from lsi.seqio_vocab import as_seqio_vocabulary, prepend_bos_preprocessor
from lsi.tasks import answers
from lsi.tasks.base import Example, Task
from lsi.tasks.prompt_style import Prompter
from lsi.tasks.prompting import DIRECT_ANSWER_PREFIX, PromptFormat, plain_answer_sentence

SPLITS = ("pool", "eval")


def seqio_task_name(task: Task, fmt: PromptFormat | str) -> str:
    return "lsi_" + re.sub(r"[^\w.]", "_", f"{task.name}_{PromptFormat(fmt).value}")


def target_text(task: Task, example: Example, fmt: PromptFormat | str, prompter: Prompter = Prompter()) -> str:
    """'<prefix> <gold>.' in the prompter's answer position for a labeled example, '' otherwise."""
    if example.answer is None:
        return ""
    fmt = PromptFormat(fmt)
    prefix = task.exemplars_for(example).answer_prefix if fmt.is_cot else DIRECT_ANSWER_PREFIX
    try:
        sentence = answers.answer_sentence(example.answer, task.answer_type, prefix)
    except ValueError:  # a DROP gold kept as written (see lsi.tasks.drop.drop_gold)
        sentence = plain_answer_sentence(example.answer, prefix)
    return prompter.answer_turn(sentence)


def example_features(task: Task, examples: Sequence[Example], fmt: PromptFormat | str,
                     prompter: Prompter = Prompter()) -> dict[str, list[str]]:
    """Column-wise text features of `examples` in format `fmt` and the prompter's style."""
    fmt = PromptFormat(fmt)
    return {
        "inputs": [prompter.prompt(fmt, e.question, task.exemplars_for(e) if fmt.is_few_shot else None)
                   for e in examples],
        "targets": [target_text(task, e, fmt, prompter) for e in examples],
        "id": [e.id for e in examples],
        "answer": [e.answer or "" for e in examples],
    }


def register_seqio_task(task: Task, vocabulary: Any, fmt: PromptFormat | str = "few_shot_cot",
                        split: str | Sequence[str] = SPLITS, prompter: Prompter | None = None) -> str:
    """Registers `task` in format `fmt` as SeqIO Task `lsi_{task}_{fmt}` (replacing one of that name) with the
    splits `split` (one name or several; default pool and eval), and returns the name. `vocabulary`: an lsi.vocab
    vocabulary (`load_vocabulary`) or a seqio.Vocabulary."""
    fmt = PromptFormat(fmt)
    prompter = prompter or Prompter.for_vocabulary(vocabulary)
    splits = (split,) if isinstance(split, str) else tuple(split)
    unknown = set(splits) - set(SPLITS)
    if unknown or not splits:
        raise ValueError(f"split must name some of {SPLITS}, got {split!r}.")
    name = seqio_task_name(task, fmt)
    loaders = {"pool": task.load_pool, "eval": task.load_eval}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself when asked
        columns = example_features(task, loaders[split](), fmt, prompter)
        if not columns["id"]:
            raise ValueError(f"Task {task.name}: split {split!r} is empty.")
        return tf.data.Dataset.from_tensor_slices({k: tf.constant(v, dtype=tf.string) for k, v in columns.items()})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocabulary = as_seqio_vocabulary(vocabulary)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=splits),
        preprocessors=[seqio.preprocessors.tokenize, prepend_bos_preprocessor,
                       seqio.preprocessors.append_eos_after_trim],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=prompter.targets_get_eos),
        },
    )
    return name
