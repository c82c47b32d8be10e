"""Training throughput and MFU of our train step on one accelerator: a ~1B Llama-shaped model (`llama_1b`, random
weights) in bfloat16 compute with float32 master weights and AdamW, against a measured bfloat16 matmul rate.

MFU = cfg.flops_per_token(length) * tokens/s / peak, with the peak the best of a few 8192^3 bf16 `jnp.dot`s on the
same device (or `--peak_flops`, e.g. the datasheet's dense bf16 figure, also recorded when given).

    python -m benchmarks.gpu_trainer                         # llama_1b, 8 x 2048, remat full -> results/trainer_gpu.json
    python -m benchmarks.gpu_trainer --config tiny --output /tmp/gpu_trainer_tiny.json   # CPU smoke test, seconds
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import jax

from benchmarks import common
from benchmarks.ours import OursTrainStep, matmul_peak
from benchmarks.trainer import Workload
from lsi.io_utils import write_json_atomic

DEFAULT_OUTPUT = common.RESULTS / "trainer_gpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS")


def run(config: str, batch_size: int, length: int, num_microbatches: int, remat: str, warmup: int, repeats: int,
        peak_flops: float | None, custom_grads: bool | None = None) -> dict[str, Any]:
    work = Workload(f"random:{config}", "", None, batch_size, length, learning_rate=5e-5, warmup=warmup,
                    repeats=repeats, dtype="bfloat16", remat=remat, num_microbatches=num_microbatches)
    side = OursTrainStep(work, custom_grads=custom_grads)
    timing = common.time_interleaved({"ours": side.run_once}, warmup=max(warmup - 1, 0), repeats=repeats)["ours"]
    tokens_per_s = batch_size * length / timing["median_s"]
    measured_peak = matmul_peak("bfloat16", n=8192 if config == "llama_1b" else 512)
    flops_per_token = side.cfg.flops_per_token(length)
    device = jax.devices()[0]
    memory = device.memory_stats() if hasattr(device, "memory_stats") else None
    record = {
        "config": config, "custom_grads": side.cfg.custom_grads, "num_params": side.cfg.num_params,
        "batch_size": batch_size, "length": length,
        "num_microbatches": num_microbatches, "remat": remat, "compute_dtype": "bfloat16",
        "first_step_s_including_compile": side.first_step_s, "timing": timing, "tokens_per_s": tokens_per_s,
        "losses": side.losses, "flops_per_token": flops_per_token,
        "achieved_flops_per_s": flops_per_token * tokens_per_s,
        "measured_bf16_matmul_flops_per_s": measured_peak,
        "mfu_vs_measured_matmul": flops_per_token * tokens_per_s / measured_peak,
        "device": str(device), "device_kind": device.device_kind,
        "peak_bytes_in_use": (memory or {}).get("peak_bytes_in_use"),
    }
    if peak_flops:
        record["given_peak_flops_per_s"] = peak_flops
        record["mfu_vs_given_peak"] = flops_per_token * tokens_per_s / peak_flops
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("llama_1b", "tiny"), default="llama_1b")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--num_microbatches", type=int, default=1)
    parser.add_argument("--remat", choices=("none", "full", "dots"), default="full")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak_flops", type=float, default=None)
    parser.add_argument("--custom_grads", dest="custom_grads", action="store_const", const=True, default=None,
                        help="time the step with the hand-written backward passes (default: the config's choice)")
    parser.add_argument("--no_custom_grads", dest="custom_grads", action="store_const", const=False,
                        help="time the step without them (XLA's autodiff)")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    tiny = args.config == "tiny"
    record = run(args.config, args.batch_size or (2 if tiny else 8), args.length or (32 if tiny else 2048),
                 args.num_microbatches, args.remat, 1 if tiny else args.warmup, 2 if tiny else args.repeats,
                 args.peak_flops, args.custom_grads)
    record["environment"] = common.environment_info(PACKAGES, ENV_VARS)
    print(common.table(["config", "tokens/s", "MFU (vs measured bf16 matmul)", "first step s"],
                       [[record["config"], record["tokens_per_s"], record["mfu_vs_measured_matmul"],
                         record["first_step_s_including_compile"]]]))
    output = args.output or (None if tiny else DEFAULT_OUTPUT)
    if output is not None:
        write_json_atomic(output, record)
        print(f"wrote {output}")
    return record


if __name__ == "__main__":
    main()
