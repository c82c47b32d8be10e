"""Sampling throughput on a GPU: our sampler against transformers' `generate`, and against the memory-bandwidth floor.

A ~1B Llama-shaped model (`llama_1b`: Llama-3.2-1B's shape) with random weights in bfloat16, 64 prompts of ~400
random token ids, m = 32 samples each, 256 new tokens, temperature 0.7, top-k 40, no early stop on either side.
transformers gets a `LlamaForCausalLM` built from the equivalent config holding the SAME weights (both sides draw them
from one numpy seed in float32 and round to bfloat16), on cuda, `generate(do_sample=True, num_return_sequences=32)`.
Each side runs in its own spawned process, so each side's device memory is its own.

The floor: decoding is memory-bound, so one decode step cannot take less than (bytes it must read) / (device copy
bandwidth). The bytes are the weights once per step plus the KV cache actually attended: each prompt's real tokens
once (its samples share it) and every sample's own generated tokens so far. Ideal tokens/s = sampled tokens / the
sum of those step floors (the prefill counted as free, so the ideal is an upper bound); we report our fraction of it.

    # on the GPU machine (writes $OUT/sampler_gpu.json, else benchmarks/results/sampler_gpu.json)
    python -m benchmarks.gpu_sampler
    # seconds, on the CPU: the tiny config, tiny workload (transformers on the CPU)
    python -m benchmarks.gpu_sampler --config tiny --output /tmp/gpu_sampler_tiny.json

If transformers is missing, fails or runs out of memory with every prompt in one `generate`, ours is still reported;
on out-of-memory it retries with half as many prompts per `generate` call (reported as `prompts_per_generate_call`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import traceback
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks import sampler as cpu

PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "numpy", "torch", "transformers",
            "ml_dtypes")
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES",
            "JAX_PLATFORMS")

# Defaults of the GPU run and of the seconds-long CPU smoke run (`--config tiny`).
FULL = {"config": "llama_1b", "num_prompts": 64, "samples": 32, "new_tokens": 256, "prompt_lengths": "368,432",
        "bandwidth_mib": 2048}
SMOKE = {"config": "tiny", "num_prompts": 2, "samples": 4, "new_tokens": 8, "prompt_lengths": "20,40",
         "bandwidth_mib": 16}


# --- the floor ----------------------------------------------------------------------------------------------------

def bandwidth_floor(cfg: Any, workload: cpu.Workload, padded_length: int, bytes_per_s: float) -> dict[str, Any]:
    """Seconds the decode steps cannot beat at `bytes_per_s`, for the bytes a step must read, and for what our
    current cache layout reads (the bucketed prefix and every generated slot, masked, at every step)."""
    item = np.dtype(cfg.dtype).itemsize
    kv_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * item
    weights = cfg.num_params * np.dtype(cfg.param_dtype).itemsize
    rows = len(workload.prompts) * workload.num_samples
    prefix_tokens = sum(len(p) for p in workload.prompts)
    steps = np.arange(1, workload.max_new_tokens)  # decode steps; token 0 comes from the prefill's logits
    # At step t every sample attends to its t earlier generated tokens (t written keys) besides the prefix.
    needed = (weights + prefix_tokens * kv_token) * len(steps) + rows * kv_token * float(steps.sum())
    ours_layout = (weights + len(workload.prompts) * padded_length * kv_token
                   + rows * workload.max_new_tokens * kv_token) * len(steps)
    tokens = workload.sampled_tokens_per_call
    return {
        "weights_bytes": weights,
        "kv_bytes_per_token": kv_token,
        "decode_steps": len(steps),
        "bytes_read_all_steps": needed,
        "floor_s": needed / bytes_per_s,
        "ideal_tokens_per_s": tokens * bytes_per_s / needed,
        "our_layout_bytes_all_steps": ours_layout,
        "our_layout_floor_s": ours_layout / bytes_per_s,
        "note": "weights once per step + each prompt's real tokens once per step (shared by its samples) + each "
                "sample's generated tokens so far; prefill counted as free; bandwidth = measured device copy rate",
    }


# --- orchestration ------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="lsi config with random bf16 weights (default llama_1b; "
                                                        "'tiny' selects the CPU smoke workload)")
    cpu.add_workload_flags(parser)
    parser.add_argument("--prompt_lengths", default=None, help="lo,hi random prompt lengths (default 368,432)")
    parser.add_argument("--bandwidth_mib", type=int, default=None, help="array size of the bandwidth measurement")
    parser.add_argument("--output", default=None, help="JSON path (default $OUT/sampler_gpu.json if $OUT is set, "
                                                       "else benchmarks/results/sampler_gpu.json)")
    args = parser.parse_args(argv)
    cpu.apply_preset(parser, args, SMOKE if args.config == "tiny" else FULL)
    args.prompt_lengths = tuple(int(s) for s in str(args.prompt_lengths).split(","))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks import ours, peers  # noqa: PLC0415  (each side's process imports only its own)
    from lsi.io_utils import write_json_atomic  # noqa: PLC0415

    args = parse_args(argv)
    results = pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else common.RESULTS
    output = common.output_path(args.output, None, "gpu_sampler", results / "sampler_gpu.json")
    cfg = ours.bf16_config(args.config)  # touches no device: this process must not claim GPU memory
    prompts = cpu.random_prompts(args.num_prompts, args.prompt_lengths, cfg.vocab_size, args.seed)
    workload = cpu.Workload(prompts=tuple(tuple(p) for p in prompts), num_samples=args.samples,
                            max_new_tokens=args.new_tokens, temperature=args.temperature, top_k=args.top_k,
                            seed=args.seed, warmup=args.warmup, repeats=args.repeats)
    print(f"[gpu_sampler] {args.config} bf16 random weights: {len(prompts)} prompts of {args.prompt_lengths} tokens "
          f"x {args.samples} samples x {args.new_tokens} new tokens", flush=True)
    print("[gpu_sampler] ours", flush=True)
    # One side at a time, each in its own process: on a GPU both could not hold their memory at once.
    value, peak = common.run_isolated(ours.measure_gpu_sampler, args.config, workload, args.breakdown,
                                      args.bandwidth_mib)
    ours = value | {"process_peak_rss_mib": peak}
    theirs, theirs_error = None, None
    if args.reference:
        print("[gpu_sampler] transformers", flush=True)
        try:
            value, peak = common.run_isolated(peers.measure_gpu_sampler, args.config, workload, args.breakdown)
            theirs = value | {"process_peak_rss_mib": peak}
        except Exception as e:  # noqa: BLE001  (missing package, OOM at every chunk size, a crashed child)
            theirs_error = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"[gpu_sampler] transformers failed: {theirs_error}", flush=True)

    record = _record(args, cfg, workload, ours, theirs, theirs_error)
    write_json_atomic(output, record)
    print(_summary(record))
    print(f"[gpu_sampler] wrote {output}")
    return record


def _record(args: argparse.Namespace, cfg: Any, workload: cpu.Workload, ours: dict, theirs: dict | None,
            theirs_error: str | None) -> dict[str, Any]:
    bandwidth = ours["bandwidth"]["bytes_per_s"]
    floor = bandwidth_floor(cfg, workload, ours["padded_prompt_shape"][1], bandwidth)
    decode_s = ours.get("breakdown", {}).get("decode_s")
    return {
        "benchmark": "gpu_sampler",
        "description": "sampled tokens/s = prompts * samples * new_tokens / median wall time of one call; random "
                       "bf16 weights shared by both sides; no early stop; floor = memory-bandwidth bound of decoding",
        "model": f"config {args.config!r} (bfloat16, random weights, numpy seed {args.seed})",
        "num_params": cfg.num_params,
        **cpu.comparison_record(workload, ours, theirs),
        "transformers_error": theirs_error,
        "device": ours["runtime"]["device_kind"],
        "device_bandwidth_gb_per_s": bandwidth / 1e9,
        "bandwidth_floor": floor,
        "fraction_of_ideal": {
            "whole_call": floor["floor_s"] / ours["timing"]["median_s"],
            "decode_only": floor["floor_s"] / decode_s if decode_s else None,
            "decode_only_vs_our_layout_floor": floor["our_layout_floor_s"] / decode_s if decode_s else None,
        },
        "peak_memory_mib": {
            "ours_device": (ours["memory"]["device_mib_after_sampling"] or {}).get("peak_bytes_in_use"),
            "transformers_device": theirs["memory"]["device_peak_allocated_mib"] if theirs else None,
            "ours_process_rss": ours["process_peak_rss_mib"],
            "transformers_process_rss": theirs["process_peak_rss_mib"] if theirs else None,
        },
        **common.environment_info(PACKAGES, ENV_VARS),
    }


def _summary(record: dict[str, Any]) -> str:
    s = record["settings"]
    lines = [(f"{record['model']} on {record['device']}: {s['num_prompts']} prompts x {s['num_samples']} samples x "
              f"{s['max_new_tokens']} new tokens"),
             common.table(common.SIDE_COLUMNS + ["device peak MiB"],
                          common.side_rows(record, lambda side, r: [record["peak_memory_mib"][f"{side}_device"]]))]
    if record["ratio_ours_over_transformers"] is not None:
        lines.append(f"ours / transformers = {record['ratio_ours_over_transformers']:.2f}")
    if record["transformers_error"]:
        lines.append(f"transformers: {record['transformers_error']}")
    floor, frac = record["bandwidth_floor"], record["fraction_of_ideal"]
    lines.append(f"bandwidth {record['device_bandwidth_gb_per_s']:.1f} GB/s -> ideal "
                 f"{floor['ideal_tokens_per_s']:,.0f} tokens/s; ours reaches {100 * frac['whole_call']:.1f}% of it"
                 + (f" ({100 * frac['decode_only']:.1f}% in decode alone)" if frac["decode_only"] else ""))
    lines.append(f"compile (ours): {record['compile_s_ours']:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
