"""The screen stage: whether LMSI can work on a task, measured on the labelled dev split before any training.

LMSI distils self-consistency into the greedy path, so it can only teach where the vote beats a single path and the
paths it keeps are mostly right. For each cell of a grid (task x prompt style x temperature) the screen samples m
paths per dev question once (the greedy path rides along as an argmax sample of the same batch, as in evaluation)
and measures:
- greedy CoT accuracy, one-sample accuracy (mean over the m paths), self-consistency accuracy at m and at smaller m
  by subsampling;
- self-consistency minus greedy on the same questions (Newcombe interval, exact McNemar p): the method's precondition;
- pseudo-label precision and coverage at each vote-share threshold, and the share of kept paths whose answer is right.

Only the dev split is read (tasks without one cannot be screened); the eval split stays untouched for the numbers
reported after the choices. Each cell is an evaluation folder (`screen/<task>/<style>/t<T>/`), so a killed screen
resumes with the cells and modes already complete; `screen/results.json` and `screen/sc_minus_greedy.png` are
rewritten from the cells' predictions at the end.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from typing import Any, Callable, Sequence

from lsi import metrics
from lsi.batch_decoding import LoadedModel
from lsi.evaluation import EvalConfig, evaluate, load_predictions
from lsi.io_utils import as_path, write_bytes_atomic, write_json_atomic
from lsi.records import Prediction, PseudoLabel
from lsi.sampling_methods import SamplingMethod, Temperature, with_temperature
from lsi.tasks.answers import answers_equal
from lsi.tasks.base import Example, Task

STYLES = ("plain", "chat")


@dataclasses.dataclass(frozen=True)
class ScreenConfig:
    """The grid and how each cell samples. Defaults: issue 16's protocol (m = 16 sampled once, smaller m by
    subsampling; T in {0.3, 0.7, 1.0}; both prompt styles; 200 dev questions)."""

    tasks: tuple[str, ...] = ()  # () = the experiment's task
    styles: tuple[str, ...] = STYLES
    temperatures: tuple[float, ...] = (0.3, 0.7, 1.0)
    num_samples: int = 16
    subsample_sizes: tuple[int, ...] = (1, 4, 8, 16)
    dev_size: int = 200
    max_new_tokens: int = 40
    method: SamplingMethod = Temperature(0.7, top_k=40)  # each cell runs it at the cell's temperature
    vote_share_thresholds: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.styles) - set(STYLES)
        if unknown:
            raise ValueError(f"Screen styles must be among {STYLES}, got {sorted(unknown)}.")
        if self.num_samples < 2:
            raise ValueError(f"The screen needs m >= 2 paths to vote, got num_samples={self.num_samples}.")
        with_temperature(self.method, 1.0)  # a drawing method, or a clear error now rather than at the first cell

    def eval_config(self, temperature: float) -> EvalConfig:
        return EvalConfig(modes=("cot_greedy", "self_consistency"), num_samples=self.num_samples,
                          method=with_temperature(self.method, temperature), max_new_tokens=self.max_new_tokens,
                          subsample_sizes=self.subsample_sizes, batch_size=self.batch_size, seed=self.seed,
                          calibration_bins=5)


def dev_examples(task: Task, size: int) -> list[Example]:
    """The first `size` questions of the task's labelled dev split (never its eval split)."""
    if task.load_dev is None:
        raise ValueError(f"Task {task.name} has no labelled dev split, so it cannot be screened without touching its "
                         "eval split; the procedural tasks (arithmetic, chain_sum, leg_counting, gsm_symbolic) have "
                         "one.")
    examples = task.load_dev()[:size]
    if len(examples) < size:
        raise ValueError(f"Task {task.name}: the dev split has {len(examples)} questions, fewer than dev_size={size}.")
    return examples


def cell_dir(screen_dir: pathlib.Path, task: str, style: str, temperature: float) -> pathlib.Path:
    return screen_dir / task / style / f"t{temperature:g}"


def _right(answer: str | None, record: Prediction, answer_type: str) -> bool:
    return any(answers_equal(answer, gold, answer_type) for gold in record.golds)


def pseudo_label_quality(records: Sequence[Prediction], answer_type: str, threshold: float) -> dict[str, Any]:
    """What the vote stage would keep at `threshold`: questions whose vote share reaches it (coverage), how many of
    their votes are right (precision), and how many of their kept paths (those agreeing with the vote) are right."""
    kept = [r for r in records if r.vote is not None and r.vote_share >= threshold - 1e-9]
    right_paths = sum(_right(s.answer, r, answer_type) for r in kept for s in r.samples
                      if s.answer is not None and answers_equal(s.answer, r.vote, answer_type))
    kept_paths = sum(r.vote_count for r in kept)
    return {"threshold": threshold, "questions": len(kept), "coverage": len(kept) / len(records) if records else 0.0,
            # None, not NaN, where nothing reaches the threshold: results.json stays strict JSON.
            "precision": metrics.accuracy([r.correct for r in kept]).as_dict() if kept else None,
            "kept_paths": kept_paths, "kept_paths_right": right_paths / kept_paths if kept_paths else None}


def gold_check(labels: Sequence[PseudoLabel], pool: Sequence[Example], answer_type: str,
               calibration_bins: int = 5) -> dict[str, Any]:
    """How many of a vote stage's pseudo-labels, and of the paths it kept, match the pool's hidden gold answers:
    a diagnostic read after a run (the stages never see the pool's gold), with accuracy by vote share (the
    calibration of the paper's Figure 2, on the unlabeled pool)."""
    by_id = {e.id: e for e in pool}
    right = [any(answers_equal(label.answer, g, answer_type) for g in by_id[label.question_id].golds)
             for label in labels]
    kept = sum(len(label.paths) for label in labels)
    kept_right = sum(len(label.paths) for label, ok in zip(labels, right) if ok)
    return {"pseudo_labels": len(labels),
            "label_precision": metrics.accuracy(right).as_dict() if labels else None,
            "kept_paths": kept, "kept_paths_right": kept_right / kept if kept else None,
            "calibration": metrics.calibration_bins([label.vote_share for label in labels], right,
                                                    num_bins=calibration_bins)}


def cell_results(directory: pathlib.Path, answer_type: str, config: ScreenConfig) -> dict[str, Any]:
    """One cell's measures, from its predictions (paired by question)."""
    greedy = load_predictions(directory / "cot_greedy" / Prediction.FILE)
    voted = load_predictions(directory / "self_consistency" / Prediction.FILE)
    if [r.id for r in greedy] != [r.id for r in voted]:
        raise ValueError(f"{directory}: greedy and self-consistency predictions cover different questions.")
    path_right = [[_right(s.answer, r, answer_type) for s in r.samples] for r in voted]
    one_sample = [sum(rights) / len(rights) for rights in path_right]
    difference = metrics.paired_difference([r.correct for r in greedy], [r.correct for r in voted])
    sc_metrics = metrics.accuracy([r.correct for r in voted])
    return {
        "n": len(voted),
        "greedy": difference.before.as_dict(),
        "one_sample": metrics.bootstrap_ci(one_sample, seed=config.seed).as_dict(),
        "self_consistency": sc_metrics.as_dict(),
        "sc_minus_greedy": {k: getattr(difference, k) for k in
                            ("difference", "ci_low", "ci_high", "gained", "lost", "p_value")},
        "accuracy_at_m": _accuracy_at_m(directory),
        "pseudo_labels": [pseudo_label_quality(voted, answer_type, t) for t in config.vote_share_thresholds],
    }


def _accuracy_at_m(directory: pathlib.Path) -> dict[str, float]:
    import json  # noqa: PLC0415

    modes = json.loads((directory / "metrics.json").read_text())["modes"]
    return {m: r["accuracy"] for m, r in modes["self_consistency"]["accuracy_at_m"].items()}


def run_screen(tasks: Sequence[Task], config: ScreenConfig, output_dir: str | pathlib.Path,
               sample_cell: Callable[[Task, str, float, list[Example], pathlib.Path], Any]) -> dict[str, Any]:
    """Measures every cell (`sample_cell(task, style, temperature, dev examples, cell dir)` evaluates one, keeping
    complete work), then writes results.json and the plot and returns the results."""
    output_dir = as_path(output_dir)
    cells = []
    for task in tasks:
        examples = dev_examples(task, config.dev_size)
        for style in config.styles:
            for temperature in config.temperatures:
                directory = cell_dir(output_dir, task.name, style, temperature)
                sample_cell(task, style, temperature, examples, directory)
                cells.append({"task": task.name, "style": style, "temperature": temperature,
                              **cell_results(directory, task.answer_type, config)})
    ranked = sorted(cells, key=lambda c: (c["sc_minus_greedy"]["ci_low"], c["sc_minus_greedy"]["difference"]),
                    reverse=True)
    results = {"config": dataclasses.asdict(config), "split": "dev", "cells": cells,
               "best": [{k: c[k] for k in ("task", "style", "temperature")} for c in ranked[:5]]}
    write_json_atomic(output_dir / "results.json", results)
    plot_screen(cells, output_dir / "sc_minus_greedy.png")
    return results


def evaluate_cell(model: LoadedModel, config: ScreenConfig, prompter_for: Callable[[str], Any]) -> Callable[..., Any]:
    """`run_screen`'s `sample_cell` for one loaded model: an evaluation of the dev questions in the cell's style."""

    def sample_cell(task: Task, style: str, temperature: float, examples: list[Example],
                    directory: pathlib.Path) -> Any:
        return evaluate(task, model, config.eval_config(temperature), directory, examples=examples,
                        prompter=prompter_for(style))

    return sample_cell


def format_screen(results: dict[str, Any]) -> str:
    """A console table: a row per cell, best first."""
    rows = sorted(results["cells"], key=lambda c: c["sc_minus_greedy"]["difference"], reverse=True)
    lines = [f"{'task':<14}{'style':<7}{'T':>5}{'greedy':>9}{'1 path':>9}{'SC':>9}{'SC-greedy [95% CI]':>26}"
             f"{'p':>8}{'kept right':>12}"]
    for c in rows:
        d = c["sc_minus_greedy"]
        kept = c["pseudo_labels"][0]["kept_paths_right"]
        lines.append(f"{c['task']:<14}{c['style']:<7}{c['temperature']:>5g}{100 * c['greedy']['value']:>8.1f}%"
                     f"{100 * c['one_sample']['value']:>8.1f}%{100 * c['self_consistency']['value']:>8.1f}%"
                     f"{100 * d['difference']:>+9.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"
                     f"{d['p_value']:>8.3f}{'' if kept is None else f'{100 * kept:.1f}%':>12}")
    return "\n".join(lines)


def plot_screen(cells: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Self-consistency minus greedy per cell, with its 95% interval (zero line: no gain)."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(max(6.0, 0.5 * len(cells) + 2), 4))
    axes = figure.subplots()
    labels = [f"{c['task']}\n{c['style']} T={c['temperature']:g}" for c in cells]
    values = [100 * c["sc_minus_greedy"]["difference"] for c in cells]
    errors = [[v - 100 * c["sc_minus_greedy"]["ci_low"] for v, c in zip(values, cells)],
              [100 * c["sc_minus_greedy"]["ci_high"] - v for v, c in zip(values, cells)]]
    axes.bar(range(len(cells)), values, yerr=errors, capsize=3, color="tab:blue")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(cells)), labels, rotation=90, fontsize=7)
    axes.set_ylabel("self-consistency - greedy (points)")
    axes.set_title("Screen on the dev split: does voting beat the greedy path?")
    figure.tight_layout()
    buffer = io.BytesIO()  # through epath, so a run folder on an object store gets the figure too
    figure.savefig(buffer, format="png", dpi=120)
    return write_bytes_atomic(path, buffer.getvalue())
