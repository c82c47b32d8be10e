"""Issue 6 acceptance check: 50 fine-tuning steps of SmolLM2 on the issue-5 LMSI data (runs/arithmetic_data), a
rerun that restores step 50 and trains no further, and transformers loading the exported directory.

    python scripts/finetune_check.py       # from the repository root, after the arithmetic data run
"""
import json, time, pathlib
import numpy as np
from lsi.main import Experiment, parse_gin, run_stage
run = "runs/arithmetic_data"
params = [f"lsi.Experiment.run_dir='{run}'", "lsi.TrainConfig.steps=50", "lsi.TrainConfig.batch_size=4",
          "lsi.TrainConfig.seq_length=384", "lsi.TrainConfig.checkpoint_every=25", "lsi.TrainConfig.log_every=5",
          "lsi.OptimizerConfig.name='adamw'", "lsi.OptimizerConfig.learning_rate=5e-5", "lsi.OptimizerConfig.total_steps=50"]
parse_gin(["gin_configs/runs/arithmetic_self_improve_data.gin"], params)
t = time.time(); first = run_stage(Experiment(), "train"); seconds = time.time() - t
again = run_stage(Experiment(), "train")
hf = pathlib.Path(run) / "round_1" / "train" / "hf"
import torch, jax, jax.numpy as jnp
from transformers import AutoModelForCausalLM
from lsi.checkpoints import load_checkpoint
from lsi.models import Transformer
from lsi.vocab import load_vocabulary
vocab = load_vocabulary(str(hf))
ids = vocab.encode("Q: What is 47 - 15?\nA: 47 - 15 = 32. The answer is 32.")
cfg, p = load_checkpoint(hf)
ours = np.asarray(Transformer(cfg).apply({"params": p}, jnp.asarray([ids])))
ref = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
with torch.no_grad():
    theirs = ref(torch.tensor([ids])).logits.numpy()
metrics = [json.loads(l) for l in open(pathlib.Path(run) / "round_1" / "train" / "metrics.jsonl")]
out = {"train_seconds": seconds, "first": first, "rerun_resumed_from": again["resumed_from"], "rerun_steps": again["steps"],
       "loss_curve": [(m["step"], m["loss"]) for m in metrics],
       "transformers_max_abs_logit_diff": float(np.abs(ours - theirs).max())}
print(json.dumps(out, indent=1, default=str))
pathlib.Path(run, "issue6_check.json").write_text(json.dumps(out, indent=1, default=str))
