r"""Entry point: `python -m lsi.main --gin_file=... --gin_param=... --stage=...` (absl flags + gin, like t5x).

Stages read and write files under the experiment's `run_dir`, so each can be rerun, resumed and inspected:

    sample   run_dir/samples/     samples-*.jsonl + manifest.json    (resumable by shard)
    vote     run_dir/votes/       pseudo_labels.jsonl + manifest.json
    format   run_dir/formats/     examples-*.tfrecord + manifest.json (a SeqIO task)
    train    run_dir/train/       Orbax checkpoints, metrics.jsonl, hf/ (the fine-tuned model, resumable)
    eval     run_dir/eval/<tag>/  */predictions.jsonl + metrics.json (--eval_model=trained: the train stage's hf/)

Example (the tiny arithmetic run used in the README):

    python -m lsi.main --gin_file=gin_configs/runs/quickstart.gin --stage=eval \
        --gin_param="Experiment.run_dir='/tmp/lsi_run'"
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Sequence

import gin

from lsi import partitioning
from lsi.decoding import TransformerLM
from lsi.evaluation import EvalConfig, evaluate, format_summary
from lsi.partitioning import MeshConfig
from lsi.self_improve.formats import FormatStageConfig, register_formatted_task, run_format_stage
from lsi.self_improve.sampling import SampleStageConfig, run_sample_stage
from lsi.self_improve.voting import VoteStageConfig, run_vote_stage
from lsi.training.optimizers import OptimizerConfig
from lsi.training.trainer import TrainConfig

STAGES = ("sample", "vote", "format", "train", "eval")

for _config_class in (SampleStageConfig, VoteStageConfig, FormatStageConfig, EvalConfig, MeshConfig, TrainConfig,
                      OptimizerConfig):
    gin.external_configurable(_config_class, module="lsi")


@gin.configurable(module="lsi")
@dataclasses.dataclass
class Experiment:
    """Everything a run needs; bound from gin files (see gin_configs/runs/)."""

    run_dir: str = gin.REQUIRED
    model: str = "smollm2-135m-instruct"  # a packaged model name, a HF directory or a .gguf file
    task: str = "arithmetic"
    task_kwargs: dict = dataclasses.field(default_factory=dict)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    sample: SampleStageConfig = dataclasses.field(default_factory=SampleStageConfig)
    vote: VoteStageConfig = dataclasses.field(default_factory=VoteStageConfig)
    format: FormatStageConfig = dataclasses.field(default_factory=FormatStageConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.run_dir)

    @property
    def trained_model(self) -> pathlib.Path:
        return self.path / "train" / "hf"

    @property
    def formatted_task_name(self) -> str:
        return f"lsi_self_improve_{self.task_obj.name}"

    @functools.cached_property
    def task_obj(self) -> Any:
        from lsi.tasks import get_task  # noqa: PLC0415

        return get_task(self.task, **self.task_kwargs)

    @functools.cached_property
    def loaded_model(self) -> tuple[Any, Any, Any, Any]:
        """(TransformerLM, params placed on the mesh, vocabulary, mesh) of the base model."""
        return self.load_model(self.model)

    def load_model(self, checkpoint: str | pathlib.Path) -> tuple[Any, Any, Any, Any]:
        from lsi.checkpoints import load_checkpoint  # noqa: PLC0415
        from lsi.models import param_logical_axes  # noqa: PLC0415
        from lsi.vocab import load_vocabulary  # noqa: PLC0415

        cfg, params = load_checkpoint(checkpoint)
        mesh = partitioning.make_mesh(self.mesh)
        params = partitioning.shard_tree(params, param_logical_axes(cfg), mesh)
        return TransformerLM(cfg), params, load_vocabulary(checkpoint), mesh


def run_stage(experiment: Experiment, stage: str, eval_tag: str = "base", eval_model: str = "base"
              ) -> dict[str, Any]:
    """Runs one stage and returns its manifest or metrics. `eval_model`: "base", "trained" or a checkpoint path."""
    task = experiment.task_obj
    if stage == "sample":
        lm, params, vocab, mesh = experiment.loaded_model
        import jax  # noqa: PLC0415

        return run_sample_stage(task, lm, params, vocab, lm.config.max_length, experiment.sample,
                                experiment.path / "samples", mesh=mesh, model_id=experiment.model,
                                process_index=jax.process_index(), process_count=jax.process_count())
    if stage == "vote":
        return run_vote_stage(task, experiment.path / "samples", experiment.path / "votes", experiment.vote)
    if stage == "format":
        return run_format_stage(task, experiment.path / "votes" / "pseudo_labels.jsonl",
                                experiment.path / "formats", experiment.format)
    if stage == "train":
        from lsi.training.trainer import finetune  # noqa: PLC0415
        from lsi.vocab import load_vocabulary  # noqa: PLC0415

        vocab = load_vocabulary(experiment.model)
        name = register_formatted_task(experiment.formatted_task_name, experiment.path / "formats", vocab)
        return finetune(experiment.train, experiment.model, name, experiment.path / "train", vocab)
    if stage == "eval":
        if eval_model == "base":
            lm, params, vocab, mesh = experiment.loaded_model
        else:
            checkpoint = experiment.trained_model if eval_model == "trained" else pathlib.Path(eval_model)
            lm, params, vocab, mesh = experiment.load_model(checkpoint)
        metrics = evaluate(task, lm, params, vocab, lm.config.max_length, experiment.eval,
                           experiment.path / "eval" / eval_tag, mesh=mesh)
        print(format_summary(metrics))
        return metrics
    raise ValueError(f"Unknown stage {stage!r}; known: {', '.join(STAGES)}.")


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params),
                                        skip_unknown=False, finalize_config=False)


def main(argv: Sequence[str]) -> None:
    from absl import flags  # noqa: PLC0415

    del argv
    args = flags.FLAGS
    parse_gin(args.gin_file, args.gin_param)
    experiment = Experiment()
    for stage in args.stage:
        result = run_stage(experiment, stage, args.eval_tag, args.eval_model)
        logging.info("stage %s done: %s", stage, json.dumps(result.get("counts", {}), default=str))


def _define_flags() -> None:
    from absl import flags  # noqa: PLC0415

    flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
    flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied after the files.")
    flags.DEFINE_multi_enum("stage", ["eval"], list(STAGES), "Stages to run, in order.")
    flags.DEFINE_string("eval_tag", "base", "Sub-folder of run_dir/eval/ for this evaluation.")
    flags.DEFINE_string("eval_model", "base", "Model to evaluate: base, trained (run_dir/train/hf) or a path.")


def console_main() -> None:
    from absl import app  # noqa: PLC0415

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
