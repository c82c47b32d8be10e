"""Prefill throughput of the full forward pass: ours (`jax.jit` of `Transformer.apply`) against transformers/torch.

Both sides run in one invocation on the same seeded random token batch, compute full float32 logits
[batch, length, vocab], and use the same CPU cores (torch threads = usable cores; XLA's default single CPU device,
whose thread pool already spans every core). Each side lives in its own spawned process, so its peak memory is its
own; the timed calls alternate between the sides (ours, theirs, theirs, ours, ...), so that load from other processes
on a shared machine hits both alike, and the result records how busy other processes kept the CPUs during each call.
The logits of both sides are compared on the benchmark batch.

    # SmolLM2-135M-Instruct (the packaged GGUF), float32, 8 x 512 -> benchmarks/results/forward_cpu.json
    python -m benchmarks.forward
    # seconds: a tiny random-weight model (transformers gets the same weights through a HF directory)
    python -m benchmarks.forward --config tiny --output /tmp/forward_tiny.json
    # investigation: extra XLA flags for our side only
    python -m benchmarks.forward --xla_flags=--xla_cpu_experimental_ynn_fusion_type= --no_reference

Tokens/s is batch * length / (median wall time of one forward), over `--repeats` timed calls after `--warmup`.
On a shared machine read it with the table's `other cores` (cores other processes kept busy during the timed calls:
near 0 means a clean figure) and `cpu s/call` (CPU seconds of the side's own threads, which contention inflates far
less than wall time); `--wait_quiet SECONDS` waits for idle CPUs before timing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import hashlib
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `lsi` importable from the repo root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common, model_sources  # noqa: E402
from benchmarks.model_sources import ModelSource  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = "smollm2-135m-instruct"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "forward_cpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "gguf", "safetensors", "psutil")
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS", "JAX_ENABLE_X64")
LOGITS_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Workload:
    batch: int
    length: int
    seed: int
    warmup: int
    repeats: int

    @property
    def tokens_per_call(self) -> int:
        return self.batch * self.length


def benchmark_tokens(workload: Workload, vocab_size: int) -> np.ndarray:
    """The shared input: int32 [batch, length] uniform over the vocabulary, from `workload.seed` alone."""
    rng = np.random.default_rng(workload.seed)
    return rng.integers(0, vocab_size, size=(workload.batch, workload.length), dtype=np.int32)


def _digest(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:16]


class OursForward:
    """Our side: loads the checkpoint, puts the params on the device once, compiles the jitted forward."""

    def __init__(self, source: ModelSource, workload: Workload) -> None:
        import jax  # noqa: PLC0415  (imported here so that XLA_FLAGS given to a child process take effect)

        from lsi.checkpoints import load_checkpoint  # noqa: PLC0415
        from lsi.models import Transformer  # noqa: PLC0415

        self._jax = jax
        start = time.perf_counter()
        cfg, host_params = load_checkpoint(source.ours)
        self.params = jax.block_until_ready(jax.device_put(host_params))
        del host_params  # only the device copy stays alive, as in a real run
        gc.collect()
        self.load_s = time.perf_counter() - start
        self.cfg = cfg
        self.tokens = benchmark_tokens(workload, cfg.vocab_size)
        self.device_tokens = jax.block_until_ready(jax.device_put(self.tokens))

        model = Transformer(cfg)
        forward = jax.jit(lambda p, t: model.apply({"params": p}, t))  # [batch, length] -> [batch, length, vocab]
        start = time.perf_counter()
        lowered = forward.lower(self.params, self.device_tokens)
        self.lower_s = time.perf_counter() - start
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.logits = None
        self.memory = _ForwardMemory()

    def run_once(self) -> tuple[float, float]:
        """(wall s, CPU s) of one forward, including `block_until_ready`."""
        self.memory.start()
        self.logits = None  # free the previous output first, as a loop that consumes each result would

        def call() -> None:
            self.logits = self._jax.block_until_ready(self.compiled(self.params, self.device_tokens))

        return common.timed_call(call)

    def finish(self, logits_path: str | None) -> dict[str, Any]:
        memory = self.memory.stop()
        if logits_path:
            np.save(logits_path, np.asarray(self.logits))
        jax, cfg = self._jax, self.cfg
        return {
            "model_config": dataclasses.asdict(cfg) | {"dtype": str(np.dtype(cfg.dtype)),
                                                      "param_dtype": str(np.dtype(cfg.param_dtype))},
            "num_params": cfg.num_params,
            "forward_flops_per_token": cfg.flops_per_token(self.tokens.shape[1]) / 3.0,
            "logits_shape": list(self.logits.shape),
            "logits_dtype": str(self.logits.dtype),
            "tokens_sha256_16": _digest(self.tokens),
            "load_s": self.load_s,
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            "memory": memory,
            "runtime": {
                "jax_backend": jax.default_backend(),
                "jax_devices": [str(d) for d in jax.devices()],
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
            },
        }


class TheirsForward:
    """transformers' own loading of the same weights; every call under `torch.inference_mode()`."""

    def __init__(self, source: ModelSource, workload: Workload, threads: int) -> None:
        import torch  # noqa: PLC0415
        from transformers import AutoModelForCausalLM  # noqa: PLC0415

        self._torch = torch
        torch.set_num_threads(threads)
        start = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(source.hf_directory, gguf_file=source.gguf_file,
                                                          dtype=torch.float32).eval()
        self.load_s = time.perf_counter() - start
        self.tokens = benchmark_tokens(workload, self.model.config.vocab_size)
        self.input_ids = torch.from_numpy(self.tokens.astype(np.int64))
        self.logits = None
        self.memory = _ForwardMemory()

    def run_once(self) -> tuple[float, float]:
        self.memory.start()
        self.logits = None

        def call() -> None:
            with self._torch.inference_mode():
                # use_cache=False: our full forward returns only logits, so neither side keeps a KV cache.
                self.logits = self.model(input_ids=self.input_ids, use_cache=False).logits

        return common.timed_call(call)

    def finish(self, logits_path: str | None) -> dict[str, Any]:
        memory = self.memory.stop()
        if logits_path:
            np.save(logits_path, self.logits.float().numpy())
        torch = self._torch
        return {
            "model_class": type(self.model).__name__,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "logits_shape": list(self.logits.shape),
            "logits_dtype": str(self.logits.dtype),
            "tokens_sha256_16": _digest(self.tokens),
            "load_s": self.load_s,
            "memory": memory,
            "runtime": {
                "torch_num_threads": torch.get_num_threads(),
                "torch_num_interop_threads": torch.get_num_interop_threads(),
                "mkldnn_available": torch.backends.mkldnn.is_available(),
                "mkl_available": torch.backends.mkl.is_available(),
            },
        }


class _ForwardMemory:
    """RSS when the first forward starts, and the peak from then until `stop` (warmup and timed calls)."""

    def __init__(self) -> None:
        self._peak: common.PeakRSS | None = None

    def start(self) -> None:
        if self._peak is None:
            gc.collect()
            self._peak = common.PeakRSS().__enter__()

    def stop(self) -> dict[str, Any]:
        peak = self._peak
        peak.__exit__(None, None, None)
        return {"rss_before_forward_mib": peak.start_bytes / common.MIB,
                "forward_peak_rss_mib": peak.peak_bytes / common.MIB, "method": peak.method}


def compare_logits(ours_path: str, theirs_path: str, chunk_rows: int = 1) -> dict[str, Any]:
    """Max abs difference and argmax agreement of two saved [batch, length, vocab] arrays, a few rows at a time."""
    ours = np.load(ours_path, mmap_mode="r")
    theirs = np.load(theirs_path, mmap_mode="r")
    if ours.shape != theirs.shape:
        raise ValueError(f"logits shapes differ: ours {ours.shape}, theirs {theirs.shape}")
    max_abs = 0.0
    sum_abs = 0.0
    max_ref = 0.0
    same_argmax = 0
    for row in range(0, ours.shape[0], chunk_rows):
        a = np.asarray(ours[row:row + chunk_rows], np.float32)
        b = np.asarray(theirs[row:row + chunk_rows], np.float32)
        diff = np.abs(a - b)
        max_abs = max(max_abs, float(np.max(diff)))
        sum_abs += float(np.sum(diff, dtype=np.float64))
        max_ref = max(max_ref, float(np.max(np.abs(b))))
        same_argmax += int(np.sum(a.argmax(-1) == b.argmax(-1)))
    positions = ours.shape[0] * ours.shape[1]
    return {
        "max_abs_diff": max_abs,
        "mean_abs_diff": sum_abs / ours.size,
        "max_abs_logit": max_ref,
        "argmax_agreement": same_argmax / positions,
        "tolerance": LOGITS_TOLERANCE,
        "within_tolerance": max_abs < LOGITS_TOLERANCE,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="packaged model name, .gguf file or HF directory (default: %(default)s)")
    source.add_argument("--config", default=None,
                        help="named lsi config with random weights instead of a checkpoint, e.g. 'tiny' (smoke test)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side before timing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the token batch (and of random weights)")
    parser.add_argument("--threads", type=int, default=common.usable_cores(),
                        help="torch intra-op threads (default: usable cores, %(default)s)")
    parser.add_argument("--output", default=None,
                        help=f"JSON path (default: {DEFAULT_OUTPUT.relative_to(REPO)} for a checkpoint, "
                             "a temp-dir path for --config)")
    parser.add_argument("--no_reference", "--no-reference", dest="reference", action="store_false",
                        help="skip the transformers side")
    parser.add_argument("--no_isolate", "--no-isolate", dest="isolate", action="store_false",
                        help="run both sides in this process: faster start, but no per-side process peak memory, "
                             "and the two runtimes' thread pools share one process (timings less trustworthy)")
    parser.add_argument("--wait_quiet", "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="after loading, wait up to SECONDS for other processes to leave the CPUs idle before timing")
    parser.add_argument("--xla_flags", "--xla-flags", default=None,
                        help="XLA_FLAGS for our side's process (appended to the inherited ones); needs isolation")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.length < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch, --length and --repeats must be >= 1 and --warmup >= 0.")
    if args.xla_flags and not args.isolate:
        parser.error("--xla_flags needs a fresh process for our side; drop --no_isolate.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    workload = Workload(batch=args.batch, length=args.length, seed=args.seed, warmup=args.warmup,
                        repeats=args.repeats)
    if args.output:
        output = pathlib.Path(args.output)
    elif args.config:
        output = pathlib.Path(tempfile.gettempdir()) / "lsi-benchmarks" / f"forward_{args.config}.json"
    else:
        output = DEFAULT_OUTPUT
    ours_env = None
    if args.xla_flags:
        ours_env = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()}

    with tempfile.TemporaryDirectory(prefix="lsi-forward-") as tmp:
        tmpdir = pathlib.Path(tmp)
        if args.config:
            source = model_sources.random_weight_source(args.config, args.seed, tmpdir / "model")
        else:
            source = model_sources.checkpoint_source(args.checkpoint)
        ours_logits = str(tmpdir / "ours.npy") if args.reference else None
        theirs_logits = str(tmpdir / "theirs.npy")

        print(f"[forward] loading both sides: {source.description}, batch {workload.batch} x length "
              f"{workload.length}; torch threads {args.threads}", flush=True)
        sides = {"ours": (OursForward, (source, workload), ours_env, ours_logits)}
        if args.reference:
            sides["transformers"] = (TheirsForward, (source, workload, args.threads), None, theirs_logits)
        with contextlib.ExitStack() as stack:
            if args.isolate:
                handles = {name: stack.enter_context(common.SideProcess(factory, *fargs, env=env))
                           for name, (factory, fargs, env, _) in sides.items()}
                calls = {name: functools.partial(handle.call, "run_once") for name, handle in handles.items()}
            else:
                handles = {name: factory(*fargs) for name, (factory, fargs, _, _) in sides.items()}
                calls = {name: handle.run_once for name, handle in handles.items()}
            quiet = common.wait_until_quiet(timeout_s=args.wait_quiet) if args.wait_quiet else None
            print(f"[forward] timing {', '.join(sides)}: {workload.warmup} warmup + {workload.repeats} timed "
                  f"calls each, alternating", flush=True)
            timings = common.time_interleaved(calls, warmup=workload.warmup, repeats=workload.repeats)
            results = {}
            for name, handle in handles.items():
                logits_path = sides[name][3]
                if args.isolate:
                    results[name] = handle.call("finish", logits_path)
                    results[name]["memory"]["process_peak_rss_mib"] = handle.close() / common.MIB
                else:
                    results[name] = handle.finish(logits_path)
                    results[name]["memory"]["process_peak_rss_mib"] = None
                results[name]["timing"] = timings[name]
        ours, theirs, correctness = results["ours"], results.get("transformers"), None
        if theirs is not None:
            if theirs["tokens_sha256_16"] != ours["tokens_sha256_16"]:
                raise RuntimeError("The two sides saw different token batches; vocab sizes differ?")
            correctness = compare_logits(ours_logits, theirs_logits)

    tokens = workload.tokens_per_call
    ours_tps = common.throughput(tokens, ours["timing"])
    theirs_tps = common.throughput(tokens, theirs["timing"]) if theirs else None
    flops = ours["forward_flops_per_token"]
    record = {
        "benchmark": "forward",
        "description": "prefill: one full forward of a [batch, length] token batch to float32 logits "
                       "[batch, length, vocab]; tokens/s = batch * length / median wall time",
        "model": source.description,
        "dtype": ours["model_config"]["dtype"],
        "batch": workload.batch,
        "length": workload.length,
        "seed": workload.seed,
        "tokens_per_s": {"ours": ours_tps["median"], "transformers": theirs_tps["median"] if theirs_tps else None},
        "ratio_ours_over_transformers": ours_tps["median"] / theirs_tps["median"] if theirs_tps else None,
        "compile_s_ours": ours["lower_s"] + ours["compile_s"],
        "logits_check": correctness,
        "model_tflops_per_s": {  # PaLM appendix-B FLOPs (attention over the full length, masked half included)
            "ours": flops * ours_tps["median"] / 1e12,
            "transformers": flops * theirs_tps["median"] / 1e12 if theirs_tps else None,
        },
        "threads": {"torch": theirs["runtime"]["torch_num_threads"] if theirs else None,
                    "xla": f"default CPU client thread pool over {common.usable_cores()} usable cores"},
        "jax_devices": ours["runtime"]["jax_devices"],
        "xla_flags_ours": ours["runtime"]["xla_flags"],
        "ours": ours | {"tokens_per_s": ours_tps},
        "transformers": None if theirs is None else theirs | {"tokens_per_s": theirs_tps},
        "isolated_processes": args.isolate,
        "machine_quiet_before": quiet,
        **common.environment_info(PACKAGES, ENV_VARS),
    }
    common.write_json(output, record)
    print(_summary(record))
    print(f"[forward] wrote {output}")
    return record


def _summary(record: dict[str, Any]) -> str:
    rows = []
    for side in ("ours", "transformers"):
        result = record[side]
        if result is None:
            continue
        t = result["timing"]
        rows.append([side, record["tokens_per_s"][side], t["median_s"], t["min_s"], t["max_s"],
                     record["model_tflops_per_s"][side] * 1e3, statistics.median(t["cpu_s"]), t["cpu_utilization"],
                     t["other_processes_cores"], result["memory"]["forward_peak_rss_mib"],
                     result["memory"]["process_peak_rss_mib"]])
    header = ["side", "tokens/s", "median s", "min s", "max s", "GFLOP/s", "cpu s/call", "cpu util", "other cores",
              "fwd peak MiB", "proc peak MiB"]
    table = common.format_table(header, rows)
    lines = [f"{record['model']}  {record['dtype']}  batch {record['batch']} x length {record['length']}", table]
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
