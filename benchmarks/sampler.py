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

    # the issue's benchmark -> benchmarks/results/sampler_cpu.json (about an hour on 2 cores, five sides, two shapes)
    python -m benchmarks.sampler
    # llama.cpp's sides run where `llama_cpp` imports, never in lsi's own venv: build llama-cpp-python (PyPI sdist)
    # into a venv of its own that also sees lsi's (a .pth line: import site; site.addsitedir('<.venv site-packages>'))
    # and run the benchmark with that venv's python
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
# The sides, in the order they are built and timed. transformers runs two ways (all rows in one left-padded generate;
# one generate per prompt with num_return_sequences=m), llama.cpp on an F32 GGUF written from the same tensors and on
# the packaged Q4_1 file; llama.cpp sides need `llama_cpp` (llama-cpp-python, never an lsi dependency).
SIDES = ("ours", "transformers_one_call", "transformers_per_prompt", "llama_cpp_f32", "llama_cpp_q4_1")
TRANSFORMERS_SIDES = ("transformers_one_call", "transformers_per_prompt")
TARGET_SPEEDUP = 5.0  # over the faster transformers configuration
TARGET_WITHIN_LLAMA_CPP = 1.5  # llama.cpp F32 / ours at most this
TARGET_ROOFLINE_FRACTION = 0.6
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


def quickstart_prompts(num_prompts: int) -> tuple[list[str], list[str]]:
    """The quickstart's sample-stage prompts: few-shot CoT prompts of its two-digit-addition pool questions, written
    as its gin file's plain prompt style writes them."""
    from lsi.tasks import PromptFormat, build_prompt, get_task  # noqa: PLC0415

    task = get_task("arithmetic", pool_size=num_prompts, eval_size=1, config={"operators": ("+",)})
    pool = task.load_pool()
    return ([build_prompt(PromptFormat.FEW_SHOT_COT, e.question, task.exemplars_for(e)) for e in pool],
            [f"arithmetic pool {e.id}" for e in pool])


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

def _side_factory(name: str, source: ModelSource, workload: Workload, eos_id: int | None,
                  args: argparse.Namespace) -> tuple[Any, tuple, dict[str, Any]]:
    """(class, args, start_side kwargs) of side `name`; each side's process imports only its own library."""
    from benchmarks import ours, peers  # noqa: PLC0415
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

    if name == "ours":
        return (ours.OurSampler, (functools.partial(load_checkpoint, source.ours), workload, eos_id),
                {"env": common.xla_env(args.xla_flags)})
    if name in TRANSFORMERS_SIDES:
        load = functools.partial(peers.load_pretrained, source.hf_directory, source.gguf_file)
        per_call = 1 if name == "transformers_per_prompt" else None
        return peers.TheirGenerate, (load, workload, args.threads, eos_id, per_call), {}
    from benchmarks import gguf_export, llama_cpp_side  # noqa: PLC0415

    if not source.ours.endswith(".gguf"):
        raise ValueError(f"{name} needs a GGUF checkpoint; {source.description} is not one.")
    path = source.ours if name == "llama_cpp_q4_1" else str(gguf_export.unquantized_gguf(source.ours, "f32"))
    return llama_cpp_side.LlamaCppSampler, (path, workload, args.threads, eos_id), {}


def available_sides(requested: Sequence[str]) -> list[str]:
    """The requested sides this environment can run (llama.cpp's need the `llama_cpp` module)."""
    import importlib.util  # noqa: PLC0415

    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    return [name for name in requested if has_llama_cpp or not name.startswith("llama_cpp")]


def compare(source: ModelSource, workload: Workload, eos_id: int | None, args: argparse.Namespace,
            names: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Builds every side (each in its own process), waits for a quiet machine, then times them in alternating rounds
    (A B C, C B A, ...), so that other processes' load hits all alike. Returns {side: result} and the load record."""
    with contextlib.ExitStack() as stack:
        sides = {}
        for name in names:
            print(f"[sampler] {name}: loading" + (" and compiling" if name == "ours" else ""), flush=True)
            factory, factory_args, kwargs = _side_factory(name, source, workload, eos_id, args)
            sides[name] = stack.enter_context(common.start_side(factory, *factory_args, isolate=args.isolate,
                                                                **kwargs))
        quiet = common.wait_for_quiet(args.quiet_load, args.quiet_timeout)
        print(f"[sampler] timing {', '.join(sides)}: {args.warmup} warmup + {args.repeats} timed calls each",
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
    return results, quiet


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
        "sweep_prompt_tokens": 1500, "quiet_load": 0.7, "shapes": "benchmark,quickstart"}
SMOKE = {"num_prompts": 3, "samples": 4, "new_tokens": 8, "sweep_samples": "1,4", "sweep_prompt_tokens": 48,
         "quiet_load": None, "shapes": "benchmark"}
# The quickstart's shape (gin_configs/runs/quickstart.gin's sample stage): a batch of 32 short few-shot prompts,
# m = 8, 40 new tokens; the benchmark shape is the flags' (default 8 GSM8K prompts of ~400 tokens, m = 16, 128).
SHAPES = {"benchmark": None, "quickstart": {"num_prompts": 32, "samples": 8, "new_tokens": 40}}


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
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="comma-separated sides to run (default: all; llama.cpp's only where llama_cpp imports)")
    parser.add_argument("--shapes", default=None, help="benchmark,quickstart (default; the smoke run: benchmark)")
    args = parser.parse_args(argv)
    preset = SMOKE if args.config else FULL
    apply_preset(parser, args, preset)
    args.quiet_load = preset["quiet_load"] if args.quiet_load < 0 else args.quiet_load or None  # 0: no wait
    args.sweep_samples = [int(s) for s in str(args.sweep_samples).split(",") if s.strip()]
    args.sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    args.shapes = [shape.strip() for shape in (args.shapes or preset["shapes"]).split(",") if shape.strip()]
    if unknown := set(args.sides) - set(SIDES) or set(args.shapes) - set(SHAPES):
        parser.error(f"unknown sides or shapes {sorted(unknown)}; sides: {SIDES}; shapes: {tuple(SHAPES)}")
    args.random_prompt_lengths = tuple(int(s) for s in args.random_prompt_lengths.split(","))
    if min(args.sweep_samples) < 1:
        parser.error("--sweep_samples must be >= 1.")
    common.check_comparison_flags(parser, args)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lsi.io_utils import write_json_atomic  # noqa: PLC0415

    args = parse_args(argv)
    code_at_start = code_fingerprint()
    output = common.output_path(args.output, args.config, "sampler", DEFAULT_OUTPUT)
    names = available_sides(args.sides)
    with tempfile.TemporaryDirectory(prefix="lsi-sampler-") as tmp:
        source, eos_id, shapes, (long_prompt, long_source) = _inputs(args, pathlib.Path(tmp))
        measured: dict[str, Any] = {}
        quiet: dict[str, Any] = {}
        for shape, (workload, prompt_sources) in shapes.items():
            print(f"[sampler] {shape} shape, {source.description}: {len(workload.prompts)} prompts of "
                  f"{[len(p) for p in workload.prompts]} tokens x {workload.num_samples} samples x "
                  f"{workload.max_new_tokens} new tokens; sides {names}", flush=True)
            if args.memory_only:
                break
            results, quiet[shape] = compare(source, workload, eos_id, args, names)
            measured[shape] = shape_record(workload, prompt_sources, results, _roofline(source, workload, args))
        sweep = None
        if args.memory_sweep or args.memory_only:
            quiet["memory_sweep"] = common.wait_for_quiet(args.quiet_load, args.quiet_timeout)
            sweep = memory_sweep(source, tuple(long_prompt), long_source, args)

    record = _record(args, source, measured, sweep, quiet)
    seen = [code_at_start, code_fingerprint()] + [
        r["sides"]["ours"]["code_sha256_16"] for r in measured.values() if r["sides"].get("ours")] + [
        p["code_sha256_16"] for p in (sweep or {}).get("points", [])]
    record["code_sha256_16"] = {"at_start": code_at_start, "unchanged_during_run": all(c == seen[0] for c in seen)}
    write_json_atomic(output, record)
    print(_summary(record))
    print(f"[sampler] wrote {output}")
    return record


def _inputs(args: argparse.Namespace, tmp: pathlib.Path) -> tuple[ModelSource, int | None, dict[str, Any], tuple]:
    """The model source, EOS id, {shape: (Workload, prompt sources)} and the memory sweep's long prompt."""
    from lsi.checkpoints import load_config  # noqa: PLC0415
    from lsi.vocab import encode_model_input, load_vocabulary  # noqa: PLC0415

    def workload(prompts: Sequence[Sequence[int]], sizes: dict[str, int]) -> Workload:
        return Workload(prompts=tuple(tuple(p) for p in prompts), num_samples=sizes["samples"],
                        max_new_tokens=sizes["new_tokens"], temperature=args.temperature, top_k=args.top_k,
                        seed=args.seed, warmup=args.warmup, repeats=args.repeats)

    flag_sizes = {"num_prompts": args.num_prompts, "samples": args.samples, "new_tokens": args.new_tokens}
    if args.config:
        source = model_sources.random_weight_source(args.config, args.seed, tmp / "model")
        vocab_size = load_config(source.ours).vocab_size
        prompts = random_prompts(args.num_prompts, args.random_prompt_lengths, vocab_size, args.seed)
        long_prompt = random_prompts(1, (args.sweep_prompt_tokens,) * 2, vocab_size, args.seed + 1)[0]
        return source, None, {"benchmark": (workload(prompts, flag_sizes), ["random ids"] * len(prompts))}, (
            long_prompt, "random ids")
    source = model_sources.checkpoint_source(args.checkpoint)
    vocab = load_vocabulary(args.checkpoint)
    shapes = {}
    for shape in args.shapes:
        sizes = SHAPES[shape] or flag_sizes
        texts, sources = (quickstart_prompts(sizes["num_prompts"]) if shape == "quickstart"
                          else cot_prompts(sizes["num_prompts"], args.exemplars))
        shapes[shape] = (workload([encode_model_input(vocab, t) for t in texts], sizes), sources)
    return source, vocab.eos_id, shapes, long_cot_prompt(vocab, args.sweep_prompt_tokens)


def _roofline(source: ModelSource, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """The matmul roofline at this shape's decode rows, measured in a fresh process with our side's XLA flags."""
    from benchmarks import roofline  # noqa: PLC0415
    from lsi.checkpoints import load_config  # noqa: PLC0415

    rows = len(workload.prompts) * workload.num_samples
    context = int(np.mean([len(p) for p in workload.prompts])) + workload.max_new_tokens // 2
    print(f"[sampler] matmul roofline at {rows} rows", flush=True)
    value, _ = common.run_isolated(roofline.roofline, load_config(source.ours), rows, context,
                                   isolate=args.isolate, env=common.xla_env(args.xla_flags))
    return value


def workload_settings(workload: Workload) -> dict[str, Any]:
    """What every side was asked to sample, as the result files record it."""
    return {"num_prompts": len(workload.prompts), "num_samples": workload.num_samples,
            "max_new_tokens": workload.max_new_tokens, "temperature": workload.temperature, "top_k": workload.top_k,
            "top_p": 1.0, "eos": "ignored (no early stop on any side)", "seed": workload.seed,
            "warmup": workload.warmup, "repeats": workload.repeats}


def shape_record(workload: Workload, prompt_sources: list[str], results: dict[str, dict[str, Any]],
                 roof: dict[str, Any]) -> dict[str, Any]:
    """One shape's figures: every side's tokens/s, ours over each side and over the faster transformers, the
    fraction of the matmul roofline, peak memory, equal-work checks and breakdowns; the sides' full results."""
    rates = {name: common.throughput(workload.sampled_tokens_per_call, r["timing"]) for name, r in results.items()}
    tokens_per_s = {name: rates[name]["median"] if name in rates else None for name in SIDES}
    ours = tokens_per_s["ours"]
    transformers = {n: tokens_per_s[n] for n in TRANSFORMERS_SIDES if tokens_per_s[n]}
    faster = max(transformers, key=transformers.get) if transformers else None
    lengths = [len(p) for p in workload.prompts]
    return {
        "settings": workload_settings(workload),
        "prompts": {"token_lengths": lengths, "mean_tokens": float(np.mean(lengths)), "sources": prompt_sources},
        "sampled_tokens_per_call": workload.sampled_tokens_per_call,
        "tokens_per_s": tokens_per_s,
        "ratio_ours_over": {n: ours / r for n, r in tokens_per_s.items() if n != "ours" and ours and r},
        "faster_transformers": faster,
        "ratio_ours_over_faster_transformers": ours / transformers[faster] if ours and faster else None,
        "roofline": roof | {"fraction": {n: r / roof["tokens_per_s_at_roofline"]
                                         for n, r in tokens_per_s.items() if r}},
        "peak_rss_mib": {n: {"process": r["memory"]["process_peak_rss_mib"],
                             "during_timed_calls": r["memory"]["sampling_peak_rss_mib"]} for n, r in results.items()},
        "equal_work_checked": all(r["check"]["all_full_length"] for r in results.values()),
        "breakdown": {n: r.get("breakdown") for n, r in results.items()},
        "sides": {n: r | {"tokens_per_s": rates[n]} for n, r in results.items()},
    }


def comparison_record(workload: Workload, ours: dict | None, theirs: dict | None) -> dict[str, Any]:
    """The keys of a result file both sampler benchmarks write: the workload, each side's figures and checks."""
    sides = {side: r for side, r in (("ours", ours), ("transformers", theirs)) if r}
    lengths = [len(p) for p in workload.prompts]
    return {
        "settings": workload_settings(workload),
        "prompts": {"token_lengths": lengths, "mean_tokens": float(np.mean(lengths)),
                    "padded_shape_ours": ours["padded_prompt_shape"] if ours else None,
                    "padded_shape_transformers": theirs["padded_prompt_shape"] if theirs else None},
        "sampled_tokens_per_call": workload.sampled_tokens_per_call,
        **common.side_rates(workload.sampled_tokens_per_call, ours, theirs),
        "compile_s_ours": ours["compile_s"] if ours else None,
        "equal_work_checked": all(r["check"]["all_full_length"] for r in sides.values()),
        "breakdown": {side: r.get("breakdown") for side, r in sides.items()},
    }


def _record(args: argparse.Namespace, source: ModelSource, measured: dict[str, dict[str, Any]], sweep: dict | None,
            quiet: dict) -> dict[str, Any]:
    """The result file: the benchmark shape's figures at the top level (its `tokens_per_s` holds every side), the
    quickstart shape's under `quickstart_shape`, the targets, the memory sweep and the environment."""
    main_shape = measured.get("benchmark") or next(iter(measured.values()), {})
    ours = main_shape.get("sides", {}).get("ours")
    return {
        "benchmark": "sampler",
        "description": "sampled tokens/s = prompts * samples * new_tokens / median wall time of one call that samples "
                       "every prompt's samples; no early stop on any side; sides timed in alternating rounds",
        "model": source.description,
        "dtype": ours["model_config"]["dtype"] if ours else None,
        **main_shape,
        "quickstart_shape": measured.get("quickstart"),
        "targets": _targets(measured),
        "memory_sweep": sweep,
        "quiet_machine": quiet,
        "threads": {"torch_and_llama_cpp": args.threads,
                    "xla": f"default CPU client thread pool over {common.usable_cores()} usable cores"},
        "isolated_processes": args.isolate,
        **common.environment_info(PACKAGES, ENV_VARS),
    }


def _targets(measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, each with whether it was met (None where a side it needs did not run)."""
    bench = measured.get("benchmark") or {}
    ratio = bench.get("ratio_ours_over_faster_transformers")
    peak = {n: r["process"] for n, r in bench.get("peak_rss_mib", {}).items()}
    faster = bench.get("faster_transformers")
    llama = {shape: r["tokens_per_s"]["llama_cpp_f32"] / r["tokens_per_s"]["ours"]
             for shape, r in measured.items() if r["tokens_per_s"]["llama_cpp_f32"] and r["tokens_per_s"]["ours"]}
    fraction = (bench.get("roofline") or {}).get("fraction", {}).get("ours")
    return {
        "speedup_over_faster_transformers_at_least": TARGET_SPEEDUP,
        "speedup_met": None if ratio is None else ratio >= TARGET_SPEEDUP,
        "memory_at_most_faster_transformers_met": (peak["ours"] <= peak[faster] if faster and peak.get("ours")
                                                   and peak.get(faster) else None),
        "llama_cpp_f32_over_ours": llama,
        "within_llama_cpp_met": {shape: r <= TARGET_WITHIN_LLAMA_CPP for shape, r in llama.items()},
        "faster_than_llama_cpp_at_benchmark_shape_met": llama["benchmark"] < 1.0 if "benchmark" in llama else None,
        "roofline_fraction_at_least": TARGET_ROOFLINE_FRACTION,
        "roofline_met": None if fraction is None else fraction >= TARGET_ROOFLINE_FRACTION,
    }


def _summary(record: dict[str, Any]) -> str:
    """Each shape's side table, the targets, and the memory sweep (the JSON holds the rest)."""
    lines = [f"{record['model']}  {record['dtype']}"]
    for shape, r in (("benchmark", record), ("quickstart", record.get("quickstart_shape"))):
        if not r or "settings" not in r:
            continue
        s = r["settings"]
        lines.append(f"{shape}: prompts {r['prompts']['token_lengths'][:8]}... x {s['num_samples']} samples x "
                     f"{s['max_new_tokens']} new tokens; roofline {r['roofline']['tokens_per_s_at_roofline']:.0f} "
                     f"tokens/s ({r['roofline']['best_gflop_per_s']:.0f} GFLOP/s)")
        lines.append(common.table(["side", "tokens/s", "ours / side", "roofline fraction", "median s", "peak MiB"], [
            [n, r["tokens_per_s"][n], r["ratio_ours_over"].get(n), r["roofline"]["fraction"].get(n),
             side["timing"]["median_s"], r["peak_rss_mib"][n]["process"]] for n, side in r["sides"].items()]))
    lines.append(f"targets: {record['targets']}")
    sweep = record["memory_sweep"]
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
