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
import gc
import os
import pathlib
import sys
import time
import traceback
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `lsi` importable from the repo root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks import model_sources  # noqa: E402
from benchmarks import sampler as cpu  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_NAME = "sampler_gpu.json"
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "numpy", "torch", "transformers",
            "ml_dtypes")
ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES",
            "JAX_PLATFORMS")

# Defaults of the GPU run and of the seconds-long CPU smoke run (`--config tiny`).
FULL = {"config": "llama_1b", "num_prompts": 64, "samples": 32, "new_tokens": 256, "prompt_lengths": "368,432",
        "bandwidth_mib": 2048}
SMOKE = {"config": "tiny", "num_prompts": 2, "samples": 4, "new_tokens": 8, "prompt_lengths": "20,40",
         "bandwidth_mib": 16}


def _bf16() -> Any:
    import ml_dtypes  # noqa: PLC0415

    return ml_dtypes.bfloat16


def _model_config(config_name: str) -> Any:
    import jax.numpy as jnp  # noqa: PLC0415  (no device is touched: the parent must not claim GPU memory)

    from lsi.models import get_config  # noqa: PLC0415

    return get_config(config_name, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)


# --- our side -----------------------------------------------------------------------------------------------------

def device_bandwidth(num_mib: int, repeats: int = 10) -> dict[str, Any]:
    """Device copy bandwidth: a jitted `x * 2` over a bf16 array reads and writes it once (bytes moved = 2 * size)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    n = num_mib * common.MIB // 2
    x = jax.block_until_ready(jnp.ones((n,), jnp.bfloat16))
    scale = jax.jit(lambda a: a * jnp.asarray(2, a.dtype))
    timing = common.time_call(lambda: jax.block_until_ready(scale(x)), warmup=2, repeats=repeats)
    moved = 2 * n * 2
    return {"array_mib": num_mib, "bytes_moved_per_call": moved, "median_s": timing["median_s"],
            "min_s": timing["min_s"], "bytes_per_s": moved / timing["median_s"],
            "best_bytes_per_s": moved / timing["min_s"]}


def _device_memory() -> dict[str, Any] | None:
    import jax  # noqa: PLC0415

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (CPU backends may not implement it)
        stats = None
    if not stats:
        return None
    return {k: stats[k] / common.MIB for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats}


def measure_ours(config_name: str, workload: cpu.Workload, breakdown: bool, bandwidth_mib: int) -> dict[str, Any]:
    import jax  # noqa: PLC0415

    start = time.perf_counter()
    cfg = _model_config(config_name)
    _, host_params = model_sources.random_params(config_name, workload.seed, _bf16(), dtype=cfg.dtype,
                                       param_dtype=cfg.param_dtype)
    params = jax.block_until_ready(jax.device_put(host_params))
    del host_params
    load_s = time.perf_counter() - start
    compiled, args, compile_s = cpu.compile_sampler(cfg, params, workload.prompts, workload.num_samples,
                                                    workload.max_new_tokens, workload.temperature, workload.top_k,
                                                    workload.seed)
    memory_before = _device_memory()
    out = None

    def call() -> None:
        nonlocal out
        out = None
        out = jax.block_until_ready(compiled(*args))

    with common.PeakRSS() as host_memory:
        timing = common.time_call(call, warmup=workload.warmup, repeats=workload.repeats)
    result = {
        "model_config": cpu._config_dict(cfg),
        "num_params": cfg.num_params,
        "padded_prompt_shape": list(args[1].shape),
        "load_s": load_s,
        "compile_s": compile_s,
        "timing": timing,
        "check": cpu.check_ours(out, workload.max_new_tokens, None),
        "memory": {"device_mib_before_sampling": memory_before, "device_mib_after_sampling": _device_memory(),
                   "sampling_peak_rss_mib": host_memory.peak_bytes / common.MIB},
        "runtime": {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
                    "device_kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")},
    }
    out = compiled = None  # free the sampler's buffers before the breakdown's own
    if breakdown:
        result["breakdown"] = cpu.our_breakdown(cfg, params, workload, timing["median_s"])
    params = args = None
    result["bandwidth"] = device_bandwidth(bandwidth_mib)
    return result


# --- transformers' side -------------------------------------------------------------------------------------------

def _hf_model(config_name: str, seed: int, device: str) -> Any:
    """A LlamaForCausalLM of the equivalent config holding our random weights (float32 draw -> bfloat16)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: PLC0415

    from lsi.checkpoints import config_to_hf  # noqa: PLC0415
    from lsi.checkpoints.layout import params_to_hf  # noqa: PLC0415

    cfg, params = model_sources.random_params(config_name, seed, np.float32)
    hf_config = LlamaConfig(**{k: v for k, v in config_to_hf(cfg).items() if k != "torch_dtype"})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    state = params_to_hf(cfg, params)
    del params
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"weights do not map onto {type(model).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    if cfg.tie_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def measure_theirs(config_name: str, workload: cpu.Workload, breakdown: bool) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(common.usable_cores())
    start = time.perf_counter()
    model = _hf_model(config_name, workload.seed, device)
    load_s = time.perf_counter() - start
    cpu.disable_eos(model)
    tokens, mask = cpu.pad_left(workload.prompts)
    config = cpu.generation_config(workload)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(workload.seed)
    per_call = len(workload.prompts)
    out: list[Any] = []
    errors: list[str] = []

    def call(max_new_config: Any = config) -> None:
        # Prompts in chunks of `per_call` (all of them unless an earlier attempt ran out of memory).
        out.clear()
        for lo in range(0, len(workload.prompts), per_call):
            chunk_ids, chunk_mask = tokens[lo:lo + per_call], mask[lo:lo + per_call]
            keep = chunk_mask.sum(0) > 0  # drop columns that are padding in every row of this chunk
            ids = torch.from_numpy(chunk_ids[:, keep]).to(device)
            attention = torch.from_numpy(chunk_mask[:, keep]).to(device)
            out.append(model.generate(input_ids=ids, attention_mask=attention, generation_config=max_new_config)
                       [:, ids.shape[1]:].cpu())
        sync()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    while True:
        try:
            with torch.inference_mode():
                timing = common.time_call(call, warmup=workload.warmup, repeats=workload.repeats)
            break
        except torch.OutOfMemoryError as e:
            errors.append(f"{per_call} prompts per generate: {str(e).splitlines()[0]}")
        # Outside the except block: its traceback no longer pins the failed call's tensors.
        out.clear()
        gc.collect()
        torch.cuda.empty_cache()
        if per_call == 1:
            raise RuntimeError(f"transformers runs out of memory even with one prompt per generate: {errors}")
        per_call = max(1, per_call // 2)
        torch.cuda.reset_peak_memory_stats()
    generated = torch.cat(out).numpy()
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model_class": type(model).__name__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtype": str(model.dtype),
        "padded_prompt_shape": list(tokens.shape),
        "prompts_per_generate_call": per_call,
        "out_of_memory_retries": errors,
        "effective_eos_token_id": cpu.effective_eos(model, config),
        "load_s": load_s,
        "timing": timing,
        "check": {"generated_shape": list(generated.shape),
                  "all_full_length": bool(generated.shape == (len(workload.prompts) * workload.num_samples,
                                                               workload.max_new_tokens))},
        "memory": {"device_peak_allocated_mib": torch.cuda.max_memory_allocated() / common.MIB
                   if device == "cuda" else None,
                   "device_peak_reserved_mib": torch.cuda.max_memory_reserved() / common.MIB
                   if device == "cuda" else None},
        "runtime": {"torch_num_threads": torch.get_num_threads()},
    }
    if breakdown:
        with torch.inference_mode():
            prefill = common.time_call(lambda: call(cpu.generation_config(workload, max_new_tokens=1)),
                                       warmup=0, repeats=1)
        steps = workload.max_new_tokens - 1
        result["breakdown"] = {
            "prefill_s": prefill["median_s"],
            "decode_s": timing["median_s"] - prefill["median_s"],
            "decode_step_s": (timing["median_s"] - prefill["median_s"]) / steps if steps else None,
            "prefill_share": prefill["median_s"] / timing["median_s"],
        }
    return result


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
    parser.add_argument("--num_prompts", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--new_tokens", type=int, default=None)
    parser.add_argument("--prompt_lengths", default=None, help="lo,hi random prompt lengths (default 368,432)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_k", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bandwidth_mib", type=int, default=None, help="array size of the bandwidth measurement")
    parser.add_argument("--output", default=None, help="JSON path (default $OUT/sampler_gpu.json if $OUT is set, "
                                                       "else benchmarks/results/sampler_gpu.json)")
    parser.add_argument("--no_reference", "--no-reference", dest="reference", action="store_false")
    parser.add_argument("--no_breakdown", "--no-breakdown", dest="breakdown", action="store_false")
    args = parser.parse_args(argv)
    preset = SMOKE if args.config == "tiny" else FULL
    for name in ("config", "num_prompts", "samples", "new_tokens", "prompt_lengths", "bandwidth_mib"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    args.prompt_lengths = tuple(int(s) for s in str(args.prompt_lengths).split(","))
    if min(args.num_prompts, args.samples, args.new_tokens, args.repeats) < 1 or args.warmup < 0:
        parser.error("sizes and --repeats must be >= 1 and --warmup >= 0.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.output:
        output = pathlib.Path(args.output)
    elif os.environ.get("OUT"):
        output = pathlib.Path(os.environ["OUT"]) / DEFAULT_OUTPUT_NAME
    else:
        output = REPO / "benchmarks" / "results" / DEFAULT_OUTPUT_NAME
    cfg = _model_config(args.config)
    prompts = cpu.random_prompts(args.num_prompts, args.prompt_lengths, cfg.vocab_size, args.seed)
    workload = cpu.Workload(prompts=tuple(tuple(p) for p in prompts), num_samples=args.samples,
                            max_new_tokens=args.new_tokens, temperature=args.temperature, top_k=args.top_k,
                            seed=args.seed, warmup=args.warmup, repeats=args.repeats)
    print(f"[gpu_sampler] {args.config} bf16 random weights: {len(prompts)} prompts of {args.prompt_lengths} tokens "
          f"x {args.samples} samples x {args.new_tokens} new tokens", flush=True)
    print("[gpu_sampler] ours", flush=True)
    # One side at a time, each in its own process: on a GPU both could not hold their memory at once.
    value, peak = cpu._run(True, measure_ours, args.config, workload, args.breakdown, args.bandwidth_mib)
    ours = value | {"process_peak_rss_mib": peak}
    theirs, theirs_error = None, None
    if args.reference:
        print("[gpu_sampler] transformers", flush=True)
        try:
            value, peak = cpu._run(True, measure_theirs, args.config, workload, args.breakdown)
            theirs = value | {"process_peak_rss_mib": peak}
        except Exception as e:  # noqa: BLE001  (missing package, OOM at every chunk size, a crashed child)
            theirs_error = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"[gpu_sampler] transformers failed: {theirs_error}", flush=True)

    record = _record(args, cfg, workload, ours, theirs, theirs_error)
    common.write_json(output, record)
    print(_summary(record))
    print(f"[gpu_sampler] wrote {output}")
    return record


def _record(args: argparse.Namespace, cfg: Any, workload: cpu.Workload, ours: dict, theirs: dict | None,
            theirs_error: str | None) -> dict[str, Any]:
    tokens = workload.sampled_tokens_per_call
    ours_tps = common.throughput(tokens, ours["timing"])
    theirs_tps = common.throughput(tokens, theirs["timing"]) if theirs else None
    bandwidth = ours["bandwidth"]["bytes_per_s"]
    floor = bandwidth_floor(cfg, workload, ours["padded_prompt_shape"][1], bandwidth)
    decode_s = ours.get("breakdown", {}).get("decode_s")
    lengths = [len(p) for p in workload.prompts]
    return {
        "benchmark": "gpu_sampler",
        "description": "sampled tokens/s = prompts * samples * new_tokens / median wall time of one call; random "
                       "bf16 weights shared by both sides; no early stop; floor = memory-bandwidth bound of decoding",
        "model": f"config {args.config!r} (bfloat16, random weights, numpy seed {args.seed})",
        "num_params": cfg.num_params,
        "settings": {"num_prompts": len(workload.prompts), "num_samples": workload.num_samples,
                     "max_new_tokens": workload.max_new_tokens, "temperature": workload.temperature,
                     "top_k": workload.top_k, "top_p": 1.0, "eos": "ignored", "seed": workload.seed,
                     "warmup": workload.warmup, "repeats": workload.repeats},
        "prompts": {"token_lengths": lengths, "mean_tokens": float(np.mean(lengths)),
                    "padded_shape_ours": ours["padded_prompt_shape"],
                    "padded_shape_transformers": theirs["padded_prompt_shape"] if theirs else None},
        "sampled_tokens_per_call": tokens,
        "tokens_per_s": {"ours": ours_tps["median"], "transformers": theirs_tps["median"] if theirs_tps else None},
        "ratio_ours_over_transformers": ours_tps["median"] / theirs_tps["median"] if theirs_tps else None,
        "transformers_error": theirs_error,
        "compile_s_ours": ours["compile_s"],
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
        "equal_work_checked": all(r["check"]["all_full_length"] for r in (ours, theirs) if r),
        "breakdown": {side: r.get("breakdown") for side, r in (("ours", ours), ("transformers", theirs)) if r},
        "ours": ours | {"tokens_per_s": ours_tps},
        "transformers": None if theirs is None else theirs | {"tokens_per_s": theirs_tps},
        **common.environment_info(PACKAGES, ENV_VARS),
    }


def _summary(record: dict[str, Any]) -> str:
    s = record["settings"]
    lines = [(f"{record['model']} on {record['device']}: {s['num_prompts']} prompts x {s['num_samples']} samples x "
              f"{s['max_new_tokens']} new tokens")]
    rows = []
    for side in ("ours", "transformers"):
        result = record[side]
        if result is not None:
            t = result["timing"]
            rows.append([side, record["tokens_per_s"][side], t["median_s"], t["min_s"], t["max_s"],
                         record["peak_memory_mib"][f"{side}_device"]])
    lines.append(common.format_table(["side", "tokens/s", "median s", "min s", "max s", "device peak MiB"], rows))
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
