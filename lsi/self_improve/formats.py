"""Stage 3: every kept reasoning path becomes the paper's four training examples (PAPER.md section 3, Table 2).

The examples are written as TFRecord shards of `tf.train.Example`s with `inputs` and `targets` text (plus
`question_id`, `format`, `sample_index` for inspection, and `weight`, the example's weight in the loss, when
`example_weight` is not uniform) and registered as a SeqIO Task named after the run, so
pseudo-labelled data is just another Task; several tasks combine into one Mixture (the paper's multi-task model of
Table 4) with rates proportional to their example counts by default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Iterator, Sequence

from etils import epath

from lsi.io_utils import as_path, write_bytes_atomic
from lsi.records import PseudoLabel
from lsi.self_improve.manifest import MANIFEST_FILE, file_output, file_sha256, stage_manifest, write_manifest
from lsi.self_improve.voting import read_pseudo_labels
from lsi.tasks.base import Example, Task
from lsi.tasks.prompt_style import PLAIN, Prompter
from lsi.tasks.prompting import PromptFormat

FORMAT_PRESETS: dict[str, tuple[PromptFormat, ...]] = {
    "all": tuple(PromptFormat),  # the full method ("LMSI w/ CoT formats")
    "cot_free": (PromptFormat.FEW_SHOT_DIRECT, PromptFormat.ZERO_SHOT_DIRECT),  # "LMSI w/o CoT formats"
    "few_shot_cot_only": (PromptFormat.FEW_SHOT_COT,),  # "LMSI only few-shot CoT"
    "cot_only": (PromptFormat.FEW_SHOT_COT, PromptFormat.ZERO_SHOT_COT),  # the CoT half of the mixture
    # The formats that teach the model to reason without exemplars ("so that the model will learn to think on its
    # own"); a few-shot example costs ~8x the tokens of a zero-shot one, so a fixed token budget sees ~8x more.
    "zero_shot": (PromptFormat.ZERO_SHOT_COT, PromptFormat.ZERO_SHOT_DIRECT),
    "zero_shot_cot_only": (PromptFormat.ZERO_SHOT_COT,),
}
TABLE5_PRESETS = ("all", "cot_free", "few_shot_cot_only")  # the paper's Table 5 rows; the rest are ours
# How much each example counts in the training loss: 'uniform' (the paper: every kept path alike) or 'vote_share'
# (each path weighted by its question's vote share of all m samples, so a question voted 7/8 counts with weight
# 0.875 per path and a 2/8 plurality with 0.25; with more agreeing paths too, a question's total weight grows with
# the square of its share). An extension that uses the vote beyond the majority; not in the paper.
EXAMPLE_WEIGHTS = ("uniform", "vote_share")
SHARD_PATTERN = "examples-{index:05d}-of-{count:05d}.tfrecord"


@dataclasses.dataclass(frozen=True)
class FormatStageConfig:
    formats: str | tuple[str, ...] = "all"  # a preset name (Table 5 ablations) or format names
    num_shards: int = 4
    example_weight: str = "uniform"  # EXAMPLE_WEIGHTS

    def __post_init__(self) -> None:
        if self.example_weight not in EXAMPLE_WEIGHTS:
            raise ValueError(f"FormatStageConfig.example_weight must be one of {EXAMPLE_WEIGHTS}, got "
                             f"{self.example_weight!r}.")

    def resolved_formats(self) -> tuple[PromptFormat, ...]:
        if isinstance(self.formats, str):
            if self.formats not in FORMAT_PRESETS:
                raise ValueError(f"Unknown format preset {self.formats!r}; known: {sorted(FORMAT_PRESETS)}.")
            return FORMAT_PRESETS[self.formats]
        return tuple(PromptFormat(f) for f in self.formats)


def training_examples(task: Task, pseudo_labels: Sequence[PseudoLabel], formats: Sequence[PromptFormat],
                      prompter: Prompter = Prompter(), example_weight: str = "uniform") -> Iterator[dict[str, Any]]:
    """(inputs, targets) text pairs: for each question, each kept path, each format (paper order), written in the
    prompter's style; "weight" is the example's loss weight (None for 'uniform': no weight is written)."""
    for label in pseudo_labels:
        weight = float(label.vote_share) if example_weight == "vote_share" else None
        exemplars = task.exemplars_for(Example(label.question_id, label.question))
        prompts = {fmt: prompter.prompt(fmt, label.question, exemplars) for fmt in formats}
        for path in label.paths:
            for fmt in formats:
                yield {
                    "inputs": prompts[fmt],
                    "targets": prompter.target(fmt, path.text, label.answer, task.answer_type),
                    "question_id": label.question_id,
                    "format": fmt.value,
                    "sample_index": path.sample_index,
                    "weight": weight,
                }


def _tf_example(record: dict[str, Any]) -> bytes:
    import tensorflow as tf  # noqa: PLC0415 - heavy; only the format stage and SeqIO need it

    def text(value: str) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    features = {k: text(record[k]) for k in ("inputs", "targets", "question_id", "format")}
    features["sample_index"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[record["sample_index"]]))
    if record.get("weight") is not None:  # uniform examples carry none (SeqIO reads a missing weight as 1.0)
        features["weight"] = tf.train.Feature(float_list=tf.train.FloatList(value=[record["weight"]]))
    # Map fields (the feature map) serialize in a per-process order unless asked not to: the same examples must give
    # the same bytes in every process and run, so a rerun's shards and their hashes match.
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def _write_tfrecord_atomic(path: epath.Path, serialized: Sequence[bytes]) -> None:
    """TFRecord framing by TF's own writer into a local scratch file, then one atomic write through epath: the run
    folder may be on an object store, which TF could write but a test's stand-in for one could not see."""
    import tensorflow as tf  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="lsi-tfrecord-") as scratch:
        local = os.path.join(scratch, path.name)
        with tf.io.TFRecordWriter(local) as writer:
            for item in serialized:
                writer.write(item)
        with open(local, "rb") as f:
            write_bytes_atomic(path, f.read())


def _remove_stale_shards(output_dir: epath.Path, keep: set[str]) -> None:
    """Deletes shards (and temporaries of killed writes) that the new set does not name: a run with another
    num_shards writes other file names, and training reads every examples-*.tfrecord of the folder."""
    for path in [*output_dir.glob("examples-*.tfrecord"), *output_dir.glob(".examples-*.tfrecord*.tmp")]:
        if path.name not in keep:
            path.unlink(missing_ok=True)


def run_format_stage(task: Task, pseudo_labels_path: str | os.PathLike, output_dir: str | os.PathLike,
                     config: FormatStageConfig = FormatStageConfig(), prompter: Prompter = Prompter()
                     ) -> dict[str, Any]:
    """Writes the training examples as TFRecord shards (round-robin by example) and a manifest with counts; the
    examples are written in `prompter`'s style (plain unless given), which the manifest records. The shards replace
    the folder's previous ones as a set (none of another num_shards is left) and are the same bytes in every run."""
    start = time.perf_counter()
    output_dir = as_path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    formats = config.resolved_formats()
    labels = read_pseudo_labels(pseudo_labels_path)
    shards: list[list[bytes]] = [[] for _ in range(config.num_shards)]
    per_format = {f.value: 0 for f in formats}
    count = 0
    for count, record in enumerate(training_examples(task, labels, formats, prompter, config.example_weight),
                                   start=1):
        shards[(count - 1) % config.num_shards].append(_tf_example(record))
        per_format[record["format"]] += 1
    outputs = {}
    for index, serialized in enumerate(shards):
        path = output_dir / SHARD_PATTERN.format(index=index, count=config.num_shards)
        _write_tfrecord_atomic(path, serialized)
        outputs[path.name] = file_output(path, examples=len(serialized))
    # The new set is complete before the old one goes, and the manifest, written last, names exactly what is left.
    _remove_stale_shards(output_dir, set(outputs))
    return write_manifest(output_dir, stage_manifest(
        "format", {"formats": [f.value for f in formats], "num_shards": config.num_shards,
                   "example_weight": config.example_weight, "task": task.name, "answer_type": task.answer_type,
                   **prompter.describe()},
        inputs={"pseudo_labels": str(pseudo_labels_path), "sha256": file_sha256(pseudo_labels_path)},
        outputs=outputs,
        counts={"questions": len(labels), "kept_paths": sum(len(r.paths) for r in labels), "examples": count,
                "examples_per_format": per_format},
        seconds=time.perf_counter() - start))


def register_formatted_task(name: str, output_dir: str | os.PathLike, vocabulary: Any,
                            prompt_style: str | None = None) -> str:
    """Registers the format stage's TFRecords as SeqIO Task `name` (split "train"); re-registering replaces it.

    Inputs start with BOS where the tokenizer adds it. Targets end with EOS in plain style, while chat-style targets
    already end with the assistant turn's end-of-turn token. The style is the stage manifest's unless given (shards
    written by other tools, without a manifest, must name it)."""
    import seqio  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from lsi.seqio_vocab import as_seqio_vocabulary, prepend_bos_preprocessor  # noqa: PLC0415

    output_dir = as_path(output_dir)
    # The shards as they are now, listed, not a glob: SeqIO caches what a pattern matched, so a task re-registered
    # after a format restart (other shard count, same process) would read the old names. TF reads them itself
    # (gs:// natively), as os.fspath gives them: "gs://bucket/...", never pathlib's "gs:/bucket/...".
    shards = sorted(os.fspath(path) for path in output_dir.glob("examples-*.tfrecord"))
    if not shards:
        raise FileNotFoundError(f"{output_dir} has no examples-*.tfrecord shards: run the format stage first.")
    if prompt_style is None:
        manifest_path = output_dir / MANIFEST_FILE
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} does not exist, so the prompt style of the examples is unknown: "
                                    "run the format stage, or pass prompt_style.")
        prompt_style = json.loads(manifest_path.read_text())["config"].get("prompt_style", PLAIN)
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocabulary = as_seqio_vocabulary(vocabulary)
    seqio.TaskRegistry.add(
        name,
        source=seqio.TFExampleDataSource(
            split_to_filepattern={"train": shards},
            feature_description={"inputs": tf.io.FixedLenFeature([], tf.string),
                                 "targets": tf.io.FixedLenFeature([], tf.string),
                                 "weight": tf.io.FixedLenFeature([], tf.float32, default_value=1.0)},
        ),
        preprocessors=[seqio.preprocessors.tokenize, prepend_bos_preprocessor,
                       seqio.preprocessors.append_eos_after_trim],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=prompt_style == PLAIN),
        },
    )
    return name


def register_mixture(name: str, tasks: dict[str, str | os.PathLike], rates: dict[str, float] | None = None) -> str:
    """A SeqIO Mixture over registered formatted tasks ({task name: its format-stage output dir}); by default each
    task's rate is its number of examples (from its manifest), i.e. examples are sampled uniformly.

    The trainer (`lsi.training.data`) reads rates proportional to the tasks' sizes as the union of their examples,
    each once per epoch; other rates draw each example's task with probability rate / sum(rates). Every task needs
    a rate, a finite number > 0 (an error names the task otherwise; so does a task whose format stage wrote nothing,
    by default)."""
    import seqio  # noqa: PLC0415

    from lsi.training.data import check_rates  # noqa: PLC0415

    if rates is None:
        rates = {task: float(json.loads((as_path(d) / MANIFEST_FILE).read_text())["counts"]["examples"])
                 for task, d in tasks.items()}
    if missing := [task for task in tasks if task not in rates]:
        raise ValueError(f"Mixture {name!r}: no rate for task(s) {missing}.")
    rates = check_rates({task: rates[task] for task in tasks})
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(task, rates[task]) for task in tasks])
    return name
