"""Run after scripts/finetune_check.py: mean target-token loss on the first 8 training batches (4 x 384) under the
base model and under the fine-tuned one (the logged per-step loss is of a different batch each step)."""
import json, pathlib
import numpy as np, jax, jax.numpy as jnp
from lsi.checkpoints import load_checkpoint
from lsi.training.data import PackedBatches
from lsi.training.trainer import target_token_stats
from lsi.models import Transformer
from lsi.main import Experiment, parse_gin
from lsi.self_improve.formats import register_formatted_task
from lsi.vocab import load_vocabulary
run = pathlib.Path("runs/arithmetic_data")
parse_gin(["gin_configs/runs/arithmetic_self_improve_data.gin"], [f"lsi.Experiment.run_dir='{run}'"])
e = Experiment()
vocab = load_vocabulary("smollm2-135m-instruct")
name = register_formatted_task(e.formatted_task_name(1, "arithmetic"), e.stage_dir(1, "arithmetic", "formats"), vocab)
data = PackedBatches(name, batch_size=4, seq_length=384, seed=0)
batches = [next(data) for _ in range(8)]
def mean_loss(ckpt):
    cfg, p = load_checkpoint(ckpt)
    f = jax.jit(lambda p, t, pos, seg: Transformer(cfg).apply({"params": p}, t, pos, seg))
    tot = n = 0.0
    for b in batches:
        logits = f(p, b["tokens"], b["positions"], b["segment_ids"])
        s, _, k = target_token_stats(logits, {k: jnp.asarray(v) for k, v in b.items()})
        tot += float(s); n += float(k)
    return tot / n
out = {"batches": 8, "batch_shape": [4, 384], "loss_before": mean_loss("smollm2-135m-instruct"),
       "loss_after": mean_loss(run / "round_1" / "train" / "hf")}
print(json.dumps(out))
(run / "issue6_loss_check.json").write_text(json.dumps(out, indent=1))
