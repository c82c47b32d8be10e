r"""The report of a run folder: report.md with the paper's tables and PNG figures (PAPER.md section 7).

    python -m lsi.report RUN_DIR [--output_dir DIR]      # writes DIR (default RUN_DIR/report)/report.md + *.png

What it reads (the layout `lsi.main` writes):

    round_<r>/<task>/{samples,votes,formats}/manifest.json   stage counts; votes/pseudo_labels.jsonl
    round_<r>/train/metrics.jsonl, data_stats.json, hf/       training curves and data statistics
    eval/<tag>/<task>/metrics.json, <mode>/predictions.jsonl  lsi.evaluation's output
    summary.json                                              optional

An eval tag names the model stage: "base" (before self-improvement) or "round_<r>" (after round r); a suffix makes a
variant of that stage's evaluation, such as a temperature sweep point ("round_1_t1.5": the temperature itself is read
from metrics.json's config). "Before" is the tag "base", "after" the highest evaluated plain "round_<r>".

Anything not there yet (no training, no eval after) becomes a sentence in the report saying so; a file that is there
but malformed is an error naming the file (and line, for JSONL). Loading, tables and figures are separate functions so
that notebooks can reuse them: load_run -> data structures -> *_figure(data) -> save_png.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

from matplotlib.figure import Figure

from lsi import metrics
from lsi.io_utils import as_path, read_jsonl, write_bytes_atomic, write_text_atomic
from lsi.records import Prediction, PseudoLabel, read_records
from lsi.run_layout import BASE_TAG, DATA_STAGES, RunLayout, round_tag, stage_round, tag_stage

MODES = ("standard", "cot_greedy", "self_consistency", "zero_shot_cot")  # lsi.evaluation.MODES, without jax
MODE_NAMES = {"standard": "Standard", "cot_greedy": "CoT (greedy)", "self_consistency": "Self-consistency",
              "zero_shot_cot": "Zero-shot CoT (greedy)"}
PLOT_FILES = ("calibration.png", "accuracy_vs_m.png", "temperature.png", "training_loss.png",
              "pseudo_label_vote_share.png")


# --- loading ---------------------------------------------------------------------------------------------------------

def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; malformed JSON is a ValueError naming the file, line and column."""
    try:
        return json.loads(as_path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None


def _read_json_object(path: pathlib.Path) -> dict:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}.")
    return value


def _tag_order(tag: str) -> tuple:
    r = stage_round(tag_stage(tag))
    # base, round_1, round_2, ..., then unrecognised tags; within a stage the plain tag comes first.
    return (r if r is not None else math.inf, tag != tag_stage(tag), tag)


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """One metrics.json: a model stage (tag) evaluated on one task."""

    tag: str
    task: str
    directory: pathlib.Path  # holds metrics.json and <mode>/predictions.jsonl
    metrics: dict  # as written by lsi.evaluation.evaluate

    @property
    def stage(self) -> str:
        return tag_stage(self.tag)

    @property
    def temperature(self) -> float | None:
        """Self-consistency's sampling temperature (runs before sampling methods were objects record it flat)."""
        config = self.metrics.get("config", {})
        return (config.get("method") or {}).get("temperature", config.get("temperature"))

    def mode(self, mode: str) -> dict | None:
        return self.metrics["modes"].get(mode)

    def accuracy(self, mode: str) -> metrics.Estimate | None:
        result = self.mode(mode)
        if result is None:
            return None
        return _estimate(result.get("accuracy"), f"{self.directory / 'metrics.json'}: modes.{mode}.accuracy")

    def predictions_path(self, mode: str) -> pathlib.Path:
        return self.directory / mode / Prediction.FILE


def _estimate(value: Any, where: str) -> metrics.Estimate:
    fields = [f.name for f in dataclasses.fields(metrics.Estimate)]
    if not isinstance(value, dict) or any(k not in value for k in fields[:6]):
        raise ValueError(f"{where}: expected an accuracy object with {', '.join(fields[:6])}.")
    return metrics.Estimate(**{k: value[k] for k in fields if k in value})


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """A samples/votes/formats stage folder of one round and task, with its manifest when written."""

    round: int
    task: str
    kind: str
    directory: pathlib.Path
    manifest: dict | None


@dataclasses.dataclass(frozen=True)
class TrainRound:
    round: int
    directory: pathlib.Path
    metrics: list[dict]  # metrics.jsonl records, one per logged step
    data_stats: dict | None
    exported: bool  # hf/ exists


@dataclasses.dataclass(frozen=True)
class RunData:
    run_dir: pathlib.Path
    rounds: list[int]  # round_<r> folders present
    stages: list[StageRecord]
    trains: list[TrainRound]
    evals: list[EvalRun]
    summary: dict | None


def _load_eval(directory: pathlib.Path, tag: str, task: str | None) -> EvalRun:
    path = directory / "metrics.json"
    value = _read_json_object(path)
    if not isinstance(value.get("modes"), dict):
        raise ValueError(f"{path}: no 'modes' object; is this a metrics.json written by lsi.evaluation?")
    return EvalRun(tag, task or value.get("task") or tag, directory, value)


def load_evals(run_dir: pathlib.Path) -> list[EvalRun]:
    """Every eval/<tag>/<task>/metrics.json (also eval/<tag>/metrics.json, where the task is read from the file)."""
    evals = []
    for tag_dir in sorted(p for p in RunLayout(run_dir).eval_root.glob("*") if p.is_dir()):
        if (tag_dir / "metrics.json").exists():
            evals.append(_load_eval(tag_dir, tag_dir.name, None))
        for task_dir in sorted(p for p in tag_dir.iterdir() if p.is_dir()):
            if (task_dir / "metrics.json").exists():
                evals.append(_load_eval(task_dir, tag_dir.name, task_dir.name))
    return sorted(evals, key=lambda e: (_tag_order(e.tag), e.task))


def read_train_metrics(path: pathlib.Path) -> list[dict]:
    """metrics.jsonl records; a malformed line or one without a step is an error naming the file and line."""
    records = []
    for line_no, record in read_jsonl(path):
        if "step" not in record:
            raise ValueError(f"{path}:{line_no}: a training metrics record without 'step'.")
        records.append(record)
    return records


def _read_stage(layout: RunLayout, round_index: int, task: str, kind: str) -> StageRecord:
    directory = layout.stage_dir(round_index, task, kind)
    manifest_path = directory / "manifest.json"
    return StageRecord(round_index, task, kind, directory,
                       _read_json_object(manifest_path) if manifest_path.exists() else None)


def _read_train(layout: RunLayout, round_index: int) -> TrainRound:
    train_dir = layout.train_dir(round_index)
    metrics_path, stats_path = train_dir / "metrics.jsonl", train_dir / "data_stats.json"
    return TrainRound(round_index, train_dir, read_train_metrics(metrics_path) if metrics_path.exists() else [],
                      _read_json_object(stats_path) if stats_path.exists() else None,
                      layout.trained_model(round_index).is_dir())


def load_run(run_dir: str | os.PathLike) -> RunData:
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise FileNotFoundError(f"Run folder {layout.root} does not exist.")
    rounds = layout.rounds()
    stages = [_read_stage(layout, r, task, kind) for r in rounds for task in layout.round_tasks(r)
              for kind in DATA_STAGES if layout.stage_dir(r, task, kind).is_dir()]
    trains = [_read_train(layout, r) for r in rounds if layout.train_dir(r).is_dir()]
    summary = _read_json_object(layout.summary) if layout.summary.exists() else None
    return RunData(layout.root, rounds, stages, trains, load_evals(layout.root), summary)


def read_pseudo_label_shares(votes_dir: pathlib.Path) -> list[float]:
    """The vote share (paths agreeing / m) of every pseudo-label of a vote stage."""
    return [label.vote_share for label in read_records(PseudoLabel, votes_dir / PseudoLabel.FILE)]


def read_correctness(path: pathlib.Path) -> dict[str, bool]:
    """question id -> correct, from a predictions.jsonl."""
    return {p.id: p.correct for p in read_records(Prediction, path)}


# --- derived data (pure) ---------------------------------------------------------------------------------------------

def before_after_tags(evals: Sequence[EvalRun]) -> tuple[str | None, str | None]:
    """("base" if evaluated, the highest evaluated "round_<r>"), None where missing."""
    tags = {e.tag for e in evals}
    rounds = [r for tag in tags if tag == tag_stage(tag) and (r := stage_round(tag))]
    return (BASE_TAG if BASE_TAG in tags else None), (round_tag(max(rounds)) if rounds else None)


def tasks_of(evals: Sequence[EvalRun]) -> list[str]:
    return sorted({e.task for e in evals})


def find_eval(evals: Sequence[EvalRun], tag: str | None, task: str) -> EvalRun | None:
    return next((e for e in evals if e.tag == tag and e.task == task), None)


def calibration_data(evals: Sequence[EvalRun]) -> dict[str, dict[str, list[dict]]]:
    """task -> tag -> calibration bins (lsi.metrics.calibration_bins rows) of every self-consistency eval."""
    data: dict[str, dict[str, list[dict]]] = {}
    for e in evals:
        bins = (e.mode("self_consistency") or {}).get("calibration")
        if bins:
            data.setdefault(e.task, {})[e.tag] = bins
    return data


def accuracy_at_m_data(evals: Sequence[EvalRun]) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """task -> model-stage tag -> [(m, accuracy, std over subsets)] sorted by m; temperature-sweep tags are left out
    (Figure 5 compares model stages at their own evaluation temperature)."""
    data: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for e in evals:
        at_m = (e.mode("self_consistency") or {}).get("accuracy_at_m")
        if at_m and e.tag == e.stage:
            points = sorted((int(m), v["accuracy"], v.get("std_over_subsets", 0.0)) for m, v in at_m.items())
            data.setdefault(e.task, {})[e.tag] = points
    return data


def temperature_sweeps(evals: Sequence[EvalRun]) -> dict[str, dict[str, list[tuple[float, metrics.Estimate, str]]]]:
    """task -> model stage -> [(temperature, self-consistency accuracy, tag)] sorted by temperature, for stages
    evaluated at two or more temperatures. A temperature evaluated twice keeps the first tag (the plain one)."""
    by_stage: dict[tuple[str, str], dict[float, tuple[metrics.Estimate, str]]] = {}
    for e in evals:
        estimate = e.accuracy("self_consistency")
        if estimate is not None and e.temperature is not None:
            by_stage.setdefault((e.task, e.stage), {}).setdefault(float(e.temperature), (estimate, e.tag))
    data: dict[str, dict[str, list[tuple[float, metrics.Estimate, str]]]] = {}
    for (task, stage), points in by_stage.items():
        if len(points) >= 2:
            data.setdefault(task, {})[stage] = [(t, est, tag) for t, (est, tag) in sorted(points.items())]
    return data


def loss_curves(trains: Sequence[TrainRound]) -> dict[int, list[tuple[int, float]]]:
    """round -> [(step, loss)] of every round that logged a loss."""
    curves = {t.round: [(r["step"], r["loss"]) for r in t.metrics if "loss" in r] for t in trains}
    return {r: points for r, points in curves.items() if points}


def pseudo_label_share_data(stages: Sequence[StageRecord]) -> dict[str, list[float]]:
    """"round_<r>/<task>" -> vote shares of its pseudo-labels, for every vote stage that wrote them."""
    return {f"round_{s.round}/{s.task}": read_pseudo_label_shares(s.directory) for s in stages
            if s.kind == "votes" and (s.directory / PseudoLabel.FILE).exists()}


def paired_changes(evals: Sequence[EvalRun], before: str,
                   after: str) -> list[tuple[str, str, metrics.PairedDifference]]:
    """(task, mode, after - before on the questions both evaluated) where both wrote predictions."""
    changes = []
    for task in tasks_of(evals):
        runs = find_eval(evals, before, task), find_eval(evals, after, task)
        if None in runs:
            continue
        for mode in MODES:
            paths = [run.predictions_path(mode) for run in runs]
            if all(p.exists() for p in paths):
                old, new = (read_correctness(p) for p in paths)
                shared = [q for q in old if q in new]
                changes.append((task, mode, metrics.paired_difference([old[q] for q in shared],
                                                                      [new[q] for q in shared])))
    return changes


# --- tables ----------------------------------------------------------------------------------------------------------

def format_accuracy(estimate: metrics.Estimate | None) -> str:
    """"acc% [lo, hi] (n=N)", or "not evaluated"."""
    return "not evaluated" if estimate is None else str(estimate)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def results_table(evals: Sequence[EvalRun]) -> tuple[list[str], list[list[str]]]:
    """PAPER.md Table 3's layout: a row per prompting method x (before, after), a column per task."""
    before, after = before_after_tags(evals)
    tasks = tasks_of(evals)
    rows = []
    for mode in MODES:
        for label, tag in (("w/o", before), ("w/", after)):
            cells = [format_accuracy(run.accuracy(mode)) if (run := find_eval(evals, tag, task)) else "not evaluated"
                     for task in tasks]
            rows.append([MODE_NAMES[mode], f"{label} ({tag or 'missing'})", *cells])
    return ["Prompting", "LMSI?", *tasks], rows


def before_after_rows(evals: Sequence[EvalRun]) -> tuple[list[str], list[list[str]]]:
    before, after = before_after_tags(evals)
    header = ["task", "mode", f"before ({before or 'no base eval'})", f"after ({after or 'no round eval'})"]
    rows = []
    for task in tasks_of(evals):
        runs = find_eval(evals, before, task), find_eval(evals, after, task)
        for mode in MODES:
            if any(run is not None and run.mode(mode) is not None for run in runs):
                rows.append([task, mode, *(format_accuracy(run.accuracy(mode) if run else None) for run in runs)])
    return header, rows


def format_before_after(run_dir: str | os.PathLike) -> str:
    """The console table of `make demo`: accuracy before and after self-improvement per task and mode, each with its
    95% Wilson interval and N, then the paired change per mode."""
    evals = load_evals(as_path(run_dir))
    if not evals:
        return f"No evaluation in {run_dir}/eval yet."
    header, rows = before_after_rows(evals)
    text = "Accuracy, 95% Wilson interval, N questions\n" + text_table(header, rows)
    before, after = before_after_tags(evals)
    changes = paired_changes(evals, before, after) if before and after else []
    if changes:
        text += ("\n\nChange, after - before on the same questions: Newcombe 95% interval, McNemar exact p\n"
                 + text_table(["task", "mode", "change"], [[t, m, str(c)] for t, m, c in changes]))
    return text


def _flatten(counts: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in counts.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value)


def counts_table(keyed_counts: Sequence[tuple[Sequence[str], dict | None]], key_header: Sequence[str]) -> str:
    """A markdown table of (key cells, counts dict) rows; columns are the union of the (flattened) count names."""
    flat = [(keys, _flatten(c) if c is not None else None) for keys, c in keyed_counts]
    columns = list(dict.fromkeys(name for _, c in flat if c for name in c))
    rows = [[*keys, *([_cell(c.get(name)) for name in columns] if c is not None else
                      ["(no manifest.json)"] + [""] * (len(columns) - 1 if columns else 0))]
            for keys, c in flat]
    return markdown_table([*key_header, *(columns or ["counts"])], rows)


def training_rows(trains: Sequence[TrainRound]) -> tuple[list[str], list[list[str]]]:
    header = ["round", "logged steps", "last step", "first loss", "last loss", "last accuracy", "last lr",
              "median tokens/s", "median MFU", "exported hf/"]
    rows = []
    for t in trains:
        if not t.metrics:
            rows.append([t.round, "no metrics.jsonl yet", *[""] * 7, "yes" if t.exported else "no"])
            continue
        first, last = t.metrics[0], t.metrics[-1]
        rows.append([t.round, len(t.metrics), last["step"], _cell(first.get("loss")), _cell(last.get("loss")),
                     _cell(last.get("accuracy")), _cell_sci(last.get("learning_rate")),
                     _cell(_median([r["tokens_per_s"] for r in t.metrics if "tokens_per_s" in r])),
                     _cell(_median([r["mfu"] for r in t.metrics if "mfu" in r])), "yes" if t.exported else "no"])
    return header, rows


def _cell_sci(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, float) else _cell(value)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return float(ordered[middle]) if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# --- figures (data in, matplotlib Figure out; no pyplot, so no display and no global backend state) --------------

def _per_task_figure(data: dict[str, Any], draw: Callable[[Any, str, Any], None], xlabel: str, ylabel: str,
                     title: str) -> Figure:
    tasks = sorted(data)
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    for index, task in enumerate(tasks):
        ax = figure.add_subplot(rows, columns, index + 1)
        draw(ax, task, data[task])
        ax.set(title=task, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    return figure


def calibration_figure(data: dict[str, dict[str, list[dict]]]) -> Figure:
    """Figure 2: accuracy of the voted answer against its vote share, one series per eval tag; marker area grows with
    the number of questions in the bin, bars are 95% Wilson intervals. A point sits at the bin's mean vote share
    (the bin centre when that is absent): with m paths the shares are multiples of 1/m, not bin centres."""
    largest = max((b["count"] for series in data.values() for bins in series.values() for b in bins), default=1)

    def draw(ax, task, series):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        for index, (tag, bins) in enumerate(series.items()):
            full = [b for b in bins if b["count"]]
            x = [b["mean_share"] if b.get("mean_share") is not None else (b["bin_low"] + b["bin_high"]) / 2
                 for b in full]
            y = [b["accuracy"] for b in full]
            errors = [[a - b["ci_low"] for a, b in zip(y, full)], [b["ci_high"] - a for a, b in zip(y, full)]]
            color = f"C{index}"
            ax.errorbar(x, y, yerr=errors, fmt="none", color=color, alpha=0.5, capsize=2)
            ax.scatter(x, y, s=[15 + 400 * b["count"] / largest for b in full], alpha=0.6, color=color,
                       label=f"{tag} (n={sum(b['count'] for b in full)})")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))

    return _per_task_figure(data, draw, "vote share of the voted answer", "accuracy",
                            "Calibration of self-consistency votes")


def accuracy_at_m_figure(data: dict[str, dict[str, list[tuple[int, float, float]]]]) -> Figure:
    """Figure 5: self-consistency accuracy against the number of sampled paths, one curve per model stage; the band
    is one standard deviation over the random path subsets."""

    def draw(ax, task, series):
        for tag, points in series.items():
            m, accuracy, std = zip(*points)
            line, = ax.plot(m, [100 * a for a in accuracy], marker="o", label=tag)
            ax.fill_between(m, [100 * (a - s) for a, s in zip(accuracy, std)],
                            [100 * (a + s) for a, s in zip(accuracy, std)], color=line.get_color(), alpha=0.15)

    return _per_task_figure(data, draw, "sampled paths m", "accuracy (%)", "Self-consistency accuracy vs paths")


def temperature_figure(data: dict[str, dict[str, list[tuple[float, metrics.Estimate, str]]]]) -> Figure:
    """Figure 4: self-consistency accuracy against the sampling temperature, one curve per model stage."""

    def draw(ax, task, series):
        for stage, points in series.items():
            t = [p[0] for p in points]
            estimates = [p[1] for p in points]
            y = [100 * e.value for e in estimates]
            errors = [[100 * (e.value - e.ci_low) for e in estimates], [100 * (e.ci_high - e.value) for e in estimates]]
            ax.errorbar(t, y, yerr=errors, marker="o", capsize=3, label=stage)

    return _per_task_figure(data, draw, "sampling temperature T", "accuracy (%)",
                            "Self-consistency accuracy vs temperature")


def training_loss_figure(curves: dict[int, list[tuple[int, float]]]) -> Figure:
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    for r, points in sorted(curves.items()):
        steps, losses = zip(*points)
        ax.plot(steps, losses, label=f"round {r}")
    ax.set(xlabel="step", ylabel="training loss (target tokens)", title="Fine-tuning loss per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def pseudo_label_share_figure(shares: dict[str, list[float]]) -> Figure:
    """How confident the kept pseudo-labels are: a histogram of their vote shares per round and task."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    edges = [i / 20 for i in range(21)]
    for label, values in sorted(shares.items()):
        ax.hist(values, bins=edges, histtype="step", lw=1.5, label=f"{label} (n={len(values)})")
    ax.set(xlabel="vote share of the pseudo-label", ylabel="questions", title="Pseudo-label vote shares")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def save_png(figure: Figure, path: str | os.PathLike) -> pathlib.Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_bytes_atomic(path, buffer.getvalue())


# --- report.md -------------------------------------------------------------------------------------------------------

def _results_section(run: RunData) -> list[str]:
    lines = ["## Results (PAPER.md Table 3 layout)", ""]
    if not run.evals:
        return lines + [f"No evaluation yet: nothing under `{RunLayout(run.run_dir).eval_root}`.", ""]
    notes = []
    before, after = before_after_tags(run.evals)
    if before is None:
        notes.append("No `base` evaluation: the accuracy before self-improvement is missing.")
    if after is None:
        notes.append("No `round_<r>` evaluation yet: the accuracy after self-improvement is missing.")
    trained = [t.round for t in run.trains if t.exported]
    if trained and (after is None or max(trained) > stage_round(after)):
        notes.append(f"round_{max(trained)} is trained but not evaluated yet.")
    header, rows = results_table(run.evals)
    if notes:
        lines += [*notes, ""]
    lines += ["Accuracy with its 95% Wilson interval and the number of questions.", "",
              markdown_table(header, rows), "", "Before / after, as `make demo` prints it:", "", "```",
              format_before_after(run.run_dir), "```", ""]
    if before and after:
        changes = paired_changes(run.evals, before, after)
        if changes:
            lines += [f"### Change from {before} to {after}, paired on the same questions", "",
                      ("Newcombe's 95% interval for a paired difference; McNemar's exact test on the questions "
                       "that changed (+gained / -lost)."), "",
                      markdown_table(["task", "mode", "change"], [[t, m, str(c)] for t, m, c in changes]), ""]
    return lines


def _figure_section(title: str, figure_file: str | None, missing: str, table: str | None = None) -> list[str]:
    lines = [f"## {title}", ""]
    if figure_file is None:
        return lines + [missing, ""]
    lines += [f"![{title}]({figure_file})", ""]
    return lines + ([table, ""] if table else [])


def _calibration_table(data: dict[str, dict[str, list[dict]]]) -> str:
    def interval(b: dict) -> str:
        return f"{100 * b['accuracy']:.1f}% [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]"

    def bin_range(b: dict) -> str:  # the last bin is closed: it holds the unanimous votes
        return f"[{b['bin_low']:.1f}, {b['bin_high']:.1f}{']' if b['bin_high'] >= 1 else ')'}"

    rows = [[task, tag, bin_range(b), b["count"], f"{b['mean_share']:.3f}", interval(b)]
            for task, series in sorted(data.items()) for tag, bins in series.items() for b in bins if b["count"]]
    return ("Marker area: questions in the bin; bars: 95% Wilson intervals.\n\n"
            + markdown_table(["task", "tag", "vote share bin", "questions", "mean share", "accuracy"], rows))


def _accuracy_at_m_table(data: dict[str, dict[str, list[tuple[int, float, float]]]]) -> str:
    rows = [[task, tag, m, f"{100 * a:.1f}", f"{100 * s:.1f}"] for task, series in sorted(data.items())
            for tag, points in series.items() for m, a, s in points]
    return markdown_table(["task", "tag", "m", "accuracy %", "std over subsets"], rows)


def _temperature_table(data: dict[str, dict[str, list[tuple[float, metrics.Estimate, str]]]]) -> str:
    rows = [[task, stage, t, tag, str(e)] for task, series in sorted(data.items())
            for stage, points in series.items() for t, e, tag in points]
    return markdown_table(["task", "stage", "T", "tag", "self-consistency accuracy"], rows)


def _counts_section(run: RunData) -> list[str]:
    lines = ["## Stage counts (from the manifests)", ""]
    if not run.rounds:
        return lines + ["No `round_<r>` folder yet: self-improvement has not started.", ""]
    for kind in DATA_STAGES:
        records = [s for s in run.stages if s.kind == kind]
        lines += [f"### {kind}", ""]
        if not records:
            lines += [f"No {kind} stage yet.", ""]
            continue
        lines += [counts_table([((s.round, s.task), s.manifest.get("counts", {}) if s.manifest else None)
                                for s in records], ["round", "task"]), ""]
    lines += ["### train", ""]
    if not run.trains:
        return lines + ["No training yet.", ""]
    header, rows = training_rows(run.trains)
    lines += [markdown_table(header, rows), "", "Training data (data_stats.json):", "",
              counts_table([((t.round,), t.data_stats) for t in run.trains], ["round"]), ""]
    return lines


def render_report(run: RunData, figures: dict[str, str]) -> str:
    """report.md's text; `figures` maps a PLOT_FILES name to its link when that figure was written."""
    calibration, at_m = calibration_data(run.evals), accuracy_at_m_data(run.evals)
    sweeps = temperature_sweeps(run.evals)
    lines = [f"# Self-improvement report: {run.run_dir.name}", "", f"Run folder: `{run.run_dir}`", ""]
    lines += _results_section(run)
    lines += _figure_section(
        "Calibration: vote share vs accuracy (Figure 2)", figures.get("calibration.png"),
        "No self-consistency evaluation with calibration bins yet.",
        _calibration_table(calibration) if calibration else None)
    lines += _figure_section("Accuracy vs sampled paths m (Figure 5)", figures.get("accuracy_vs_m.png"),
                             "No self-consistency evaluation with accuracy_at_m yet.",
                             _accuracy_at_m_table(at_m) if at_m else None)
    lines += _figure_section("Accuracy vs sampling temperature (Figure 4)", figures.get("temperature.png"),
                             "No temperature sweep in this run (no model stage has self-consistency evaluations at "
                             "two or more temperatures, e.g. tags `round_1` and `round_1_t1.5`).",
                             _temperature_table(sweeps) if sweeps else None)
    lines += _figure_section("Training loss", figures.get("training_loss.png"),
                             "No training metrics yet (no `round_<r>/train/metrics.jsonl`).")
    lines += _figure_section(
        "Pseudo-label vote shares", figures.get("pseudo_label_vote_share.png"),
        "No pseudo-labels yet (no `round_<r>/<task>/votes/pseudo_labels.jsonl`).",
        "Pool questions carry no gold answer in the run folder (the sample stage strips it), so pseudo-labels are not "
        "scored against gold here; the calibration figure above is on eval questions.")
    lines += _counts_section(run)
    if run.summary is not None:
        lines += ["## summary.json", "", "```json", json.dumps(run.summary, indent=2), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes report.md and its figures (default folder: run_dir/report); returns report.md's path."""
    run = load_run(run_dir)
    output_dir = as_path(output_dir) if output_dir is not None else RunLayout(run.run_dir).report_dir
    builders = {
        "calibration.png": (calibration_data(run.evals), calibration_figure),
        "accuracy_vs_m.png": (accuracy_at_m_data(run.evals), accuracy_at_m_figure),
        "temperature.png": (temperature_sweeps(run.evals), temperature_figure),
        "training_loss.png": (loss_curves(run.trains), training_loss_figure),
        "pseudo_label_vote_share.png": (pseudo_label_share_data(run.stages), pseudo_label_share_figure),
    }
    figures = {}
    for name, (data, make_figure) in builders.items():
        if data:
            save_png(make_figure(data), output_dir / name)
            figures[name] = name
        elif (output_dir / name).exists():  # a figure from an earlier report whose data is gone would mislead
            (output_dir / name).unlink()
    return write_text_atomic(output_dir / "report.md", render_report(run, figures))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsi.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder written by lsi.main")
    parser.add_argument("--output_dir", default=None, help="where to write report.md and the figures "
                                                           "(default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
