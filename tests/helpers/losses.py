"""Per-example losses of a packed batch, for tests that check the trainer's loss against each example alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from lsi.models import Transformer, TransformerConfig
from lsi.training.trainer import target_token_stats


def per_example_losses(model_cfg: TransformerConfig, params: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Mean target-token cross entropy of every segment: [rows, max segments] (NaN where a row has no such segment).
    For tests and inspection, not speed."""
    logits = Transformer(model_cfg).apply({"params": params}, batch["tokens"], batch["positions"],
                                          batch["segment_ids"])
    num_seg = int(np.max(batch["segment_ids"]))
    out = np.full((batch["tokens"].shape[0], num_seg), np.nan)
    for s in range(1, num_seg + 1):
        sub = dict(batch, loss_mask=np.where(batch["segment_ids"] == s, batch["loss_mask"], 0))
        for r in range(batch["tokens"].shape[0]):
            row = {k: v[r:r + 1] for k, v in sub.items()}
            loss_sum, _, n = target_token_stats(logits[r:r + 1], row)
            if n > 0:
                out[r, s - 1] = float(loss_sum / n)
    return out
