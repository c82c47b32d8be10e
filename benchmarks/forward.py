"""Prefill throughput of the full forward pass: ours (`jax.jit` of `Transformer.apply`) against transformers/torch.

Both sides run in one invocation on the same seeded random token batch, compute full float32 logits
[batch, length, vocab], and use the same CPU cores (torch threads = usable cores; XLA's default single CPU device,
whose thread pool already spans every core). Each side lives in its own process and their timed calls alternate
(`benchmarks.common`). The logits of both sides are compared on the benchmark batch.

    # SmolLM2-135M-Instruct (the packaged GGUF), float32, 8 x 512 -> benchmarks/results/forward_cpu.json
    python -m benchmarks.forward
    # seconds: a tiny random-weight model (transformers gets the same weights through a HF directory)
    python -m benchmarks.forward --config tiny --output /tmp/forward_tiny.json
    # investigation: extra XLA flags for our side only
    python -m benchmarks.forward --xla_flags=--xla_cpu_experimental_ynn_fusion_type= --no_reference

Tokens/s is batch * length / (median wall time of one forward), over `--repeats` timed calls after `--warmup`.
On a shared machine read it with the table's `other cores` (cores other processes kept busy during the timed calls:
near 0 means a clean figure) and `cpu s/call` (CPU seconds of the side's own threads, which contention inflates far
less than wall time); `--wait_quiet SECONDS` waits for a quiet machine (1-min load average below 0.7) before timing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import pathlib
import statistics
import tempfile
from typing import Any

import numpy as np

from benchmarks import common, model_sources

DEFAULT_OUTPUT = common.RESULTS / "forward_cpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "gguf", "safetensors", "psutil")
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS", "JAX_ENABLE_X64")
LOGITS_TOLERANCE = 1e-3
QUIET_LOAD = 0.7  # the 1-min load average `--wait_quiet` waits for, as the sampler benchmark does


@dataclasses.dataclass(frozen=True)
class Workload:
    batch: int
    length: int
    seed: int
    warmup: int
    repeats: int


def benchmark_tokens(workload: Workload, vocab_size: int) -> np.ndarray:
    """The shared input: int32 [batch, length] uniform over the vocabulary, from `workload.seed` alone."""
    rng = np.random.default_rng(workload.seed)
    return rng.integers(0, vocab_size, size=(workload.batch, workload.length), dtype=np.int32)


def digest(tokens: np.ndarray) -> str:
    """16 hex digits naming a token batch, so that a record shows both sides computed the same one."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:16]


def compare_logits(ours_path: str, theirs_path: str, chunk_rows: int = 1) -> dict[str, Any]:
    """Max abs difference and argmax agreement of two saved [batch, length, vocab] arrays, a few rows at a time."""
    ours, theirs = np.load(ours_path, mmap_mode="r"), np.load(theirs_path, mmap_mode="r")
    if ours.shape != theirs.shape:
        raise ValueError(f"logits shapes differ: ours {ours.shape}, theirs {theirs.shape}")
    max_abs = sum_abs = max_ref = 0.0
    same_argmax = 0
    for row in range(0, ours.shape[0], chunk_rows):
        a = np.asarray(ours[row:row + chunk_rows], np.float32)
        b = np.asarray(theirs[row:row + chunk_rows], np.float32)
        diff = np.abs(a - b)
        max_abs = max(max_abs, float(np.max(diff)))
        sum_abs += float(np.sum(diff, dtype=np.float64))
        max_ref = max(max_ref, float(np.max(np.abs(b))))
        same_argmax += int(np.sum(a.argmax(-1) == b.argmax(-1)))
    return {"max_abs_diff": max_abs, "mean_abs_diff": sum_abs / ours.size, "max_abs_logit": max_ref,
            "argmax_agreement": same_argmax / (ours.shape[0] * ours.shape[1]), "tolerance": LOGITS_TOLERANCE,
            "within_tolerance": max_abs < LOGITS_TOLERANCE}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_comparison_flags(parser, DEFAULT_OUTPUT)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    common.add_timing_flags(parser, repeats=3, seed_help="seed of the token batch (and of random weights)")
    parser.add_argument("--wait_quiet", "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help=f"after loading, wait up to SECONDS for a 1-min load average < {QUIET_LOAD} before timing")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.length < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch, --length and --repeats must be >= 1 and --warmup >= 0.")
    common.check_comparison_flags(parser, args)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks import ours, peers  # noqa: PLC0415  (each side's process imports only its own)
    from lsi.io_utils import write_json_atomic  # noqa: PLC0415

    args = parse_args(argv)
    workload = Workload(args.batch, args.length, args.seed, args.warmup, args.repeats)
    output = common.output_path(args.output, args.config, "forward", DEFAULT_OUTPUT)
    with tempfile.TemporaryDirectory(prefix="lsi-forward-") as tmp:
        source = (model_sources.random_weight_source(args.config, args.seed, pathlib.Path(tmp) / "model")
                  if args.config else model_sources.checkpoint_source(args.checkpoint))
        logits_paths = {"ours": f"{tmp}/ours.npy" if args.reference else None, "transformers": f"{tmp}/theirs.npy"}
        print(f"[forward] loading both sides: {source.description}, batch {workload.batch} x length "
              f"{workload.length}; torch threads {args.threads}", flush=True)
        with contextlib.ExitStack() as stack:
            sides = {"ours": stack.enter_context(common.start_side(
                ours.OursForward, source, workload, isolate=args.isolate, env=common.xla_env(args.xla_flags)))}
            if args.reference:
                sides["transformers"] = stack.enter_context(common.start_side(
                    peers.TheirsForward, source, workload, args.threads, isolate=args.isolate))
            quiet = common.wait_for_quiet(QUIET_LOAD, args.wait_quiet) if args.wait_quiet else None
            print(f"[forward] timing {', '.join(sides)}: {workload.warmup} warmup + {workload.repeats} timed "
                  f"calls each, alternating", flush=True)
            timings = common.time_sides(sides, warmup=workload.warmup, repeats=workload.repeats)
            results = {}
            for name, side in sides.items():
                results[name] = side.call("finish", logits_paths[name]) | {"timing": timings[name]}
                peak = side.close()
                results[name]["memory"]["process_peak_rss_mib"] = peak / common.MIB if peak else None
        mine, theirs, correctness = results["ours"], results.get("transformers"), None
        if theirs is not None:
            if theirs["tokens_sha256_16"] != mine["tokens_sha256_16"]:
                raise RuntimeError("The two sides saw different token batches; vocab sizes differ?")
            correctness = compare_logits(logits_paths["ours"], logits_paths["transformers"])

    rates = common.side_rates(workload.batch * workload.length, mine, theirs)
    flops = mine["forward_flops_per_token"]
    record = {
        "benchmark": "forward",
        "description": "prefill: one full forward of a [batch, length] token batch to float32 logits "
                       "[batch, length, vocab]; tokens/s = batch * length / median wall time",
        "model": source.description,
        "dtype": mine["model_config"]["dtype"],
        "batch": workload.batch,
        "length": workload.length,
        "seed": workload.seed,
        **rates,
        "compile_s_ours": mine["lower_s"] + mine["compile_s"],
        "logits_check": correctness,
        # PaLM appendix-B FLOPs (attention over the full length, masked half included)
        "model_tflops_per_s": {side: flops * rate / 1e12 if rate else None
                               for side, rate in rates["tokens_per_s"].items()},
        "threads": {"torch": theirs["runtime"]["torch_num_threads"] if theirs else None,
                    "xla": f"default CPU client thread pool over {common.usable_cores()} usable cores"},
        "jax_devices": mine["runtime"]["jax_devices"],
        "xla_flags_ours": mine["runtime"]["xla_flags"],
        "isolated_processes": args.isolate,
        "machine_quiet_before": quiet,
        **common.environment_info(PACKAGES, ENV_VARS),
    }
    write_json_atomic(output, record)
    print(_summary(record))
    print(f"[forward] wrote {output}")
    return record


def _summary(record: dict[str, Any]) -> str:
    rows = common.side_rows(record, lambda side, r: [
        record["model_tflops_per_s"][side] * 1e3, statistics.median(r["timing"]["cpu_s"]),
        r["memory"]["forward_peak_rss_mib"], r["memory"]["process_peak_rss_mib"]])
    lines = [f"{record['model']}  {record['dtype']}  batch {record['batch']} x length {record['length']}",
             common.table(common.SIDE_COLUMNS + ["GFLOP/s", "cpu s/call", "fwd peak MiB", "proc peak MiB"], rows)]
    if record["ratio_ours_over_transformers"] is not None:
        check = record["logits_check"]
        lines.append(f"ours / transformers = {record['ratio_ours_over_transformers']:.3f}   "
                     f"max |logits diff| = {check['max_abs_diff']:.2e} (mean {check['mean_abs_diff']:.1e}) "
                     f"({'ok' if check['within_tolerance'] else 'ABOVE'} < {check['tolerance']:g}), "
                     f"argmax agreement {check['argmax_agreement']:.4f}")
    lines.append(f"compile (ours): {record['compile_s_ours']:.2f} s   torch threads: {record['threads']['torch']}   "
                 f"jax devices: {', '.join(record['jax_devices'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
