"""Training throughput: our jitted train step (`lsi.training.trainer`) against a plain PyTorch loop on transformers'
model of the same checkpoint, same batch, same optimizer (AdamW, clip 1.0, no weight decay), float32, in one run.

Each side lives in its own spawned process (`common.SideProcess`) and trains on the same random batch of
`batch x length` token ids, loss on every next-token prediction (no padding, one segment per row), so both do
identical work. Both processes are alive at once and take turns (`common.time_interleaved`), two steps a turn of
which the second is timed: this machine's speed drifts by 15-25% within an hour, and turns let the drift hit both
sides alike. Tokens/s is batch * length / median timed step after warmup turns; each side's first step runs when
it is built (ours includes the compile, reported apart).
MFU = cfg.flops_per_token(length) * tokens/s / peak, where the peak is a float32 matmul rate measured in our process
(a 2048^3 `jnp.dot`), or `--peak_flops`. Both sides' first-step losses are recorded: same weights and batch must give
the same loss, which checks that the comparison is like for like.

Each side also times its library's dense GEMM floor (`gemm_floor`): the step's projection and logits matmuls alone,
each at its fastest operand layout. Our floor against PyTorch's whole step bounds the speedup any XLA:CPU step can
reach on this machine (`speedup_ceiling_from_gemm_floor`).

    python -m benchmarks.trainer                      # SmolLM2-135M, 8 x 256 -> benchmarks/results/trainer_cpu.json
    python -m benchmarks.trainer --config tiny --output /tmp/trainer_tiny.json     # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
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


def dense_gemms(cfg: Any, tokens: int) -> dict[tuple[int, int, int], int]:
    """(m, k, n) -> count of every dense matmul in one training step of `tokens` tokens: each projection's forward
    `x @ w`, its input gradient `dy @ w^T` and its weight gradient `x^T @ dy`, over the layers and the output logits.

    The attention core, norms, softmax, cross entropy and optimizer are left out, so these GEMMs alone are a lower
    bound on any implementation's step on the same hardware."""
    d, f = cfg.embed_dim, cfg.mlp_dim
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    layer = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]  # q k v o, gate up down: (in, out)
    forwards = [(shape, cfg.num_layers) for shape in layer] + [((d, cfg.vocab_size), 1)]
    gemms: dict[tuple[int, int, int], int] = {}
    for (k, n), count in forwards:
        for gemm in ((tokens, k, n), (tokens, n, k), (k, tokens, n)):  # forward, input grad, weight grad
            gemms[gemm] = gemms.get(gemm, 0) + count
    return gemms


def gemm_floor(library: str, cfg: Any, tokens: int, repeats: int = 2) -> dict[str, Any]:
    """Seconds the step's dense GEMMs (`dense_gemms`) take alone in `library` ("jax" or "torch"), float32, each at
    the fastest of its four operand layouts (a or a^T times b or b^T): no step built on that library's matmuls can
    be faster on this machine."""
    def product(a: Any, b: Any, ta: bool, tb: bool) -> Any:
        return (a.T if ta else a) @ (b.T if tb else b)

    if library == "jax":
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        wrap, to_device, block = jax.jit, jnp.asarray, jax.block_until_ready
    else:
        import torch  # noqa: PLC0415

        wrap, to_device, block = (lambda f: f), torch.from_numpy, (lambda x: x)
    layouts = {(ta, tb): wrap(functools.partial(product, ta=ta, tb=tb)) for ta in (False, True) for tb in (False, True)}
    rng = np.random.default_rng(0)
    rows, total = [], 0.0
    for (m, k, n), count in dense_gemms(cfg, tokens).items():
        best = float("inf")
        for (ta, tb), matmul in layouts.items():
            a = to_device(rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32))
            b = to_device(rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32))
            best = min(best, common.time_call(lambda: block(matmul(a, b)), warmup=1, repeats=repeats)["min_s"])
        rows.append({"m": m, "k": k, "n": n, "count": count, "seconds": best, "flops_per_s": 2.0 * m * k * n / best})
        total += count * best
    return {"library": library, "seconds": total, "gemms": rows}


def _checkpoint(work: Workload) -> str:
    """What `lsi.checkpoints` loads for our side: the tiny model's HF directory, or the checkpoint's name."""
    return work.hf_directory if work.checkpoint.startswith("tiny") else work.checkpoint


def _load_ours(work: Workload) -> tuple[Any, Any]:
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

    return load_checkpoint(_checkpoint(work))


class _TrainSide:
    """One side's process: `settle` runs an untimed step, `run_once` times one."""

    def _step(self) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        self._step()

    def run_once(self) -> tuple[float, float]:
        return common.timed_call(self._step)


class OursTrainStep(_TrainSide):
    """Our side, built in its own process: the jitted train step on `work`'s batch, one step per `run_once`."""

    def __init__(self, work: Workload, custom_grads: bool | None = None) -> None:
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        from lsi.partitioning import make_mesh  # noqa: PLC0415
        from lsi.training.optimizers import OptimizerConfig  # noqa: PLC0415
        from lsi.training.trainer import (  # noqa: PLC0415
            TrainConfig, initial_state, make_train_step, training_model_config)

        self.work = work
        cfg, params = _load_ours(work)
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[work.dtype]
        opt = OptimizerConfig(name="adamw", learning_rate=work.learning_rate, clip_norm=1.0, weight_decay=0.0)
        tc = TrainConfig(steps=1, batch_size=work.batch_size, seq_length=work.length, optimizer=opt, dtype=dtype,
                         num_microbatches=work.num_microbatches)
        self.cfg = training_model_config(tc, cfg.replace(remat=work.remat, custom_grads=custom_grads))
        mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
        self.step_fn = make_train_step(self.cfg, opt, work.num_microbatches, mesh, (work.batch_size, work.length))
        self.state = initial_state(params, opt, self.step_fn.shardings)
        del params
        tokens = work.tokens(self.cfg.vocab_size)
        batch = {"tokens": tokens, "positions": np.broadcast_to(np.arange(work.length, dtype=np.int32), tokens.shape),
                 "segment_ids": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}
        self.batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        self.losses: list[float] = []
        start = time.perf_counter()
        self._step()
        self.first_step_s = time.perf_counter() - start  # includes the compile

    def _step(self) -> None:
        self.state, metrics = self.step_fn(self.state, self.batch)
        self.losses.append(float(metrics["loss"]))  # blocks until the step is done

    def matmul_peak(self) -> float:
        return measure_matmul_peak(self.work.dtype)

    def finish(self) -> dict[str, Any]:
        import jax  # noqa: PLC0415

        return {
            "first_step_s_including_compile": self.first_step_s,
            "first_step_loss": self.losses[0],
            "losses": self.losses,
            "flops_per_token": self.cfg.flops_per_token(self.work.length),
            "device": str(jax.devices()[0]),
            "num_params": self.cfg.num_params,
            "dense_gemm_floor": gemm_floor("jax", self.cfg, self.work.batch_size * self.work.length),
        }


class TorchTrainStep(_TrainSide):
    """PyTorch's side, built in its own process: a plain loop on transformers' model with torch's AdamW."""

    def __init__(self, work: Workload) -> None:
        import torch  # noqa: PLC0415
        from transformers import AutoModelForCausalLM  # noqa: PLC0415

        self.work = work
        kwargs = {"gguf_file": work.gguf_file} if work.gguf_file else {}
        self.model = AutoModelForCausalLM.from_pretrained(work.hf_directory, dtype=torch.float32, **kwargs)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=work.learning_rate, betas=(0.9, 0.999),
                                           eps=1e-8, weight_decay=0.0)
        self.tokens = torch.tensor(work.tokens(self.model.config.vocab_size), dtype=torch.long)
        self.losses: list[float] = []
        self._step()  # as our side's first (compiling) step: both sides time steps 2 onwards

    def _step(self) -> None:
        import torch  # noqa: PLC0415

        loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))

    def finish(self) -> dict[str, Any]:
        import torch  # noqa: PLC0415

        from lsi.checkpoints import load_config  # noqa: PLC0415

        return {
            "first_step_loss": self.losses[0],
            "losses": self.losses,
            "torch_threads": torch.get_num_threads(),
            "dense_gemm_floor": gemm_floor("torch", load_config(_checkpoint(self.work)),
                                           self.work.batch_size * self.work.length),
        }


def tiny_checkpoint(directory: pathlib.Path, dtype: Any = None) -> str:
    """A random tiny Llama written as a HF directory both sides load."""
    import jax  # noqa: PLC0415

    from lsi.checkpoints import save_hf_directory  # noqa: PLC0415
    from lsi.models import get_config, init_params  # noqa: PLC0415

    cfg = get_config("tiny")
    save_hf_directory(cfg, init_params(cfg, jax.random.PRNGKey(0)), directory)
    return str(directory)


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
    parser.add_argument("--autodiff_side", action="store_true",
                        help="also time our step without the hand-written backward passes (custom_grads=False)")
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
    sides = ({"ours": OursTrainStep}
             | ({"ours_autodiff": functools.partial(OursTrainStep, custom_grads=False)} if args.autodiff_side else {})
             | ({} if args.no_reference else {"pytorch": TorchTrainStep}))
    with contextlib.ExitStack() as stack:
        start = time.perf_counter()
        handles = {name: stack.enter_context(common.SideProcess(factory, work)) for name, factory in sides.items()}
        setup_s = time.perf_counter() - start
        # A step right after the other process's step ran 10-25% slower than one right after its own, on both
        # sides (measured here), so each timed step follows an untimed one of its own side.
        timings = common.time_interleaved({name: functools.partial(handle.call, "run_once")
                                           for name, handle in handles.items()},
                                          warmup=max(work.warmup - 1, 0), repeats=work.repeats,
                                          settle={name: functools.partial(handle.call, "settle")
                                                  for name, handle in handles.items()})
        peak_flops = args.peak_flops or handles["ours"].call("matmul_peak")  # measured where XLA runs
        results = {}
        for name, handle in handles.items():
            results[name] = handle.call("finish")
            results[name]["process_peak_rss_bytes"] = handle.close()
    tokens_per_step = work.batch_size * work.length
    ours, theirs = results["ours"], results.get("pytorch")
    for name, side in results.items():
        side["timing"] = timings[name]
        side["tokens_per_s"] = tokens_per_step / side["timing"]["median_s"]
        side["tokens_per_s_range"] = common.throughput(tokens_per_step, side["timing"])
        side["mfu"] = ours["flops_per_token"] * side["tokens_per_s"] / peak_flops
    ours["achieved_flops_per_s"] = ours["flops_per_token"] * ours["tokens_per_s"]
    ours["peak_flops_per_s"] = peak_flops
    record: dict[str, Any] = {
        "benchmark": "trainer",
        "workload": dataclasses.asdict(work),
        "ours": ours,
        "load_average_1min_before": load_before,
        "setup_s_both_processes": setup_s,
        "environment": common.environment_info(PACKAGES, ENV_VARS),
    }
    if "ours_autodiff" in results:  # what the hand-written backward passes buy on this backend
        record["ours_autodiff"] = results["ours_autodiff"]
        record["custom_grads_speedup"] = ours["tokens_per_s"] / results["ours_autodiff"]["tokens_per_s"]
    if theirs is not None:
        record["pytorch"] = theirs
        record["speedup_tokens_per_s"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
        record["first_step_loss_difference"] = abs(ours["first_step_loss"] - theirs["first_step_loss"])
        # What the dense GEMMs alone allow: a step of nothing but XLA's matmuls, against PyTorch's whole step.
        record["speedup_ceiling_from_gemm_floor"] = (tokens_per_step / ours["dense_gemm_floor"]["seconds"]
                                                     / theirs["tokens_per_s"])
    rows = [[name, side["tokens_per_s"], side["mfu"], side["first_step_loss"]] for name, side in results.items()]
    print(common.format_table(["side", "tokens/s", "MFU", "first loss"], rows))
    if theirs is not None:
        print(f"speedup: {record['speedup_tokens_per_s']:.2f}x (at most "
              f"{record['speedup_ceiling_from_gemm_floor']:.2f}x if our step were only its dense GEMMs)")
    if output is not None:
        common.write_json(output, record)
        print(f"wrote {output}")
    tmp.cleanup()
    return record


if __name__ == "__main__":
    main()
