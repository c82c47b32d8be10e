"""Run after scripts/finetune_check.py: mean target-token loss on the first 8 training batches (4 x 384) under the
base model and under the fine-tuned one (the logged per-step loss is of a different batch each step).

    python scripts/finetune_loss_check.py
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from lsi.checkpoints import load_checkpoint
from lsi.main import Experiment, parse_gin
from lsi.models import Transformer
from lsi.run_layout import RunLayout
from lsi.self_improve.formats import register_formatted_task
from lsi.training.data import PackedBatches
from lsi.training.trainer import target_token_stats
from lsi.vocab import load_vocabulary

RUN = RunLayout("runs/arithmetic_data")
NUM_BATCHES = 8


def mean_loss(checkpoint: str, batches: list[dict]) -> float:
    cfg, params = load_checkpoint(checkpoint)
    forward = jax.jit(lambda p, t, pos, seg: Transformer(cfg).apply({"params": p}, t, pos, seg))
    total = count = 0.0
    for b in batches:
        logits = forward(params, b["tokens"], b["positions"], b["segment_ids"])
        loss_sum, _, tokens = target_token_stats(logits, {k: jnp.asarray(v) for k, v in b.items()})
        total, count = total + float(loss_sum), count + float(tokens)
    return total / count


def main() -> None:
    parse_gin(["gin_configs/runs/arithmetic_self_improve_data.gin"], [f"lsi.Experiment.run_dir='{RUN.root}'"])
    experiment = Experiment()
    name = register_formatted_task(experiment.formatted_task_name(1, "arithmetic"),
                                   experiment.stage_dir(1, "arithmetic", "formats"),
                                   load_vocabulary("smollm2-135m-instruct"))
    data = PackedBatches(name, batch_size=4, seq_length=384, seed=0)
    batches = [next(data) for _ in range(NUM_BATCHES)]
    print(json.dumps({"batches": NUM_BATCHES, "batch_shape": [4, 384],
                      "loss_before": mean_loss("smollm2-135m-instruct", batches),
                      "loss_after": mean_loss(str(RUN.trained_model(1)), batches)}))


if __name__ == "__main__":
    main()
