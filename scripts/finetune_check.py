"""Issue 6 acceptance check: 50 fine-tuning steps of SmolLM2 on the issue-5 LMSI data (runs/arithmetic_data), a
rerun that restores step 50 and trains no further, and transformers loading the exported directory.

    python scripts/finetune_check.py       # from the repository root, after the arithmetic data run
"""

from __future__ import annotations

import json
import time

import jax.numpy as jnp
import numpy as np

from lsi.checkpoints import load_checkpoint
from lsi.io_utils import write_json_atomic
from lsi.main import Experiment, parse_gin, run_stage
from lsi.models import Transformer
from lsi.report import read_train_metrics
from lsi.run_layout import RunLayout
from lsi.vocab import load_vocabulary

RUN = RunLayout("runs/arithmetic_data")
PARAMS = [f"lsi.Experiment.run_dir='{RUN.root}'", "lsi.TrainConfig.steps=50", "lsi.TrainConfig.batch_size=4",
          "lsi.TrainConfig.seq_length=384", "lsi.TrainConfig.checkpoint_every=25", "lsi.TrainConfig.log_every=5",
          "lsi.OptimizerConfig.name='adamw'", "lsi.OptimizerConfig.learning_rate=5e-5",
          "lsi.OptimizerConfig.total_steps=50"]


def transformers_logit_difference(hf_dir: str) -> float:
    """Max |logit difference| between our model and transformers on the exported checkpoint."""
    import torch  # noqa: PLC0415 - a test reference only
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    ids = load_vocabulary(hf_dir).encode("Q: What is 47 - 15?\nA: 47 - 15 = 32. The answer is 32.")
    cfg, params = load_checkpoint(hf_dir)
    ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray([ids])))
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits.numpy()
    return float(np.abs(ours - theirs).max())


def main() -> None:
    parse_gin(["gin_configs/runs/arithmetic_self_improve_data.gin"], PARAMS)
    start = time.time()
    first = run_stage(Experiment(), "train")
    seconds = time.time() - start
    again = run_stage(Experiment(), "train")
    metrics = read_train_metrics(RUN.train_dir(1) / "metrics.jsonl")
    out = {"train_seconds": seconds, "first": first, "rerun_resumed_from": again["resumed_from"],
           "rerun_steps": again["steps"], "loss_curve": [(m["step"], m["loss"]) for m in metrics],
           "transformers_max_abs_logit_diff": transformers_logit_difference(str(RUN.trained_model(1)))}
    print(json.dumps(out, indent=1, default=str))
    write_json_atomic(RUN.root / "issue6_check.json", out)


if __name__ == "__main__":
    main()
