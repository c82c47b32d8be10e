r"""Entry point: `python -m lsi.main --gin_file=... --gin_param=... --stage=...` (absl flags + gin, like t5x).

Stages read and write files under the experiment's `run_dir`, so each can be rerun, resumed and inspected. Round r
of self-improvement lives in `round_<r>/`; `--round` picks it for the single stages:

    screen        screen/<task>/<style>/t<T>/ the base model on each task's labelled dev split for every prompt style and
                                                temperature of the grid; results.json + sc_minus_greedy.png (lsi.screen)
    sample        round_<r>/<task>/samples/   samples-*.jsonl + manifest.json     (resumable by shard)
    vote          round_<r>/<task>/votes/     pseudo_labels.jsonl + manifest.json
    format        round_<r>/<task>/formats/   examples-*.tfrecord + manifest.json (a SeqIO task per task)
    train         round_<r>/train/            Orbax checkpoints, metrics.jsonl, hf/ (resumable; all train tasks
                                                as one SeqIO mixture)
    eval          eval/<tag>/<task>/          <mode>/predictions.jsonl + metrics.json (complete modes are kept)
    self_improve  all of the above: eval "base", then for r = 1..num_rounds: sample (with round r-1's model),
                  vote, format, train (from round r-1's model), eval "round_<r>"; then summary.json and the report
    report        report/report.md + PNG plots (lsi.report)
    questions     questions/                  generated_pool.jsonl + manifest.json: new questions the base model
                                                writes from `question_task`'s pool (Table 6; the `jsonl` task reads them)
    exemplars     exemplars/                  generated_NN.json + manifest.json: few-shot CoT templates from greedy
                                                zero-shot rationales (Figure 3; `generated_exemplars` prompts with them)

Rerunning a killed command resumes it: complete shards, eval modes and checkpoints are kept. Example:

    python -m lsi.main --gin_file=gin_configs/runs/quickstart.gin --stage=self_improve \
        --gin_param="lsi.Experiment.run_dir='runs/quickstart'"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import time
from typing import Any, Sequence

import gin
import jax

from lsi import partitioning
from lsi.batch_decoding import LoadedModel
from lsi.decoding import TransformerLM
from lsi.eval_summaries import write_eval_summaries
from lsi.evaluation import EvalConfig, evaluate, format_summary, split_examples
from lsi.io_utils import write_json_atomic, write_text_atomic
from lsi.native_logs import quiet_tensorflow_import
from lsi.partitioning import MeshConfig
from lsi.provenance import provenance
from lsi.records import Prediction, PseudoLabel
from lsi.run_layout import RunLayout, round_tag
from lsi.sampling_methods import SAMPLING_METHODS, with_temperature
from lsi.screen import ScreenConfig
from lsi.self_improve.formats import FormatStageConfig, register_formatted_task, register_mixture, run_format_stage
from lsi.self_improve.manifest import MANIFEST_FILE, stage_manifest, write_manifest
from lsi.self_improve.question_gen import (
    PromptGenConfig,
    QuestionGenConfig,
    generate_exemplars,
    generate_questions,
    rotating_task,
)
from lsi.self_improve.sampling import SampleStageConfig, run_sample_stage
from lsi.self_improve.voting import VoteStageConfig, run_vote_stage
from lsi.stage_lineage import (
    Restart,
    eval_lineage,
    format_lineage,
    generation_lineage,
    guarded,
    sample_lineage,
    seal,
    train_lineage,
    vote_lineage,
)
from lsi.tasks.prompt_style import STYLES, Prompter
from lsi.training.lora import LoraConfig
from lsi.training.optimizers import OptimizerConfig
from lsi.training.trainer import TrainConfig

log = logging.getLogger(__name__)

STAGES = ("screen", "questions", "exemplars", "sample", "vote", "format", "train", "eval", "self_improve", "report")

# The gin-configurable version of each config class (lsi.SampleStageConfig, ..., lsi.Temperature).
_CONFIGURABLE = {cls: gin.external_configurable(cls, module="lsi") for cls in (
    SampleStageConfig, VoteStageConfig, FormatStageConfig, EvalConfig, MeshConfig, TrainConfig, OptimizerConfig,
    QuestionGenConfig, PromptGenConfig, ScreenConfig, LoraConfig, *SAMPLING_METHODS)}


def _configured(cls: type) -> Any:
    """An `Experiment` field whose default takes the gin bindings of `cls`: `lsi.ScreenConfig.dev_size = 100` applies
    without also binding `lsi.Experiment.screen = @lsi.ScreenConfig()` (with a plain default it was silently
    ignored)."""
    return dataclasses.field(default_factory=lambda: _CONFIGURABLE[cls]())


@gin.configurable(module="lsi")
@dataclasses.dataclass
class Experiment:
    """Everything a run needs; bound from gin files (see gin_configs/runs/)."""

    run_dir: str = gin.REQUIRED
    model: str = "smollm2-135m-instruct"  # a packaged model name, a HF directory or a .gguf file
    teacher: str | None = None  # Table 7: round 1 samples with this model; `model` is fine-tuned on its data
    task: str = "arithmetic"
    task_kwargs: dict = dataclasses.field(default_factory=dict)  # for `task` only
    train_tasks: tuple[str, ...] = ()  # () = (task,); several are sampled separately and trained as one mixture
    eval_tasks: tuple[str, ...] = ()  # () = the train tasks; list out-of-domain tasks here (Table 4)
    num_rounds: int = 1
    eval_before: bool = True  # self_improve evaluates the base model first (eval tag "base")
    sweep_temperatures: tuple[float, ...] = ()  # Figure 4: self-consistency at these T, before and after
    distributed: bool = False  # jax.distributed.initialize() first (multi-host pods, multi-process runs)
    # Where auto-detection does not apply (CPU processes, a bare GPU cluster): the coordinator "host:port", the
    # number of processes and this process's id. None lets JAX detect them (TPU pods, SLURM, Open MPI).
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    mesh: MeshConfig = _configured(MeshConfig)
    sample: SampleStageConfig = _configured(SampleStageConfig)
    vote: VoteStageConfig = _configured(VoteStageConfig)
    format: FormatStageConfig = _configured(FormatStageConfig)
    train: TrainConfig = _configured(TrainConfig)
    eval: EvalConfig = _configured(EvalConfig)
    # Table 6: the `questions` stage writes questions seeded by this task's pool (None: `task`).
    question_task: str | None = None
    questions: QuestionGenConfig = _configured(QuestionGenConfig)
    # Figure 3: the `exemplars` stage writes templates; with `generated_exemplars`, `task` is prompted with them,
    # each question getting one template by a stable hash of its id (the paper rotates 20 templates of 4 shots).
    exemplars: PromptGenConfig = _configured(PromptGenConfig)
    generated_exemplars: bool = False
    # Sampling decodes layer by layer (faster steps for SmolLM2); False runs the scanned decode, which compiles
    # several times faster, and for deep, narrow models also samples faster (see `lsi.decoding.TransformerLM`).
    layerwise_decode: bool = True
    # The screen stage's grid (tasks x prompt styles x temperatures), measured on the dev split before training.
    screen: ScreenConfig = _configured(ScreenConfig)
    # How every stage writes prompts and training examples (lsi.tasks.prompt_style): 'chat' renders the model's own
    # chat template, 'plain' the paper's few-shot text, 'auto' is 'chat' for a checkpoint that carries a template.
    prompt_style: str = "auto"

    def __post_init__(self) -> None:
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}.")
        if self.prompt_style not in STYLES:
            raise ValueError(f"prompt_style must be one of {STYLES}, got {self.prompt_style!r}.")
        self._tasks: dict[tuple[str, str], Any] = {}  # (name, "base" or "generated") -> task
        self.restart = Restart()  # --restart_stage; set by main(), not by gin
        self._loaded: tuple[str, LoadedModel] | None = None

    @property
    def layout(self) -> RunLayout:
        """Where every stage of this run writes."""
        return RunLayout(self.run_dir)

    @property
    def training_tasks(self) -> tuple[str, ...]:
        return tuple(self.train_tasks) or (self.task,)

    @property
    def evaluation_tasks(self) -> tuple[str, ...]:
        return tuple(self.eval_tasks) or self.training_tasks

    def stage_dir(self, round_index: int, task: str, stage: str) -> pathlib.Path:
        """The folder of a round's data stage for the training task called `task`."""
        return self.layout.stage_dir(round_index, self.task_obj(task).name, stage)

    def sampling_model(self, round_index: int) -> str:
        """Round 1 samples with the teacher (distillation) or the base model; round r with round r-1's model."""
        if round_index == 1:
            return self.teacher or self.model
        return str(self.layout.trained_model(round_index - 1))

    def starting_model(self, round_index: int) -> str:
        """Round r fine-tunes round r-1's model (round 1: the base model)."""
        return self.model if round_index == 1 else str(self.layout.trained_model(round_index - 1))

    def formatted_task_name(self, round_index: int, task: str) -> str:
        # SeqIO task names allow only [\w.:#]: a run folder called "lr-3e-5" must not fail at the train stage.
        name = f"lsi_{self.layout.root.name}_round{round_index}_{self.task_obj(task).name}"
        return re.sub(r"[^\w.:#]", "_", name)

    def base_task(self, name: str | None = None) -> Any:
        """The registered task called `name` (default: `task`), built once; `task_kwargs` apply to `task` only."""
        from lsi.tasks import get_task  # noqa: PLC0415

        name = name or self.task
        key = (name, "base")
        if key not in self._tasks:
            self._tasks[key] = get_task(name, **(self.task_kwargs if name == self.task else {}))
        return self._tasks[key]

    def task_obj(self, name: str | None = None) -> Any:
        """`base_task(name)`, prompted with the exemplars stage's templates when `generated_exemplars` is set."""
        name = name or self.task
        if name != self.task or not self.generated_exemplars:
            return self.base_task(name)
        if (name, "generated") not in self._tasks:
            files = sorted(self.layout.exemplars_dir.glob("generated_*.json"))
            if not files:
                raise FileNotFoundError(f"generated_exemplars is set but {self.layout.exemplars_dir} has no "
                                        f"generated_*.json: run --stage=exemplars first.")
            self._tasks[(name, "generated")] = rotating_task(self.base_task(name), files)
        return self._tasks[(name, "generated")]

    def vocabulary(self, checkpoint: str) -> Any:
        """A checkpoint's vocabulary alone (cached by path), without loading its weights."""
        from lsi.vocab import load_vocabulary  # noqa: PLC0415

        return load_vocabulary(checkpoint)

    def prompter(self, checkpoint: str) -> Prompter:
        """How prompts for `checkpoint` are written: `prompt_style`, with 'auto' resolved by the checkpoint's own
        tokenizer (chat when it carries a template)."""
        return Prompter.for_vocabulary(self.vocabulary(checkpoint), self.prompt_style, source=str(checkpoint))

    def loaded_model(self, checkpoint: str) -> LoadedModel:
        """A checkpoint's TransformerLM, params placed on the mesh, vocabulary and context length. Only the last one
        loaded is kept: a self-improvement run moves from the base model to each round's model and never back."""
        from lsi.checkpoints import load_checkpoint  # noqa: PLC0415
        from lsi.models import param_logical_axes  # noqa: PLC0415

        if self._loaded is None or self._loaded[0] != str(checkpoint):
            self._loaded = None  # release the previous model before loading the next
            cfg, params = load_checkpoint(checkpoint)
            # Sampling and evaluation are split by question across processes, so each process's model lives on its
            # own devices; only training spans every process's devices.
            mesh = partitioning.make_mesh(self.mesh, devices=jax.local_devices())
            params = partitioning.shard_tree(params, param_logical_axes(cfg), mesh)
            self._loaded = (str(checkpoint), LoadedModel(TransformerLM(cfg, self.layerwise_decode), params,
                                                         self.vocabulary(checkpoint), cfg.max_length, mesh))
        return self._loaded[1]


def resolve_eval_model(experiment: Experiment, eval_model: str, round_index: int) -> str:
    """--eval_model: "base", "trained" (round `round_index`'s fine-tuned model) or a checkpoint path/name."""
    if eval_model == "base":
        return experiment.model
    if eval_model == "trained":
        return str(experiment.layout.trained_model(round_index))
    return eval_model


def _is_writer() -> bool:
    return jax.process_index() == 0


def _guarded(experiment: Experiment, directory: pathlib.Path, lineage: Any) -> Any:
    """The stage guard (lock, lineage claim) of `directory`; process 0 claims, the others wait for it."""
    return guarded(directory, lineage, experiment.restart, writer=_is_writer(),
                   wait_for_all_processes=lambda: _wait_for_all_processes(f"claim {directory}"))


def run_eval(experiment: Experiment, tag: str, checkpoint: str, config: EvalConfig | None = None
             ) -> dict[str, Any]:
    """Evaluates `checkpoint` on every eval task into eval/<tag>/<task>/; returns {task: metrics}."""
    config = config or experiment.eval
    prompter = experiment.prompter(checkpoint)
    results = {}
    for name in experiment.evaluation_tasks:
        task = experiment.task_obj(name)
        directory = experiment.layout.eval_dir(tag, task.name)
        examples = split_examples(task, config.split)
        with _guarded(experiment, directory, eval_lineage(task, checkpoint, prompter, config, examples)):
            origin = provenance(checkpoint, prompter)
            results[task.name] = evaluate(task, experiment.loaded_model(checkpoint), config, directory,
                                          examples=examples, prompter=prompter, provenance=origin)
            if _is_writer():
                seal(directory, ["metrics.json", *(f"{m}/{Prediction.FILE}" for m in results[task.name]["modes"])],
                     provenance=origin)
        print(f"[{tag}] {format_summary(results[task.name])}", flush=True)
    if _is_writer():
        write_eval_summaries(experiment.layout, tag, results)
    return results


def run_sample(experiment: Experiment, round_index: int) -> dict[str, Any]:
    model = experiment.sampling_model(round_index)
    prompter = experiment.prompter(model)
    results = {}
    for name in experiment.training_tasks:
        task, directory = experiment.task_obj(name), experiment.stage_dir(round_index, name, "samples")
        with _guarded(experiment, directory, sample_lineage(task, model, prompter, experiment.sample)):
            results[name] = run_sample_stage(
                task, experiment.loaded_model(model), experiment.sample, directory, model_id=model, prompter=prompter,
                process_index=jax.process_index(), process_count=jax.process_count(),
                wait_for_all_processes=lambda: _wait_for_all_processes("sample"))
            if _is_writer():
                results[name] = seal(directory, provenance=provenance(model, prompter))
    return results


def run_vote(experiment: Experiment, round_index: int) -> dict[str, Any]:
    results = {}
    for name in experiment.training_tasks:
        task = experiment.task_obj(name)
        samples, directory = (experiment.stage_dir(round_index, name, s) for s in ("samples", "votes"))
        with _guarded(experiment, directory, vote_lineage(task, samples, experiment.vote)):
            if _is_writer():
                run_vote_stage(task, samples, directory, experiment.vote)
                model = experiment.sampling_model(round_index)
                results[name] = seal(directory, provenance=provenance(model, experiment.prompter(model)))
    return results


def run_format(experiment: Experiment, round_index: int) -> dict[str, Any]:
    # Written for the model that trains on them, in its own style.
    prompter = experiment.prompter(experiment.starting_model(round_index))
    results = {}
    for name in experiment.training_tasks:
        task = experiment.task_obj(name)
        votes, directory = (experiment.stage_dir(round_index, name, s) for s in ("votes", "formats"))
        with _guarded(experiment, directory, format_lineage(task, votes, prompter, experiment.format)):
            if _is_writer():
                run_format_stage(task, votes / PseudoLabel.FILE, directory, experiment.format, prompter)
                results[name] = seal(directory, provenance=provenance(experiment.starting_model(round_index), prompter))
    return results


def run_stage(experiment: Experiment, stage: str, eval_tag: str | None = None, eval_model: str = "base",
              round_index: int = 1) -> dict[str, Any]:
    """Runs one stage and returns its manifest or metrics (keyed by task where a stage covers several)."""
    runners = {"screen": run_screen_stage, "questions": run_questions, "exemplars": run_exemplars,
               "self_improve": self_improve, "sample": lambda e: run_sample(e, round_index),
               "vote": lambda e: run_vote(e, round_index), "format": lambda e: run_format(e, round_index),
               "train": lambda e: run_train(e, round_index)}
    if stage in runners:
        return runners[stage](experiment)
    if stage == "eval":
        checkpoint = resolve_eval_model(experiment, eval_model, round_index)
        tag = eval_tag or round_tag(0 if eval_model == "base" else round_index)
        return run_eval(experiment, tag, checkpoint)
    if stage == "report":
        from lsi.report import write_report  # noqa: PLC0415

        return {"report": str(write_report(experiment.layout.root))}
    raise ValueError(f"Unknown stage {stage!r}; known: {', '.join(STAGES)}.")


def _kept_manifest(directory: pathlib.Path, state: str, complete: bool) -> dict[str, Any] | None:
    """The manifest of a generation stage that already completed with this lineage, else None."""
    if state != "same" or not complete or not (directory / MANIFEST_FILE).exists():
        return None
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    print(f"[{manifest.get('stage', directory.name)}] complete in {directory}; kept.", flush=True)
    return manifest


def run_screen_stage(experiment: Experiment) -> dict[str, Any]:
    """The base model on the dev split of every screened task, for every prompt style and temperature of the grid,
    into run_dir/screen/ (results.json, sc_minus_greedy.png); prints the cells, best first. Each cell is guarded
    like an eval folder, so a grid that grows keeps the cells it already has."""
    from lsi.screen import evaluate_cell, format_screen, run_screen  # noqa: PLC0415

    config = experiment.screen
    vocab = experiment.vocabulary(experiment.model)
    prompters = {style: Prompter.for_vocabulary(vocab, style, source=experiment.model) for style in config.styles}
    tasks = [experiment.task_obj(name) for name in (config.tasks or (experiment.task,))]

    def sample_cell(task: Any, style: str, temperature: float, examples: list, directory: pathlib.Path) -> Any:
        cell_config = config.eval_config(temperature)
        lineage = eval_lineage(task, experiment.model, prompters[style], cell_config, examples)
        with _guarded(experiment, directory, dataclasses.replace(lineage, stage="screen")):
            result = evaluate_cell(experiment.loaded_model(experiment.model), config, prompters.__getitem__)(
                task, style, temperature, examples, directory)
            if _is_writer():
                seal(directory, ["metrics.json", *(f"{m}/{Prediction.FILE}" for m in result["modes"])],
                     provenance=provenance(experiment.model, prompters[style]))
        return result

    results = run_screen(tasks, config, experiment.layout.screen_dir, sample_cell)
    print(format_screen(results), flush=True)
    return results


def _generation_guard(experiment: Experiment, stage: str, seed_task: Any, config: Any) -> Any:
    questions = {seed_task.name: seed_task.load_pool()}
    style = experiment.prompter(experiment.model).describe()
    lineage = generation_lineage(stage, [seed_task], experiment.model, config, style, questions)
    return _guarded(experiment, experiment.layout.root / stage, lineage)


def run_questions(experiment: Experiment) -> dict[str, Any]:
    """Self-generated questions (Table 6) by the base model into run_dir/questions/generated_pool.jsonl."""
    directory = experiment.layout.questions_dir
    prompter = experiment.prompter(experiment.model)
    seed_task = experiment.task_obj(experiment.question_task or experiment.task)
    with _generation_guard(experiment, "questions", seed_task, experiment.questions) as state:
        done = _kept_manifest(directory, state, (directory / "generated_pool.jsonl").exists())
        if done is not None:
            return done
        manifest = generate_questions(seed_task, experiment.loaded_model(experiment.model), experiment.questions,
                                      directory, prompter=prompter)
        manifest = seal(directory, provenance=provenance(experiment.model, prompter))
    counts = manifest["counts"]
    print(f"[questions] {counts['kept']} kept of {counts['generated']} generated "
          f"({counts['candidates']} new) -> {directory / 'generated_pool.jsonl'}", flush=True)
    return manifest


def run_exemplars(experiment: Experiment) -> dict[str, Any]:
    """Self-generated few-shot CoT templates (Figure 3) by the base model into run_dir/exemplars/."""
    directory = experiment.layout.exemplars_dir
    prompter = experiment.prompter(experiment.model)
    with _generation_guard(experiment, "exemplars", experiment.base_task(), experiment.exemplars) as state:
        complete = len(list(directory.glob("generated_*.json"))) == experiment.exemplars.templates
        done = _kept_manifest(directory, state, complete)
        if done is not None:
            return done
        # The templates come from the task's own pool questions, asked without any exemplars of their own.
        paths = generate_exemplars(experiment.base_task(), experiment.loaded_model(experiment.model),
                                   experiment.exemplars, directory, prompter=prompter)
        manifest = seal(directory, provenance=provenance(experiment.model, prompter))
    print(f"[exemplars] {len(paths)} templates of {experiment.exemplars.shots} -> {directory}", flush=True)
    return manifest


def _wait_for_all_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


def _train_data(experiment: Experiment, round_index: int, vocab: Any) -> tuple[str, dict[str, pathlib.Path]]:
    """The SeqIO task (or mixture of tasks) of round r's formatted data, and each train task's format folder."""
    formats = {experiment.formatted_task_name(round_index, name): experiment.stage_dir(round_index, name, "formats")
               for name in experiment.training_tasks}
    for name, directory in formats.items():
        register_formatted_task(name, directory, vocab)
    if len(formats) == 1:
        return next(iter(formats)), formats
    return register_mixture(f"lsi_{experiment.layout.root.name}_round{round_index}_mixture", formats), formats


def run_train(experiment: Experiment, round_index: int) -> dict[str, Any]:
    """Fine-tunes round r's starting model on the formatted data of every train task (one mixture if several)."""
    from lsi.training.trainer import finetune  # noqa: PLC0415

    began, start = time.perf_counter(), experiment.starting_model(round_index)
    vocab = experiment.vocabulary(start)
    prompter = experiment.prompter(start)
    train_dir = experiment.layout.train_dir(round_index)
    data_name, _ = _train_data(experiment, round_index, vocab)
    by_task = {name: experiment.stage_dir(round_index, name, "formats") for name in experiment.training_tasks}
    with _guarded(experiment, train_dir, train_lineage(by_task, start, prompter, experiment.train)):
        previous = _read_json(train_dir / MANIFEST_FILE)
        result = finetune(experiment.train, start, data_name, train_dir, vocab,
                          mesh=partitioning.make_mesh(experiment.mesh), stop_ids=prompter.eos_ids)
        # A rerun of a finished round trains nothing: it keeps the metrics of the run that trained.
        result["final_metrics"] = (result["final_metrics"] or previous.get("final_metrics")
                                   or _last_logged_metrics(train_dir))
        if _is_writer():
            write_manifest(train_dir, stage_manifest(
                "train", {**json.loads(json.dumps(dataclasses.asdict(experiment.train), default=str)),
                          **prompter.describe()},
                inputs={"model": str(start), "data": data_name},
                counts={"steps": result["steps"], "data": result["data"]}, final_metrics=result["final_metrics"],
                seconds=time.perf_counter() - began))
            seal(train_dir, ["hf"], provenance=provenance(start, prompter))
    return result


def _last_logged_metrics(train_dir: pathlib.Path) -> dict[str, Any] | None:
    """The last record of metrics.jsonl: the final metrics of a run killed after its last step was logged."""
    from lsi.training.trainer import complete_lines  # noqa: PLC0415

    path = train_dir / "metrics.jsonl"
    lines = complete_lines(path) if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _temperature_tag(tag: str, temperature: float) -> str:
    return f"{tag}_t{temperature:g}"


def self_improve(experiment: Experiment) -> dict[str, Any]:
    """The whole method: evaluate, then `num_rounds` of sample -> vote -> format -> train -> evaluate; a summary of
    before/after accuracy in summary.json and the report. Every step keeps complete work, so a rerun resumes."""
    start = time.perf_counter()
    summary: dict[str, Any] = {"rounds": {}, "eval": {}}
    sweep_config = dataclasses.replace(experiment.eval, modes=("self_consistency",))

    def evaluate_tag(tag: str, checkpoint: str) -> None:
        summary["eval"][tag] = _accuracies(run_eval(experiment, tag, checkpoint))
        for temperature in experiment.sweep_temperatures:
            sweep_tag = _temperature_tag(tag, temperature)
            summary["eval"][sweep_tag] = _accuracies(run_eval(
                experiment, sweep_tag, checkpoint,
                dataclasses.replace(sweep_config, method=with_temperature(sweep_config.method, temperature))))

    if experiment.eval_before:
        evaluate_tag(round_tag(0), experiment.model)
    for round_index in range(1, experiment.num_rounds + 1):
        counts: dict[str, Any] = {}
        for stage in ("sample", "vote", "format"):
            counts[stage] = {task: result.get("counts") for task, result in
                             run_stage(experiment, stage, round_index=round_index).items()}
        trained = run_train(experiment, round_index)
        counts["train"] = {"steps": trained["steps"], "final_metrics": trained["final_metrics"]}
        summary["rounds"][str(round_index)] = counts
        evaluate_tag(round_tag(round_index), str(experiment.layout.trained_model(round_index)))
    # Wall time of this invocation: a resumed run counts only the work it did.
    summary["seconds"] = time.perf_counter() - start
    write_json_atomic(experiment.layout.summary, summary)
    from lsi.report import format_before_after, write_report  # noqa: PLC0415

    summary["report"] = str(write_report(experiment.layout.root))
    print(format_before_after(experiment.layout.root), flush=True)
    print(f"Report: {summary['report']}\nWall time: {summary['seconds'] / 60:.1f} min", flush=True)
    return summary


def _accuracies(results: dict[str, Any]) -> dict[str, Any]:
    return {task: {mode: result["accuracy"] for mode, result in metrics["modes"].items()}
            for task, metrics in results.items()}


def abstract_plan(experiment: Experiment, num_devices: int) -> dict[str, Any]:
    """Sizes the experiment's model, train state and mesh for `num_devices` without allocating anything: the
    parameter count and the bytes of parameters and optimizer state each device would hold."""
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415
    from lsi.models.configs import config_names, get_config  # noqa: PLC0415
    from lsi.training.optimizers import make_optimizer  # noqa: PLC0415
    from lsi.training.trainer import parameterization, state_axes_and_abstract  # noqa: PLC0415

    cfg = get_config(experiment.model) if experiment.model in config_names() else load_checkpoint(experiment.model)[0]
    shape = experiment.mesh.shape(num_devices)
    mesh = partitioning.make_abstract_mesh(shape)
    axes, abstract = state_axes_and_abstract(cfg, make_optimizer(experiment.train.optimizer),
                                             parameterization(experiment.train))
    return {
        "model": experiment.model,
        "num_params": cfg.num_params,
        "mesh_shape": dict(zip(partitioning.MESH_AXES, shape)),
        "param_bytes_per_device": partitioning.per_device_bytes(abstract.params, axes.params, mesh),
        "optimizer_bytes_per_device": partitioning.per_device_bytes(abstract.opt_state, axes.opt_state, mesh),
    }


def _config_root() -> pathlib.Path:
    """The folder holding gin_configs/: the installed package, where a wheel ships them (as lsi/gin_configs), else
    the checkout that lsi is imported from."""
    package = pathlib.Path(__file__).resolve().parent
    return package if (package / "gin_configs").is_dir() else package.parent


CONFIG_ROOT = _config_root()
_SEARCH_PATH_ADDED: list[bool] = []  # gin keeps search paths for the process; add ours once


def _find_gin_file(path: str, search_paths: Sequence[str] = ()) -> str:
    """`path` as gin should open it: as given when it exists there, else under a search path, else lsi's own copy
    (installed with the package, or the checkout's). A file in none is an error naming every place (gin's own error
    can be a TypeError: it looks a relative path up as a Python package, and fails on namespace packages such as
    gin_configs when the checkout is on sys.path)."""
    if "://" in str(path):  # a remote file (gs://...): gin's file readers open it
        return path
    given = pathlib.Path(path).expanduser()
    if given.is_file():
        return str(given)
    candidates = [] if given.is_absolute() else [pathlib.Path(d).expanduser() / given
                                                 for d in (*search_paths, CONFIG_ROOT)]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    searched = ", ".join(str(p) for p in [given.absolute(), *candidates])
    raise FileNotFoundError(f"--gin_file {path}: no such file; searched {searched} (a relative path is tried against "
                            f"the working directory, then --gin_search_paths, then lsi's own configs).")


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Gin files and bindings, in order. `include 'gin_configs/...'` lines resolve against the working directory
    first, then `search_paths`, then lsi's own configs, so run files work from anywhere."""
    gin_files = [_find_gin_file(path, search_paths) for path in gin_files]
    for directory in search_paths:
        gin.add_config_file_search_path(str(pathlib.Path(directory).expanduser()))
    if not _SEARCH_PATH_ADDED:
        gin.add_config_file_search_path(str(CONFIG_ROOT))
        _SEARCH_PATH_ADDED.append(True)
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params),
                                        skip_unknown=False, finalize_config=False)


def main(argv: Sequence[str]) -> None:
    from absl import flags  # noqa: PLC0415

    del argv
    args = flags.FLAGS
    if args.jax_cache_dir:
        # Samplers and train steps of the same shapes compile once across stages, rounds and reruns: the eval
        # after training reuses the programs of the eval before it.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(args.jax_cache_dir))
    run_dir = [f"lsi.Experiment.run_dir = {args.run_dir!r}"] if args.run_dir else []
    parse_gin(args.gin_file, [*args.gin_param, *run_dir], args.gin_search_paths)
    experiment = Experiment()
    if experiment.distributed:
        # CPU processes need a collectives backend for cross-process arrays (TPU and GPU have their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(experiment.coordinator_address, experiment.num_processes, experiment.process_id)
    experiment.layout.root.mkdir(parents=True, exist_ok=True)
    experiment.restart = Restart(args.restart_stage)
    write_text_atomic(experiment.layout.config_gin, gin.config_str())
    for stage in args.stage:
        result = run_stage(experiment, stage, args.eval_tag, args.eval_model, args.round)
        logging.info("stage %s done: %s", stage, json.dumps(
            {k: v.get("counts") if isinstance(v, dict) else v for k, v in result.items()}, default=str)[:2000])


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """t5x's command-line form: `--gin.NAME=VALUE` becomes `--gin_param=NAME = VALUE` (so `--gin.lsi.TrainConfig.
    steps=100` binds lsi.TrainConfig.steps; VALUE is gin syntax, strings quoted)."""
    rewritten = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            rewritten.append(f"--gin_param={name} = {value}")
        else:
            rewritten.append(arg)
    return rewritten


def _define_flags(flag_values: Any = None) -> None:
    """Defines the entry point's flags on `flag_values` (absl's global FLAGS unless given; tests pass their own)."""
    from absl import flags  # noqa: PLC0415

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.", flag_values=fv)
    flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied after the files.", flag_values=fv)
    flags.DEFINE_multi_enum("stage", None, list(STAGES), "Stages to run, in order (required; see the list above).",
                            flag_values=fv)
    flags.DEFINE_string("run_dir", None, "Shortcut for --gin_param=\"lsi.Experiment.run_dir='DIR'\" (applied last).",
                        flag_values=fv)
    flags.DEFINE_list("gin_search_paths", [], "Folders (comma-separated) where --gin_file and gin `include` paths "
                      "are looked up, before the working directory and the installed package.", flag_values=fv)
    flags.DEFINE_enum("restart_stage", None, [s for s in STAGES if s not in ("self_improve", "report")],
                      "Replace this stage's outputs (whatever made them), and those of the stages after it whose inputs "
                      "changed as a result, instead of refusing to mix them.", flag_values=fv)
    flags.DEFINE_integer("round", 1, "Self-improvement round of the sample/vote/format/train stages (from 1).",
                         flag_values=fv)
    flags.register_validator("round", _check_round, flag_values=fv)
    flags.DEFINE_string("eval_tag", None, "Sub-folder of run_dir/eval/ (default: base, or round_<r> for trained).",
                        flag_values=fv)
    flags.DEFINE_string("jax_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", "~/.cache/lsi/jax"),
                        "Persistent XLA compilation cache ('' disables it; default $JAX_COMPILATION_CACHE_DIR if set).",
                        flag_values=fv)
    flags.DEFINE_string("eval_model", "base", "Model to evaluate: base, trained (the round's fine-tuned model) "
                        "or a checkpoint path/name.", flag_values=fv)
    flags.mark_flag_as_required("stage", flag_values=fv)


def _check_round(value: int) -> bool:
    # Checked when flags are parsed: round 0 would otherwise fail later, inside a stage, as "round -1" (its
    # sampling model is round r-1's).
    if value < 1:
        from absl import flags  # noqa: PLC0415

        raise flags.ValidationError(f"--round counts from 1, got {value}.")
    return True


HELP_FLAGS = {"--help", "-h", "-?", "--helpshort", "--helpfull"}


def console_main() -> None:
    """The installed `lsi` command: `lsi --help` lists the stages (this module's docstring) and lsi's flags."""
    import sys  # noqa: PLC0415

    from absl import app, flags  # noqa: PLC0415

    quiet_tensorflow_import()
    _define_flags()
    # absl's --help prints the __main__ module's docstring and the flags of the module named by argv[0]; for the
    # console script both are the wrapper's, so point them at this module.
    sys.modules["__main__"].__doc__ = __doc__
    for name in ("gin_file", "gin_param", "gin_search_paths", "run_dir", "stage", "restart_stage", "round",
                 "eval_tag", "eval_model", "jax_cache_dir"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    try:
        app.run(main, argv=rewrite_gin_args(sys.argv))
    except SystemExit as exit_:
        # absl exits 1 after printing the help it was asked for; a shell script checking `lsi --help` wants 0.
        if exit_.code == 1 and set(sys.argv[1:]) & HELP_FLAGS:
            raise SystemExit(0) from None
        raise


if __name__ == "__main__":
    console_main()
