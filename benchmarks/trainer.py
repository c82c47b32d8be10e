"""Training throughput: our jitted train step (`lsi.training.trainer`) against a plain PyTorch loop on transformers'
model of the same checkpoint, same batch, same optimizer (AdamW, clip 1.0, no weight decay), float32, in one run.

Each side runs in its own spawned process (`common.run_isolated`) on the same random batch of `batch x length` token
ids, loss on every next-token prediction (no padding, one segment per row), so both do identical work. Tokens/s is
batch * length / median step time after warmup steps (our compile is in the first warmup step and reported apart).
MFU = cfg.flops_per_token(length) * tokens/s / peak, where the peak is a float32 matmul rate measured in our process
(a 2048^3 `jnp.dot`), or `--peak_flops`. Both sides' first-step losses are recorded: same weights and batch must give
the same loss, which checks that the comparison is like for like.

    python -m benchmarks.trainer                      # SmolLM2-135M, 8 x 256 -> benchmarks/results/trainer_cpu.json
    python -m benchmarks.trainer --config tiny --output /tmp/trainer_tiny.json     # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `lsi` importable from the repo root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "trainer_cpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS")


@dataclasses.dataclass(frozen=True)
class Workload:
    checkpoint: str  # for lsi.checkpoints.load_checkpoint, or "tiny:<hf dir>" for random tiny weights
    hf_directory: str
    gguf_file: str | None
    batch_size: int
    length: int
    learning_rate: float
    warmup: int
    repeats: int
    seed: int = 0
    dtype: str = "float32"  # our compute dtype
    remat: str = "none"
    num_microbatches: int = 1

    def tokens(self, vocab_size: int) -> np.ndarray:
        return np.random.default_rng(self.seed).integers(0, vocab_size, (self.batch_size, self.length)).astype(
            np.int32)


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one n^3 matmul in `dtype` on the default device: the practical peak MFU is measured against."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    timing = common.time_call(lambda: f(a, a).block_until_ready(), warmup=2, repeats=repeats)
    return 2.0 * n ** 3 / timing["min_s"]


def _load_ours(work: Workload) -> tuple[Any, Any]:
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

    return load_checkpoint(work.hf_directory if work.checkpoint.startswith("tiny") else work.checkpoint)


def run_ours(work: Workload, peak_flops: float | None = None) -> dict[str, Any]:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from lsi.partitioning import make_mesh  # noqa: PLC0415
    from lsi.training.optimizers import OptimizerConfig  # noqa: PLC0415
    from lsi.training.trainer import TrainConfig, _compiled_step, _model_config, initial_state  # noqa: PLC0415

    cfg, params = _load_ours(work)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[work.dtype]
    opt = OptimizerConfig(name="adamw", learning_rate=work.learning_rate, clip_norm=1.0, weight_decay=0.0)
    tc = TrainConfig(steps=1, batch_size=work.batch_size, seq_length=work.length, optimizer=opt, dtype=dtype,
                     num_microbatches=work.num_microbatches)
    cfg = _model_config(tc, cfg.replace(remat=work.remat))
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    step_fn, shardings, _ = _compiled_step(cfg, opt, work.num_microbatches, mesh, (work.batch_size, work.length))
    state = initial_state(params, opt, shardings, seed=0)
    del params
    tokens = work.tokens(cfg.vocab_size)
    batch = {"tokens": tokens, "positions": np.broadcast_to(np.arange(work.length, dtype=np.int32), tokens.shape),
             "segment_ids": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}
    batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    holder: dict[str, Any] = {"state": state}
    losses: list[float] = []

    def one_step() -> None:
        holder["state"], metrics = step_fn(holder["state"], batch)
        losses.append(float(metrics["loss"]))  # blocks until the step is done

    start = time.perf_counter()
    one_step()
    first_step_s = time.perf_counter() - start  # includes the compile
    timing = common.time_call(one_step, warmup=max(work.warmup - 1, 0), repeats=work.repeats)
    tokens_per_step = work.batch_size * work.length
    tokens_per_s = tokens_per_step / timing["median_s"]
    if peak_flops is None:
        peak_flops = measure_matmul_peak(work.dtype)
    flops_per_token = cfg.flops_per_token(work.length)
    return {
        "first_step_s_including_compile": first_step_s,
        "timing": timing,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_range": common.throughput(tokens_per_step, timing),
        "first_step_loss": losses[0],
        "losses": losses,
        "flops_per_token": flops_per_token,
        "achieved_flops_per_s": flops_per_token * tokens_per_s,
        "peak_flops_per_s": peak_flops,
        "mfu": flops_per_token * tokens_per_s / peak_flops,
        "device": str(jax.devices()[0]),
        "num_params": cfg.num_params,
    }


def run_theirs(work: Workload) -> dict[str, Any]:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    kwargs = {"gguf_file": work.gguf_file} if work.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(work.hf_directory, dtype=torch.float32, **kwargs)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=work.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.0)
    tokens = torch.tensor(work.tokens(model.config.vocab_size), dtype=torch.long)
    losses: list[float] = []

    def one_step() -> None:
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    timing = common.time_call(one_step, warmup=work.warmup, repeats=work.repeats)
    tokens_per_step = work.batch_size * work.length
    return {
        "timing": timing,
        "tokens_per_s": tokens_per_step / timing["median_s"],
        "tokens_per_s_range": common.throughput(tokens_per_step, timing),
        "first_step_loss": losses[0],
        "losses": losses,
        "torch_threads": torch.get_num_threads(),
    }


def tiny_checkpoint(directory: pathlib.Path, dtype: Any = None) -> str:
    """A random tiny Llama written as a HF directory both sides load."""
    import jax  # noqa: PLC0415

    from lsi.checkpoints import save_hf_directory  # noqa: PLC0415
    from lsi.models import get_config, init_params  # noqa: PLC0415

    cfg = get_config("tiny")
    save_hf_directory(cfg, init_params(cfg, jax.random.PRNGKey(0)), directory)
    return str(directory)


@dataclasses.dataclass
class _Side:
    value: dict[str, Any]
    process_peak_rss_bytes: int
    wall_s: float


def _isolated(fn: Any, *args: Any) -> _Side:
    """`common.run_isolated` -> (value, peak RSS, wall seconds including the process start)."""
    start = time.perf_counter()
    result = common.run_isolated(fn, *args)
    wall = time.perf_counter() - start
    if isinstance(result, tuple):
        value, peak = result
    else:  # an older common.py returned an object
        value, peak = result.value, result.process_peak_rss_bytes
    return _Side(value, peak, wall)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak_flops", type=float, default=None, help="FLOP/s for MFU; default: measured")
    parser.add_argument("--no_reference", action="store_true", help="skip the PyTorch side")
    parser.add_argument("--quiet_load", type=float, default=1.5, help="wait (up to 10 min) for this 1-min load")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    if args.config == "tiny":
        hf_dir, gguf, checkpoint = tiny_checkpoint(pathlib.Path(tmp.name) / "tiny"), None, "tiny"
        batch, length, output = args.batch_size or 2, args.length or 32, args.output
        warmup, repeats = 1, min(args.repeats, 2)
    else:
        from lsi.checkpoints import resolve_model_path  # noqa: PLC0415

        path = resolve_model_path("smollm2-135m-instruct")
        hf_dir, gguf, checkpoint = str(path.parent), path.name, "smollm2-135m-instruct"
        batch, length, output = args.batch_size or 8, args.length or 256, args.output or DEFAULT_OUTPUT
        warmup, repeats = args.warmup, args.repeats
        deadline = time.time() + 600
        while os.getloadavg()[0] > args.quiet_load and time.time() < deadline:
            time.sleep(10)
    work = Workload(checkpoint, hf_dir, gguf, batch, length, args.learning_rate, warmup, repeats)
    load_before = os.getloadavg()[0]
    ours = _isolated(run_ours, work, args.peak_flops)
    theirs = None if args.no_reference else _isolated(run_theirs, work)
    record: dict[str, Any] = {
        "benchmark": "trainer",
        "workload": dataclasses.asdict(work),
        "ours": {**ours.value, "process_peak_rss_bytes": ours.process_peak_rss_bytes, "process_wall_s": ours.wall_s},
        "load_average_1min_before": load_before,
        "environment": common.environment_info(PACKAGES, ENV_VARS),
    }
    if theirs is not None:
        record["pytorch"] = {**theirs.value, "process_peak_rss_bytes": theirs.process_peak_rss_bytes,
                             "process_wall_s": theirs.wall_s}
        record["speedup_tokens_per_s"] = ours.value["tokens_per_s"] / theirs.value["tokens_per_s"]
        record["pytorch"]["mfu"] = (ours.value["flops_per_token"] * theirs.value["tokens_per_s"]
                                    / ours.value["peak_flops_per_s"])
        record["first_step_loss_difference"] = abs(ours.value["first_step_loss"] - theirs.value["first_step_loss"])
    rows = [["ours (jax)", ours.value["tokens_per_s"], ours.value["mfu"], ours.value["first_step_loss"]]]
    if theirs is not None:
        rows.append(["pytorch", theirs.value["tokens_per_s"], record["pytorch"]["mfu"],
                     theirs.value["first_step_loss"]])
    print(common.format_table(["side", "tokens/s", "MFU", "first loss"], rows))
    if theirs is not None:
        print(f"speedup: {record['speedup_tokens_per_s']:.2f}x")
    if output is not None:
        common.write_json(output, record)
        print(f"wrote {output}")
    tmp.cleanup()
    return record


if __name__ == "__main__":
    main()
