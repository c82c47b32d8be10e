"""Where a run's stages write: every path under a run_dir, in one place. `lsi.main` writes through it; the report,
notebooks, scripts and test helpers read through it.

    config.gin                                  the operative gin config of the last invocation
    screen/<task>/<style>/t<T>/                 the screen stage's cells (dev split) and results.json
    questions/, exemplars/                      self-generated questions and exemplar templates
    round_<r>/<task>/{samples,votes,formats}/   round r's data stages, one folder per training task
    round_<r>/train/                            round r's fine-tuning: checkpoints/, metrics.jsonl, hf/ (the model)
    eval/<tag>/<task>/<mode>/predictions.jsonl  evaluations; tag "base" or "round_<r>" (+ a suffix for variants)
    eval/<tag>/<task>/metrics.json
    summary.json, report/                       the run's before/after summary and its report
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from etils import epath

from lsi.io_utils import as_path
from lsi.records import Prediction, PseudoLabel

DATA_STAGES = ("samples", "votes", "formats")  # a round's per-task stage folders, in pipeline order
BASE_TAG = "base"
_ROUND_DIR = re.compile(r"^round_(\d+)$")
_TAG = re.compile(r"^(?P<stage>base|round_(?P<round>\d+))(?P<variant>_.+)?$")


def round_tag(round_index: int) -> str:
    """The eval tag of round r's model ("base": the model before round 1)."""
    return BASE_TAG if round_index == 0 else f"round_{round_index}"


def tag_stage(tag: str) -> str:
    """The model stage an eval tag belongs to: "round_1_t1.2" -> "round_1"; an unrecognised tag is its own stage."""
    match = _TAG.match(tag)
    return match["stage"] if match else tag


def stage_round(stage: str) -> int | None:
    """0 for "base", r for "round_<r>", None for anything else (a variant such as "round_1_t1.5" included)."""
    match = _TAG.match(stage)
    if not match or match["variant"]:
        return None
    return int(match["round"]) if match["round"] else 0


# Run-level paths, relative to the run folder.
_RUN_PATHS = {"config_gin": "config.gin", "summary": "summary.json", "report_dir": "report", "screen_dir": "screen",
              "questions_dir": "questions", "exemplars_dir": "exemplars", "eval_root": "eval"}


def _derived() -> Any:
    return dataclasses.field(init=False, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (`RunLayout("runs/quickstart")`). Pure: nothing is created, and only `rounds` and
    `round_tasks` look at the disk."""

    root: epath.Path
    config_gin: epath.Path = _derived()  # the operative gin config of the last invocation
    summary: epath.Path = _derived()  # self_improve's before/after summary
    report_dir: epath.Path = _derived()
    screen_dir: epath.Path = _derived()
    questions_dir: epath.Path = _derived()  # self-generated questions (Table 6)
    exemplars_dir: epath.Path = _derived()  # self-generated exemplar templates (Figure 3)
    eval_root: epath.Path = _derived()  # eval/<tag>/<task>/

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", as_path(self.root))  # local, or an object store (gs://bucket/run)
        for name, relative in _RUN_PATHS.items():
            object.__setattr__(self, name, self.root / relative)

    # --- rounds ---
    def round_dir(self, round_index: int) -> epath.Path:
        if round_index < 1:
            raise ValueError(f"Rounds count from 1, got {round_index}.")
        return self.root / f"round_{round_index}"

    def stage_dir(self, round_index: int, task: str, stage: str) -> epath.Path:
        """round_<r>/<task>/<stage>, stage one of DATA_STAGES."""
        if stage not in DATA_STAGES:
            raise ValueError(f"A round's data stage is one of {DATA_STAGES}, got {stage!r}.")
        return self.round_dir(round_index) / task / stage

    def pseudo_labels(self, round_index: int, task: str) -> epath.Path:
        return self.stage_dir(round_index, task, "votes") / PseudoLabel.FILE

    def train_dir(self, round_index: int) -> epath.Path:
        return self.round_dir(round_index) / "train"

    def trained_model(self, round_index: int) -> epath.Path:
        """Round r's fine-tuned model, exported as a Hugging Face checkpoint."""
        return self.train_dir(round_index) / "hf"

    def rounds(self) -> list[int]:
        """The rounds that have a folder, in order."""
        if not self.root.is_dir():
            return []
        return sorted(int(m[1]) for p in self.root.iterdir() if p.is_dir() and (m := _ROUND_DIR.match(p.name)))

    def round_tasks(self, round_index: int) -> list[str]:
        """The tasks with data stage folders in round r."""
        directory = self.round_dir(round_index)
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name != "train")

    # --- evaluations ---
    def eval_dir(self, tag: str, task: str) -> epath.Path:
        return self.eval_root / tag / task

    def predictions(self, tag: str, task: str, mode: str) -> epath.Path:
        return self.eval_dir(tag, task) / mode / Prediction.FILE

    def eval_metrics(self, tag: str, task: str) -> epath.Path:
        return self.eval_dir(tag, task) / "metrics.json"
