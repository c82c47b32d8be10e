"""Training throughput: our jitted train step (`lsi.training.trainer`) against a plain PyTorch loop on transformers'
model of the same checkpoint, same batch, same optimizer (AdamW, clip 1.0, no weight decay), float32, in one run.

Each side lives in its own spawned process and trains on the same random batch of `batch x length` token ids,
loss on every next-token prediction (no padding, one segment per row), so both do identical work. Both processes are
alive at once and take turns, two steps a turn of which the second is timed: this machine's speed drifts by 15-25%
within an hour, and turns let the drift hit both sides alike. Tokens/s is batch * length / median timed step after
warmup turns; each side's first step runs when it is built (ours includes the compile, reported apart).
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
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import common, model_sources

DEFAULT_OUTPUT = common.RESULTS / "trainer_cpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS")


@dataclasses.dataclass(frozen=True)
class Workload:
    checkpoint: str  # for lsi.checkpoints.load_checkpoint; "tiny": the random tiny model of `hf_directory`;
    # "random:<config name>": that config's random init (no reference side can load it)
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

    @property
    def checkpoint_path(self) -> str:
        """What `lsi.checkpoints` loads: the tiny model's HF directory, or the checkpoint's name."""
        return self.hf_directory if self.checkpoint == "tiny" else self.checkpoint

    def tokens(self, vocab_size: int) -> np.ndarray:
        return np.random.default_rng(self.seed).integers(0, vocab_size, (self.batch_size, self.length)).astype(
            np.int32)


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


def gemm_floor(library: str, cfg: Any, tokens: int, compile: Callable[[Callable], Callable],
               to_device: Callable[[np.ndarray], Any], block: Callable[[Any], Any], repeats: int = 2) -> dict[str, Any]:
    """Seconds the step's dense GEMMs (`dense_gemms`) take alone in `library`, float32, each at the fastest of its
    four operand layouts (a or a^T times b or b^T): no step built on that library's matmuls can be faster on this
    machine. `compile`, `to_device` and `block` are the library's (jax.jit or nothing, its array, its wait)."""
    def product(a: Any, b: Any, ta: bool, tb: bool) -> Any:
        return (a.T if ta else a) @ (b.T if tb else b)

    layouts = {(ta, tb): compile(functools.partial(product, ta=ta, tb=tb))
               for ta in (False, True) for tb in (False, True)}
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks import ours, peers  # noqa: PLC0415  (each side's process imports only its own)
    from lsi.io_utils import write_json_atomic  # noqa: PLC0415

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
    tiny = args.config == "tiny"  # random tiny weights written as a HF directory, which both sides load
    source = (model_sources.random_weight_source("tiny", 0, pathlib.Path(tmp.name) / "tiny") if tiny
              else model_sources.checkpoint_source("smollm2-135m-instruct"))
    if not tiny:
        common.wait_for_quiet(args.quiet_load, timeout_s=600, poll_s=10)
    work = Workload("tiny" if tiny else "smollm2-135m-instruct", source.hf_directory, source.gguf_file,
                    args.batch_size or (2 if tiny else 8), args.length or (32 if tiny else 256), args.learning_rate,
                    1 if tiny else args.warmup, min(args.repeats, 2) if tiny else args.repeats)
    output = args.output or (None if tiny else DEFAULT_OUTPUT)
    load_before = os.getloadavg()[0]
    sides = ({"ours": ours.OursTrainStep}
             | ({"ours_autodiff": functools.partial(ours.OursTrainStep, custom_grads=False)} if args.autodiff_side
                else {})
             | ({} if args.no_reference else {"pytorch": peers.TorchTrainStep}))
    with contextlib.ExitStack() as stack:
        start = time.perf_counter()
        handles = {name: stack.enter_context(common.SideProcess(factory, work)) for name, factory in sides.items()}
        setup_s = time.perf_counter() - start
        # A step right after the other process's step ran 10-25% slower than one right after its own, on both
        # sides (measured here), so each timed step follows an untimed one of its own side.
        timings = common.time_sides(handles, warmup=max(work.warmup - 1, 0), repeats=work.repeats, settle=True)
        peak_flops = args.peak_flops or handles["ours"].call("matmul_peak")  # measured where XLA runs
        results = {}
        for name, handle in handles.items():
            results[name] = handle.call("finish")
            results[name]["process_peak_rss_bytes"] = handle.close()
    tokens_per_step = work.batch_size * work.length
    mine, theirs = results["ours"], results.get("pytorch")
    for name, side in results.items():
        side["timing"] = timings[name]
        side["tokens_per_s"] = tokens_per_step / side["timing"]["median_s"]
        side["tokens_per_s_range"] = common.throughput(tokens_per_step, side["timing"])
        side["mfu"] = mine["flops_per_token"] * side["tokens_per_s"] / peak_flops
    mine["achieved_flops_per_s"] = mine["flops_per_token"] * mine["tokens_per_s"]
    mine["peak_flops_per_s"] = peak_flops
    record: dict[str, Any] = {
        "benchmark": "trainer",
        "workload": dataclasses.asdict(work),
        "ours": mine,
        "load_average_1min_before": load_before,
        "setup_s_both_processes": setup_s,
        "environment": common.environment_info(PACKAGES, ENV_VARS),
    }
    if "ours_autodiff" in results:  # what the hand-written backward passes buy on this backend
        record["ours_autodiff"] = results["ours_autodiff"]
        record["custom_grads_speedup"] = mine["tokens_per_s"] / results["ours_autodiff"]["tokens_per_s"]
    if theirs is not None:
        record["pytorch"] = theirs
        record["speedup_tokens_per_s"] = mine["tokens_per_s"] / theirs["tokens_per_s"]
        record["first_step_loss_difference"] = abs(mine["first_step_loss"] - theirs["first_step_loss"])
        # What the dense GEMMs alone allow: a step of nothing but XLA's matmuls, against PyTorch's whole step.
        record["speedup_ceiling_from_gemm_floor"] = (tokens_per_step / mine["dense_gemm_floor"]["seconds"]
                                                     / theirs["tokens_per_s"])
    rows = [[name, side["tokens_per_s"], side["mfu"], side["first_step_loss"]] for name, side in results.items()]
    print(common.table(["side", "tokens/s", "MFU", "first loss"], rows))
    if theirs is not None:
        print(f"speedup: {record['speedup_tokens_per_s']:.2f}x (at most "
              f"{record['speedup_ceiling_from_gemm_floor']:.2f}x if our step were only its dense GEMMs)")
    if output is not None:
        write_json_atomic(output, record)
        print(f"wrote {output}")
    tmp.cleanup()
    return record


if __name__ == "__main__":
    main()
