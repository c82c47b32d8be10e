"""Eval metrics as TensorBoard scalars, beside the training curves (`tensorboard --logdir RUN_DIR` shows both).

An eval of the base model or of round r's model (tags "base", "round_<r>") is written to run_dir/eval/tensorboard at
step r, so each metric reads as a curve over self-improvement rounds; any other tag (a temperature variant, a named
checkpoint) gets its own run, run_dir/eval/<tag>/tensorboard, at step 0. Scalars are named
`<task>/<mode>/accuracy` (and `accuracy_at_m/<m>`, `f1` where the eval has them).
"""

from __future__ import annotations

import logging
from typing import Any

from lsi.run_layout import RunLayout, stage_round

log = logging.getLogger(__name__)


def eval_scalars(task_metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{task: metrics.json} -> {"<task>/<mode>/<metric>": value}."""
    scalars = {}
    for task, metrics in task_metrics.items():
        for mode, mode_metrics in metrics["modes"].items():
            prefix = f"{task}/{mode}"
            scalars[f"{prefix}/accuracy"] = float(mode_metrics["accuracy"]["value"])
            for size, at_size in (mode_metrics.get("accuracy_at_m") or {}).items():
                scalars[f"{prefix}/accuracy_at_m/{size}"] = float(at_size["accuracy"])
            if "f1" in mode_metrics:
                scalars[f"{prefix}/f1"] = float(mode_metrics["f1"]["value"])
    return scalars


def summary_place(layout: RunLayout, tag: str) -> tuple[Any, int]:
    """(TensorBoard log folder, step) of an eval tag: the rounds' shared folder at step r, else the tag's own."""
    round_index = stage_round(tag)
    if round_index is None:
        return layout.eval_root / tag / "tensorboard", 0
    return layout.eval_root / "tensorboard", round_index


def write_eval_summaries(layout: RunLayout, tag: str, task_metrics: dict[str, dict[str, Any]]) -> None:
    """Writes the eval's scalars (`eval_scalars`) where `summary_place` says; TensorBoard is optional, as for
    training: without clu's writer the metrics stay in metrics.json only."""
    logdir, step = summary_place(layout, tag)
    try:
        from clu import metric_writers  # noqa: PLC0415

        writer = metric_writers.create_default_writer(str(logdir), asynchronous=False)
    except Exception as err:  # noqa: BLE001 - TensorBoard support is optional
        log.warning("No clu metric writer (%s); eval metrics stay in metrics.json.", err)
        return
    writer.write_scalars(step, eval_scalars(task_metrics))
    writer.flush()
    writer.close()
