"""Each stage's lineage (what its output is made from) and the guard every stage runs under in `lsi.main`.

`guarded(directory, lineage, restart)` takes the stage's lock, claims its directory for the lineage (keep, refuse or
replace; see `lsi.lineage`) and, when the stage completes, seals its manifest.json with the lineage, the code version
and its outputs' fingerprints. The `*_lineage` functions list each stage's inputs:

    sample   pool questions, sampling model, exemplars, prompt style, SampleStageConfig
    vote     the sample stage's manifest (checked against its shards), pool questions (checked against the pool
             the samples were drawn from), VoteStageConfig
    format   the vote stage's manifest, exemplars, prompt style, FormatStageConfig
    train    every format stage's manifest, starting model, prompt style, TrainConfig
    eval     model, the split's questions, exemplars, prompt style, EvalConfig
    screen / questions / exemplars   model, the questions they read, exemplars, prompt style, their config
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import Any, Iterable, Iterator, Mapping

from lsi import lineage as lineage_lib
from lsi.io_utils import as_path, write_json_atomic
from lsi.lineage import Lineage, LineageError
from lsi.stage_lock import stage_lock

PIPELINE = ("sample", "vote", "format", "train", "eval")  # each stage reads the one before it


@dataclasses.dataclass(frozen=True)
class Restart:
    """`--restart_stage=NAME`: NAME's outputs are replaced whatever their lineage, and the pipeline stages after it
    replace theirs where their lineage changed as a result (instead of refusing)."""

    stage: str | None = None

    def force(self, stage: str) -> bool:
        return stage == self.stage

    def replace_changed(self, stage: str) -> bool:
        return (self.stage in PIPELINE and stage in PIPELINE
                and PIPELINE.index(stage) > PIPELINE.index(self.stage))


def _json(value: Any) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value,
                                 default=str))


def sample_lineage(task: Any, model: str, prompter: Any, config: Any) -> Lineage:
    return Lineage("sample", {**_json(config), "task": task.name}, {
        "pool": lineage_lib.fingerprint_examples(task.load_pool()), "model": lineage_lib.fingerprint_model(model),
        "exemplars": lineage_lib.fingerprint_exemplars(task), "prompt_style": prompter.describe()})


def vote_lineage(task: Any, samples_dir: pathlib.Path, config: Any) -> Lineage:
    samples = lineage_lib.upstream_fingerprint(samples_dir, "sample")
    pool = lineage_lib.fingerprint_examples(task.load_pool())
    sampled = (lineage_lib.read_lineage(samples_dir) or {}).get("inputs", {}).get("pool")
    if sampled is not None and sampled != pool:
        raise LineageError(f"The pool of task {task.name} changed after {samples_dir} was sampled from it: its "
                           "samples would be voted under other questions. Rerun with --restart_stage=sample.")
    return Lineage("vote", {**_json(config), "task": task.name}, {"samples": samples, "pool": pool})


def format_lineage(task: Any, votes_dir: pathlib.Path, prompter: Any, config: Any) -> Lineage:
    return Lineage("format", {**_json(config), "task": task.name}, {
        "votes": lineage_lib.upstream_fingerprint(votes_dir, "vote"),
        "exemplars": lineage_lib.fingerprint_exemplars(task), "prompt_style": prompter.describe()})


def train_lineage(formats: Mapping[str, pathlib.Path], model: str, prompter: Any, config: Any) -> Lineage:
    return Lineage("train", _json(config), {
        "formats": {name: lineage_lib.upstream_fingerprint(d, "format") for name, d in sorted(formats.items())},
        "model": lineage_lib.fingerprint_model(model), "prompt_style": prompter.describe()})


def eval_lineage(task: Any, model: str, prompter: Any, config: Any, questions: Iterable[Any]) -> Lineage:
    return Lineage("eval", {**_json(config), "task": task.name}, {
        "model": lineage_lib.fingerprint_model(model), "questions": lineage_lib.fingerprint_examples(questions),
        "exemplars": lineage_lib.fingerprint_exemplars(task), "prompt_style": prompter.describe()})


def generation_lineage(stage: str, tasks: Iterable[Any], model: str, config: Any, styles: Any,
                       questions: Mapping[str, Iterable[Any]]) -> Lineage:
    """The screen, questions and exemplars stages: the base model on some tasks' questions."""
    tasks = list(tasks)
    return Lineage(stage, _json(config), {
        "model": lineage_lib.fingerprint_model(model), "prompt_style": styles,
        "questions": {name: lineage_lib.fingerprint_examples(qs) for name, qs in sorted(questions.items())},
        "exemplars": {t.name: lineage_lib.fingerprint_exemplars(t) for t in tasks}})


def seal(directory: pathlib.Path, outputs: Iterable[str] | None = None, provenance: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    """Adds the lineage and code version (and, when given, the outputs' fingerprints and `lsi.provenance`'s block) to
    the stage's manifest.json, writing one if the stage did not."""
    path = as_path(directory) / lineage_lib.MANIFEST_FILE
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest["lineage"] = lineage_lib.read_lineage(directory)
    manifest["code"] = lineage_lib.code_version()
    if outputs is not None:
        manifest["outputs"] = lineage_lib.output_fingerprints(directory, outputs)
    if provenance is not None:
        manifest["provenance"] = provenance
    write_json_atomic(path, manifest)
    return manifest


@contextlib.contextmanager
def guarded(directory: pathlib.Path, lineage: Lineage, restart: Restart = Restart(), writer: bool = True,
            wait_for_all_processes: Any = None) -> Iterator[str]:
    """Runs a stage's block with its directory locked and claimed for `lineage`; yields "new" or "same". Only the
    `writer` process (process 0) locks and claims; the others wait for it before they write, and every process waits
    at the end until the writer has sealed the output."""
    with stage_lock(directory, lineage.stage) if writer else contextlib.nullcontext():
        state = lineage_lib.claim(directory, lineage, restart.force(lineage.stage),
                                  restart.replace_changed(lineage.stage)) if writer else "same"
        if wait_for_all_processes is not None:
            wait_for_all_processes()
        yield state
        if wait_for_all_processes is not None:  # the next stage reads what the writer just sealed
            wait_for_all_processes()
