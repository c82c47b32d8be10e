"""Sampling throughput and memory: our sampler (`lsi.decoding.make_sampler`) against transformers' `generate`.

The issue's workload: SmolLM2-135M-Instruct in float32 on the CPU, 8 few-shot GSM8K CoT prompts of ~400 tokens in one
batch, m = 16 samples each, 128 new tokens, temperature 0.7, top-k 40. Neither side stops at EOS (ours: `eos_ids=()`;
transformers: no `eos_token_id` in the model's or the call's generation config, which leaves the distribution alone),
and every returned sample is checked to hold exactly 128 new tokens, so both sides do the same work.

Each side lives in its own spawned process (its peak memory is its own; thread pools do not compete). Both are built,
then the run waits for a quiet machine (1-min load average below `--quiet_load`, up to `--quiet_timeout`), then times
them in alternating rounds (ours, theirs; theirs, ours; ...) so that load from other processes hits both alike.
Tokens/s is prompts * samples * new_tokens / median wall time over `--repeats` calls after `--warmup` calls; our
compile time is measured separately (ahead-of-time `lower().compile()`, so no timed or warmup call includes it).

    # the issue's benchmark -> benchmarks/results/sampler_cpu.json (30-60 minutes on 2 cores)
    python -m benchmarks.sampler
    # seconds: a tiny random-weight model (transformers gets the same weights through a HF directory)
    python -m benchmarks.sampler --config tiny --output /tmp/sampler_tiny.json
    # only the memory experiment (our peak memory for m samples of one ~1500-token prompt)
    python -m benchmarks.sampler --memory_only

Also measured, unless switched off: a breakdown of our time (prefill = a `max_new_tokens=1` call; decode step =
the rest / (new_tokens - 1); the token-choice cost alone; one model decode step alone with the real and with empty
caches) and of theirs (a `max_new_tokens=1` generate), and the memory sweep: our peak memory for m in {1, 4, 16, 64}
samples of one long prompt, one fresh process per m, against the analytic size of what should grow with m (the
per-sample generated KV cache and token buffers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import common, model_sources
from benchmarks.model_sources import ModelSource
from lsi.self_improve.manifest import file_sha256

DEFAULT_OUTPUT = common.RESULTS / "sampler_cpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "gguf", "safetensors", "psutil")
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS", "LSI_DATA_DIR")
TARGET_SPEEDUP = 3.0
PAD_ID = 0
# The files whose version decides our side's speed; hashed when the run starts and where each side imports them.
CODE_FILES = ("lsi/decoding.py", "lsi/models/transformer.py", "lsi/models/configs.py", "lsi/partitioning.py")


@dataclasses.dataclass(frozen=True)
class Workload:
    """What both sides sample; `prompts` are token ids (both sides see exactly these)."""

    prompts: tuple[tuple[int, ...], ...]
    num_samples: int
    max_new_tokens: int
    temperature: float
    top_k: int
    seed: int
    warmup: int
    repeats: int

    @property
    def sampled_tokens_per_call(self) -> int:
        return len(self.prompts) * self.num_samples * self.max_new_tokens


def code_fingerprint() -> dict[str, str | None]:
    """First 16 hex digits of each CODE_FILES file's sha256 (the repository has no pinned revision to cite)."""
    return {name: file_sha256(common.REPO / name)[:16] if (common.REPO / name).is_file() else None
            for name in CODE_FILES}


# --- prompts ------------------------------------------------------------------------------------------------------

def cot_prompts(num_prompts: int, exemplars_per_prompt: int) -> tuple[list[str], list[str]]:
    """Few-shot CoT prompts (texts) and where each one's question came from.

    Prompt i shows `exemplars_per_prompt` of the 8 GSM8K exemplars starting at i (mod 8), then asks GSM8K test
    question i: different prompts that share their structure, as a batch of real prompts does. Without the data file
    it asks the question of an exemplar it does not show.
    """
    from lsi.tasks import PromptFormat, build_prompt, get_task  # noqa: PLC0415

    task = get_task("gsm8k")
    exemplars = task.exemplar_sets["default"]
    shots = exemplars.exemplars
    if exemplars_per_prompt >= len(shots):
        raise ValueError(f"--exemplars must be < {len(shots)} (one exemplar's question is the fallback query).")
    try:
        test = [(e.question, f"gsm8k/{e.metadata['source']}") for e in task.load_eval()[:num_prompts]]
    except FileNotFoundError:
        test = []
    texts, sources = [], []
    for i in range(num_prompts):
        k = (i + exemplars_per_prompt) % len(shots)
        question, source = test[i] if i < len(test) else (shots[k].question, f"exemplar {k} (no gsm8k/test.jsonl)")
        shown = tuple(shots[(i + j) % len(shots)] for j in range(exemplars_per_prompt))
        texts.append(build_prompt(PromptFormat.FEW_SHOT_COT, question, dataclasses.replace(exemplars, exemplars=shown)))
        sources.append(source)
    return texts, sources


def long_cot_prompt(vocab: Any, target_tokens: int) -> tuple[list[int], str]:
    """One few-shot prompt of at most `target_tokens` tokens, the memory sweep's: the 8 CoT exemplars, then GSM8K
    train problems as direct (question, answer) exemplars until the next would not fit, then a question."""
    from lsi.tasks import Exemplar, get_task  # noqa: PLC0415
    from lsi.tasks.prompting import exemplar_block, question_block  # noqa: PLC0415
    from lsi.vocab import encode_model_input  # noqa: PLC0415

    task = get_task("gsm8k")
    exemplars = task.exemplar_sets["default"]
    try:
        train = task.load_pool()[:200]
    except FileNotFoundError:
        train = []
    problems = dataclasses.replace(exemplars, exemplars=tuple(Exemplar(e.question, "", e.answer) for e in train))
    blocks = ([exemplar_block(exemplars, i, cot=True) + "\n" for i in range(len(exemplars.exemplars))]
              + [exemplar_block(problems, i, cot=False) + "\n" for i in range(len(train))])
    blocks *= 1 if train else 1 + target_tokens // 300  # no data: cycle the exemplars
    query = question_block(exemplars.exemplars[0].question) + "A:"
    text = ""
    for block in blocks:
        if len(encode_model_input(vocab, text + block + query)) > target_tokens:
            break
        text += block
    source = "gsm8k exemplars" + (" + gsm8k/train.jsonl problems" if train else " (repeated)")
    return encode_model_input(vocab, text + query), source


def random_prompts(num_prompts: int, lengths: tuple[int, int], vocab_size: int, seed: int) -> list[list[int]]:
    """Uniform random ids (avoiding the first few, often special, ids) with lengths drawn from [lo, hi]."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab_size, size=int(n)).tolist()
            for n in rng.integers(lengths[0], lengths[1] + 1, size=num_prompts)]


def pad(prompts: Sequence[Sequence[int]], width: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """int64 [batch, width] token ids padded on the right (our layout) or on the left (transformers' for batched
    generation), and the mask of real tokens."""
    tokens = np.full((len(prompts), width), PAD_ID, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, ids in enumerate(prompts):
        where = slice(width - len(ids), width) if left else slice(0, len(ids))
        tokens[row, where], mask[row, where] = ids, 1
    return tokens, mask


# --- memory sweep -------------------------------------------------------------------------------------------------

def analytic_sample_bytes(cfg: Any, max_new_tokens: int, prefix_length: int) -> dict[str, float]:
    """Bytes that should scale with m (per sample) and the prefix cache that should not (stored once)."""
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize  # k+v, layers
    generated_kv = kv_per_token * max_new_tokens
    buffers = max_new_tokens * (4 + 4) + 4 * 4  # tokens int32 + log_probs float32 + lengths/done/reason/positions
    logits = 3 * cfg.vocab_size * 4  # one step's float32 logits, log-softmax and scaled copy
    return {
        "generated_kv_cache_bytes_per_sample": generated_kv,
        "token_buffers_bytes_per_sample": buffers,
        "step_logits_bytes_per_sample": logits,
        "total_bytes_per_sample": generated_kv + buffers + logits,
        "prefix_kv_cache_bytes_once": kv_per_token * prefix_length,
    }


def memory_sweep(source: ModelSource, prompt: tuple[int, ...], prompt_source: str, args: argparse.Namespace
                 ) -> dict[str, Any]:
    from benchmarks import ours  # noqa: PLC0415  (this process holds no jax unless it samples itself)
    from lsi.checkpoints import load_config  # noqa: PLC0415

    points = []
    for m in args.sweep_samples:
        print(f"[sampler] memory sweep: m = {m}", flush=True)
        workload = Workload((prompt,), m, args.new_tokens, args.temperature, args.top_k, seed=0, warmup=0, repeats=1)
        value, process_peak = common.run_isolated(ours.memory_point, source.ours, workload, isolate=args.isolate)
        points.append(value | {"process_peak_rss_mib": process_peak})
    analytic = analytic_sample_bytes(load_config(source.ours), args.new_tokens, points[0]["padded_prompt_length"])
    ms = np.asarray([p["num_samples"] for p in points], np.float64)
    peaks = np.asarray([p["call_peak_rss_mib"] for p in points])
    added_samples = points[-1]["num_samples"] - points[0]["num_samples"]
    per_sample_mib = analytic["total_bytes_per_sample"] / common.MIB
    prefix_mib = analytic["prefix_kv_cache_bytes_once"] / common.MIB
    growth = points[-1]["call_peak_rss_mib"] - points[0]["call_peak_rss_mib"]
    expected = added_samples * per_sample_mib
    return {
        "description": "our peak RSS during one sampling call of ONE prompt with m samples, each m in a fresh "
                       "process; the growth with m should be the per-sample generated part only, while a sampler "
                       "that copied the prompt cache per sample would also grow by the prefix cache per sample",
        "prompt_tokens": len(prompt),
        "prompt_source": prompt_source,
        "max_new_tokens": args.new_tokens,
        "points": points,
        "analytic": analytic | {"total_mib_per_sample": per_sample_mib, "prefix_kv_cache_mib_once": prefix_mib},
        "measured_slope_mib_per_sample": float(np.polyfit(ms, peaks, 1)[0]) if len(ms) > 1 else None,
        "measured_growth_mib": growth,
        "analytic_growth_mib": expected,
        "growth_measured_over_analytic": growth / expected if expected else None,
        "growth_if_prefix_copied_per_sample_mib": expected + added_samples * prefix_mib,
    }


# --- orchestration ------------------------------------------------------------------------------------------------

def compare(source: ModelSource, workload: Workload, eos_id: int | None, args: argparse.Namespace
            ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Builds both sides (each in its own process), waits for a quiet machine, then times them in alternating
    rounds (ours, theirs; theirs, ours; ...), so that other processes' load hits both alike."""
    from benchmarks import ours, peers  # noqa: PLC0415  (each side's process imports only its own)
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        print("[sampler] ours: loading and compiling", flush=True)
        sides = {"ours": stack.enter_context(common.start_side(
            ours.OurSampler, functools.partial(load_checkpoint, source.ours), workload, eos_id, isolate=args.isolate,
            env=common.xla_env(args.xla_flags)))}
        if args.reference:
            print(f"[sampler] transformers: loading ({args.threads} torch threads)", flush=True)
            sides["transformers"] = stack.enter_context(common.start_side(
                peers.TheirGenerate, functools.partial(peers.load_pretrained, source.hf_directory, source.gguf_file),
                workload, args.threads, eos_id, isolate=args.isolate))
        quiet = common.wait_for_quiet(args.quiet_load, args.quiet_timeout)
        print(f"[sampler] timing {' and '.join(sides)}: {args.warmup} warmup + {args.repeats} timed calls each",
              flush=True)
        timings = common.time_sides(sides, warmup=args.warmup, repeats=args.repeats)
        quiet["load_average_after_timing"] = list(os.getloadavg())
        results: dict[str, Any] = {}
        for name, side in sides.items():
            print(f"[sampler] {name}: report" + (" and breakdown" if args.breakdown else ""), flush=True)
            result = side.call("report", timings[name]["median_s"], args.breakdown)
            peak, memory = side.close(), result["memory"]
            before_breakdown = memory.pop("process_peak_before_breakdown_mib")
            memory["process_peak_rss_mib"] = before_breakdown if args.isolate else None
            memory["process_peak_incl_breakdown_mib"] = peak / common.MIB if peak else None
            results[name] = result | {"timing": timings[name]}
    return results["ours"], results.get("transformers"), quiet


def add_workload_flags(parser: argparse.ArgumentParser) -> None:
    """The flags this benchmark shares with `benchmarks.gpu_sampler` (None: the preset's value)."""
    parser.add_argument("--num_prompts", type=int, default=None, help="prompts in the batch")
    parser.add_argument("--samples", type=int, default=None, help="samples per prompt, m")
    parser.add_argument("--new_tokens", type=int, default=None, help="tokens sampled per sample")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_k", type=int, default=40)
    common.add_timing_flags(parser, repeats=2, seed_help="sampling seed (and seed of random weights/prompts)")
    parser.add_argument("--no_breakdown", "--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the prefill/decode breakdown of both sides")


def apply_preset(parser: argparse.ArgumentParser, args: argparse.Namespace, preset: dict[str, Any]) -> None:
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if min(args.num_prompts, args.samples, args.new_tokens, args.repeats) < 1 or args.warmup < 0:
        parser.error("sizes and --repeats must be >= 1 and --warmup >= 0.")


# Defaults of the run and of the seconds-long smoke run (`--config`).
FULL = {"num_prompts": 8, "samples": 16, "new_tokens": 128, "sweep_samples": "1,4,16,64",
        "sweep_prompt_tokens": 1500, "quiet_load": 0.7}
SMOKE = {"num_prompts": 3, "samples": 4, "new_tokens": 8, "sweep_samples": "1,4", "sweep_prompt_tokens": 48,
         "quiet_load": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_comparison_flags(parser, DEFAULT_OUTPUT)
    add_workload_flags(parser)
    parser.add_argument("--exemplars", type=int, default=4, help="CoT exemplars per prompt (of the 8)")
    parser.add_argument("--random_prompt_lengths", default="20,40",
                        help="lo,hi token lengths of the random prompts of --config runs")
    parser.add_argument("--no_memory_sweep", "--no-memory-sweep", dest="memory_sweep", action="store_false",
                        help="skip the memory-versus-m experiment")
    parser.add_argument("--memory_only", "--memory-only", action="store_true", help="run only the memory experiment")
    parser.add_argument("--sweep_samples", default=None, help="comma-separated m of the memory sweep (1,4,16,64)")
    parser.add_argument("--sweep_prompt_tokens", type=int, default=None,
                        help="length of the memory sweep's prompt (default 1500)")
    parser.add_argument("--quiet_load", type=float, default=-1.0,
                        help="wait until the 1-min load average is below this before each timed side (default 0.7; "
                             "none for --config runs; 0 disables)")
    parser.add_argument("--quiet_timeout", type=float, default=600.0, help="longest wait for a quiet machine (s)")
    args = parser.parse_args(argv)
    preset = SMOKE if args.config else FULL
    apply_preset(parser, args, preset)
    args.quiet_load = preset["quiet_load"] if args.quiet_load < 0 else args.quiet_load or None  # 0: no wait
    args.sweep_samples = [int(s) for s in str(args.sweep_samples).split(",") if s.strip()]
    args.random_prompt_lengths = tuple(int(s) for s in args.random_prompt_lengths.split(","))
    if min(args.sweep_samples) < 1:
        parser.error("--sweep_samples must be >= 1.")
    common.check_comparison_flags(parser, args)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lsi.checkpoints import load_config  # noqa: PLC0415
    from lsi.io_utils import write_json_atomic  # noqa: PLC0415
    from lsi.vocab import encode_model_input, load_vocabulary  # noqa: PLC0415

    args = parse_args(argv)
    code_at_start = code_fingerprint()
    output = common.output_path(args.output, args.config, "sampler", DEFAULT_OUTPUT)
    with tempfile.TemporaryDirectory(prefix="lsi-sampler-") as tmp:
        if args.config:
            source = model_sources.random_weight_source(args.config, args.seed, pathlib.Path(tmp) / "model")
            vocab_size = load_config(source.ours).vocab_size
            prompts = random_prompts(args.num_prompts, args.random_prompt_lengths, vocab_size, args.seed)
            prompt_sources = ["random ids"] * len(prompts)
            long_prompt = random_prompts(1, (args.sweep_prompt_tokens,) * 2, vocab_size, args.seed + 1)[0]
            long_source, eos_id = "random ids", None
        else:
            source = model_sources.checkpoint_source(args.checkpoint)
            vocab = load_vocabulary(args.checkpoint)
            texts, prompt_sources = cot_prompts(args.num_prompts, args.exemplars)
            prompts = [encode_model_input(vocab, t) for t in texts]
            long_prompt, long_source = long_cot_prompt(vocab, args.sweep_prompt_tokens)
            eos_id = vocab.eos_id
        workload = Workload(prompts=tuple(tuple(p) for p in prompts), num_samples=args.samples,
                            max_new_tokens=args.new_tokens, temperature=args.temperature, top_k=args.top_k,
                            seed=args.seed, warmup=args.warmup, repeats=args.repeats)
        print(f"[sampler] {source.description}: {len(prompts)} prompts of {[len(p) for p in prompts]} tokens x "
              f"{args.samples} samples x {args.new_tokens} new tokens", flush=True)
        ours = theirs = sweep = None
        quiet: dict[str, Any] = {}
        if not args.memory_only:
            ours, theirs, quiet["comparison"] = compare(source, workload, eos_id, args)
        if args.memory_sweep or args.memory_only:
            quiet["memory_sweep"] = common.wait_for_quiet(args.quiet_load, args.quiet_timeout)
            sweep = memory_sweep(source, tuple(long_prompt), long_source, args)

    record = _record(args, source, workload, prompt_sources, ours, theirs, sweep, quiet)
    seen = [code_at_start, code_fingerprint()] + ([ours["code_sha256_16"]] if ours else []) + [
        p["code_sha256_16"] for p in (sweep or {}).get("points", [])]
    record["code_sha256_16"] = {"at_start": code_at_start, "unchanged_during_run": all(c == seen[0] for c in seen)}
    write_json_atomic(output, record)
    print(_summary(record))
    print(f"[sampler] wrote {output}")
    return record


def comparison_record(workload: Workload, ours: dict | None, theirs: dict | None) -> dict[str, Any]:
    """The keys of a result file both sampler benchmarks write: the workload, each side's figures and checks."""
    sides = {side: r for side, r in (("ours", ours), ("transformers", theirs)) if r}
    lengths = [len(p) for p in workload.prompts]
    return {
        "settings": {"num_prompts": len(workload.prompts), "num_samples": workload.num_samples,
                     "max_new_tokens": workload.max_new_tokens, "temperature": workload.temperature,
                     "top_k": workload.top_k, "top_p": 1.0, "eos": "ignored (no early stop on either side)",
                     "seed": workload.seed, "warmup": workload.warmup, "repeats": workload.repeats},
        "prompts": {"token_lengths": lengths, "mean_tokens": float(np.mean(lengths)),
                    "padded_shape_ours": ours["padded_prompt_shape"] if ours else None,
                    "padded_shape_transformers": theirs["padded_prompt_shape"] if theirs else None},
        "sampled_tokens_per_call": workload.sampled_tokens_per_call,
        **common.side_rates(workload.sampled_tokens_per_call, ours, theirs),
        "compile_s_ours": ours["compile_s"] if ours else None,
        "equal_work_checked": all(r["check"]["all_full_length"] for r in sides.values()),
        "breakdown": {side: r.get("breakdown") for side, r in sides.items()},
    }


def _record(args: argparse.Namespace, source: ModelSource, workload: Workload, prompt_sources: list[str],
            ours: dict | None, theirs: dict | None, sweep: dict | None, quiet: dict) -> dict[str, Any]:
    shared = comparison_record(workload, ours, theirs)
    shared["settings"]["exemplars_per_prompt"] = None if args.config else args.exemplars
    shared["prompts"] |= {"sources": prompt_sources,
                          "layout": "ours: right-padded to the next power of two, prefilled once per prompt; "
                                    "transformers: left-padded with an attention mask, each prompt repeated m times"}
    ratio = shared["ratio_ours_over_transformers"]
    mem = {side: (r["memory"]["process_peak_rss_mib"], r["memory"]["sampling_peak_rss_mib"])
           for side, r in (("ours", ours), ("transformers", theirs)) if r}
    both = len(mem) == 2
    return {
        "benchmark": "sampler",
        "description": "sampled tokens/s = prompts * samples * new_tokens / median wall time of one call that samples "
                       "every prompt's samples in one batch; no early stop on either side",
        "model": source.description,
        "dtype": ours["model_config"]["dtype"] if ours else None,
        **shared,
        "peak_rss_mib": {side: {"process": v[0], "during_timed_calls": v[1]} for side, v in mem.items()},
        "targets": {
            "speedup_at_least": TARGET_SPEEDUP,
            "speedup_met": None if ratio is None else ratio >= TARGET_SPEEDUP,
            "memory_below_transformers_met": (mem["ours"][0] < mem["transformers"][0]
                                              if both and None not in (mem["ours"][0], mem["transformers"][0])
                                              else None),
            "memory_during_calls_below_transformers": mem["ours"][1] < mem["transformers"][1] if both else None,
        },
        "memory_sweep": sweep,
        "quiet_machine": quiet,
        "threads": {"torch": theirs["runtime"]["torch_num_threads"] if theirs else None,
                    "xla": f"default CPU client thread pool over {common.usable_cores()} usable cores"},
        "isolated_processes": args.isolate,
        **common.environment_info(PACKAGES, ENV_VARS),
    }


def _summary(record: dict[str, Any]) -> str:
    """The side table, whether the targets were met, and the memory sweep (the JSON holds the rest)."""
    settings, targets, sweep = record["settings"], record["targets"], record["memory_sweep"]
    lines = [f"{record['model']}  {record['dtype']}  prompts {record['prompts']['token_lengths']} x "
             f"{settings['num_samples']} samples x {settings['max_new_tokens']} new tokens",
             common.table(common.SIDE_COLUMNS + ["call peak MiB", "proc peak MiB", "compile s"], common.side_rows(
                 record, lambda side, r: [r["memory"]["sampling_peak_rss_mib"], r["memory"]["process_peak_rss_mib"],
                                          r.get("compile_s")])),
             f"ours / transformers = {common.cell(record['ratio_ours_over_transformers'])} (target >= "
             f"{TARGET_SPEEDUP:g} met: {targets['speedup_met']}); memory below theirs: "
             f"{targets['memory_below_transformers_met']}; equal work checked: {record['equal_work_checked']}"]
    if sweep:
        lines.append(common.table([f"m ({sweep['prompt_tokens']}-token prompt)", "call peak MiB", "call growth MiB",
                                   "process peak MiB"], [[p["num_samples"], p["call_peak_rss_mib"],
                                                          p["call_growth_mib"], p["process_peak_rss_mib"]]
                                                         for p in sweep["points"]]))
        lines.append(f"growth {sweep['measured_growth_mib']:.1f} MiB measured vs {sweep['analytic_growth_mib']:.1f} "
                     f"MiB analytic; a per-sample prefix copy would add "
                     f"{sweep['growth_if_prefix_copied_per_sample_mib']:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
