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
caches) and of theirs (a `max_new_tokens=1` generate), and the
memory sweep: our peak memory for m in {1, 4, 16, 64} samples of one long prompt, one fresh process per m, against
the analytic size of what should grow with m (the per-sample generated KV cache and token buffers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `lsi` importable from the repo root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common, model_sources  # noqa: E402
from benchmarks.model_sources import ModelSource  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = "smollm2-135m-instruct"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "sampler_cpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "gguf", "safetensors", "psutil")
ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS", "LSI_DATA_DIR")
PROMPT_FILE = REPO / "lsi" / "tasks" / "prompts" / "gsm8k.json"
TARGET_SPEEDUP = 3.0
PAD_ID = 0


# --- workload -----------------------------------------------------------------------------------------------------

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


# The files whose version decides our side's speed; hashed when the run starts and where each side imports them.
CODE_FILES = ("lsi/decoding.py", "lsi/models/transformer.py", "lsi/models/configs.py", "lsi/partitioning.py")


def code_fingerprint() -> dict[str, str | None]:
    """First 16 hex digits of each CODE_FILES file's sha256 (the repository has no pinned revision to cite)."""
    def digest(path: pathlib.Path) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None

    return {name: digest(REPO / name) for name in CODE_FILES}


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LSI_DATA_DIR", REPO.parent / "shared" / "data"))


def _cot_block(question: str, rationale: str, answer: str) -> str:
    return f"Q: {question}\nA: {rationale} The answer is {answer}.\n\n"


def _gsm8k_questions(split: str, limit: int) -> list[dict[str, Any]] | None:
    path = data_dir() / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        return None
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def cot_prompts(num_prompts: int, exemplars_per_prompt: int) -> tuple[list[str], list[str]]:
    """Few-shot CoT prompts (texts) and where each one's question came from.

    Prompt i shows exemplars i, i+1, ... (mod 8) and then asks GSM8K test question i; without the data file it asks
    the question of an exemplar it does not show.
    """
    exemplars = json.loads(PROMPT_FILE.read_text())["exemplars"]
    if exemplars_per_prompt >= len(exemplars):
        raise ValueError(f"--exemplars must be < {len(exemplars)} (one exemplar's question is the fallback query).")
    test = _gsm8k_questions("test", num_prompts)
    texts, sources = [], []
    for i in range(num_prompts):
        shown = [exemplars[(i + j) % len(exemplars)] for j in range(exemplars_per_prompt)]
        if test is not None and i < len(test):
            question, source = test[i]["question"], f"gsm8k/test.jsonl line {i + 1}"
        else:
            k = (i + exemplars_per_prompt) % len(exemplars)
            question, source = exemplars[k]["question"], f"{PROMPT_FILE.name} exemplar {k} (no gsm8k/test.jsonl)"
        texts.append("".join(_cot_block(e["question"], e["rationale"], e["answer"]) for e in shown)
                     + f"Q: {question}\nA:")
        sources.append(source)
    return texts, sources


def long_cot_prompt(vocab: Any, target_tokens: int) -> tuple[list[int], str]:
    """One few-shot prompt of at most `target_tokens` tokens: the 8 exemplars, then GSM8K train problems written as
    exemplars (the data's `<<...>>` calculator notes removed) until the next would not fit, then a question."""
    import re  # noqa: PLC0415

    exemplars = json.loads(PROMPT_FILE.read_text())["exemplars"]
    blocks = [_cot_block(e["question"], e["rationale"], e["answer"]) for e in exemplars]
    train = _gsm8k_questions("train", 200) or []
    for row in train:
        rationale, _, answer = row["answer"].partition("####")
        rationale = " ".join(re.sub(r"<<[^>]*>>", "", rationale).split())
        blocks.append(_cot_block(row["question"], rationale, answer.strip()))
    if not train:  # no data: cycle the exemplars
        blocks = blocks * (1 + target_tokens // 300)
    query = f"Q: {exemplars[0]['question']}\nA:"
    text = ""
    for block in blocks:
        if len(_encode(vocab, text + block + query)) > target_tokens:
            break
        text += block
    source = f"{PROMPT_FILE.name} exemplars" + (" + gsm8k/train.jsonl problems" if train else " (repeated)")
    return _encode(vocab, text + query), source


def _encode(vocab: Any, text: str) -> list[int]:
    ids = list(vocab.encode(text))
    return [vocab.bos_id] + ids if getattr(vocab, "add_bos", False) else ids


def random_prompts(num_prompts: int, lengths: tuple[int, int], vocab_size: int, seed: int) -> list[list[int]]:
    """Uniform random ids (avoiding the first few, often special, ids) with lengths drawn from [lo, hi]."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lengths[0], lengths[1] + 1, size=num_prompts)
    return [rng.integers(3, vocab_size, size=int(n)).tolist() for n in sizes]


def pad_right(prompts: Sequence[Sequence[int]], width: int, pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Our layout: int32 [batch, width] right-padded, and the lengths [batch]."""
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for row, ids in enumerate(prompts):
        tokens[row, :len(ids)] = ids
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def pad_left(prompts: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """transformers' layout for batched generation: int64 [batch, max_len] left-padded, and the attention mask."""
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids):] = ids
        mask[row, width - len(ids):] = 1
    return tokens, mask


# --- our side -----------------------------------------------------------------------------------------------------

def _load_ours(source: ModelSource) -> tuple[Any, Any, float]:
    import jax  # noqa: PLC0415  (imported in the child, so that XLA_FLAGS given to it take effect)

    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

    start = time.perf_counter()
    cfg, host_params = load_checkpoint(source.ours)
    params = jax.block_until_ready(jax.device_put(host_params))
    del host_params  # only the device copy stays alive, as in a real run
    gc.collect()
    return cfg, params, time.perf_counter() - start


def _timed_sampling_call(side: Any, run: Any) -> tuple[float, float]:
    """(wall, CPU) seconds of one sampling call of either side, tracking the side's peak RSS per call. The previous
    output is freed first, as a loop that consumes each result would."""
    side.out = None
    with common.PeakRSS() as memory:
        timing = common.timed_call(run)
    side.call_peak = max(side.call_peak, memory.peak_bytes)
    return timing


def compile_sampler(cfg: Any, params: Any, prompts: Sequence[Sequence[int]], num_samples: int, max_new_tokens: int,
                    temperature: float, top_k: int, seed: int) -> tuple[Any, tuple, float]:
    """(compiled sampler, its device arguments, compile seconds) for right-padded, length-bucketed prompts."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from lsi.decoding import SamplerSpec, TransformerLM, bucket_length, make_sampler  # noqa: PLC0415
    from lsi.sampling_methods import Temperature  # noqa: PLC0415

    tokens, lengths = pad_right(prompts, bucket_length(max(len(p) for p in prompts)))
    spec = SamplerSpec(num_samples=num_samples, max_new_tokens=max_new_tokens,
                       method=Temperature(temperature, top_k=top_k), eos_ids=(), stop_sequences=(), pad_id=PAD_ID)
    args = jax.device_put((params, tokens, lengths, np.arange(len(prompts), dtype=np.int32), jnp.int32(seed)))
    start = time.perf_counter()
    compiled = make_sampler(TransformerLM(cfg), spec).lower(*args).compile()
    return compiled, args, time.perf_counter() - start


def check_ours(out: Any, max_new_tokens: int, eos_id: int | None) -> dict[str, Any]:
    """Whether every sample generated exactly `max_new_tokens` tokens (no early stop)."""
    from lsi.decoding import FINISH_MAX_LENGTH  # noqa: PLC0415

    lengths, reasons, tokens = (np.asarray(a) for a in (out.lengths, out.finish_reason, out.tokens))
    return {
        "tokens_shape": list(tokens.shape),
        "new_tokens_min": int(lengths.min()),
        "new_tokens_max": int(lengths.max()),
        "all_full_length": bool((lengths == max_new_tokens).all() and (reasons == FINISH_MAX_LENGTH).all()
                                and tokens.shape[-1] == max_new_tokens),
        "eos_tokens_sampled": None if eos_id is None else int((tokens == eos_id).sum()),
    }


class OurSampler:
    """Our side (built in its own process): loads the model and compiles the sampler on construction; `sample()` is
    one blocking call returning (wall_s, cpu_s); `report()` describes the calls made."""

    def __init__(self, source: ModelSource, workload: Workload, eos_id: int | None) -> None:
        self.workload, self.eos_id = workload, eos_id
        self.code = code_fingerprint()
        self.cfg, self.params, self.load_s = _load_ours(source)
        self.compiled, self.args, self.compile_s = compile_sampler(
            self.cfg, self.params, workload.prompts, workload.num_samples, workload.max_new_tokens,
            workload.temperature, workload.top_k, workload.seed)
        self.rss_before = common.current_rss_bytes()
        self.call_peak = 0
        self.out = None

    def sample(self) -> tuple[float, float]:
        import jax  # noqa: PLC0415

        def run() -> None:
            self.out = jax.block_until_ready(self.compiled(*self.args))

        return _timed_sampling_call(self, run)

    def report(self, median_s: float, breakdown: bool) -> dict[str, Any]:
        import jax  # noqa: PLC0415

        result = {
            "model_config": _config_dict(self.cfg),
            "num_params": self.cfg.num_params,
            "padded_prompt_shape": list(self.args[1].shape),
            "code_sha256_16": self.code,
            "load_s": self.load_s,
            "compile_s": self.compile_s,
            "check": check_ours(self.out, self.workload.max_new_tokens, self.eos_id),
            "memory": {"rss_before_sampling_mib": self.rss_before / common.MIB,
                       "sampling_peak_rss_mib": self.call_peak / common.MIB,
                       "process_peak_before_breakdown_mib": common.peak_rss_bytes() / common.MIB},
            "runtime": {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
                        "xla_flags": os.environ.get("XLA_FLAGS", "")},
        }
        self.out = self.compiled = None
        if breakdown:
            result["breakdown"] = our_breakdown(self.cfg, self.params, self.workload, median_s)
        return result


def our_breakdown(cfg: Any, params: Any, workload: Workload, total_s: float) -> dict[str, Any]:
    """Where our time goes: prefill (+ the first token), per decode step, and the token choice within a step."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from lsi.decoding import TransformerLM, choose_tokens, sample_keys  # noqa: PLC0415
    from lsi.sampling_methods import Temperature  # noqa: PLC0415

    prefill, args, compile_s = compile_sampler(cfg, params, workload.prompts, workload.num_samples, 1,
                                               workload.temperature, workload.top_k, workload.seed)
    prefill_timing = common.time_call(lambda: jax.block_until_ready(prefill(*args)), warmup=1, repeats=2)
    prefill_s = prefill_timing["median_s"]
    steps = workload.max_new_tokens - 1
    step_s = (total_s - prefill_s) / steps if steps else None

    batch, m = len(workload.prompts), workload.num_samples
    method = Temperature(workload.temperature, top_k=workload.top_k)

    @jax.jit
    def choose(logits: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        # What the sampler does per step besides the model: top-k draw and the chosen token's log-probability.
        token = choose_tokens(logits, keys, method)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[..., None], axis=-1)[..., 0]
        return token, log_prob

    logits = jax.random.normal(jax.random.PRNGKey(0), (batch, m, cfg.vocab_size), jnp.float32) * 3.0
    keys = sample_keys(0, jnp.arange(batch), m)
    choose_timing = common.time_call(lambda: jax.block_until_ready(choose(logits, keys)), warmup=1, repeats=5)
    choose_s = choose_timing["median_s"]
    logits = None  # free it before the decode-step measurements
    # One model decode step alone (outside the sampler's loop), against the real caches (the padded prompt and
    # max_new generated slots per sample) and against near-empty ones: the difference is the cost of attention.
    lm = TransformerLM(cfg)
    _, tokens, lengths, _, _ = args
    full_step = _decode_step_s(lm, params, tokens, lengths, m, workload.max_new_tokens)
    tiny_prompt = jnp.ones((batch, 16), jnp.int32)
    bare_step = _decode_step_s(lm, params, tiny_prompt, jnp.full((batch,), 16, jnp.int32), m, 1)
    return {
        "prefill_s": prefill_s,
        "prefill_note": "a max_new_tokens=1 call: prefill of the padded batch + one token choice",
        "prefill_compile_s": compile_s,
        "decode_s": total_s - prefill_s,
        "decode_step_s": step_s,
        "decode_steps": steps,
        "token_choice_s_per_step": choose_s,
        "token_choice_share_of_step": choose_s / step_s if step_s else None,
        "model_step_alone_s": full_step,
        "model_step_alone_empty_cache_s": bare_step,
        "attention_over_cache_s_per_step": full_step - bare_step,
        "model_step_note": "one jitted model decode step outside the sampler loop, with the benchmark's caches "
                           "(padded prompt + all max_new generated slots, masked) and with a 16-token prompt and 1 "
                           "generated slot: the difference is what attending to the caches costs",
        "loop_overhead_s_per_step": step_s - full_step - choose_s if step_s else None,
        "prefill_share": prefill_s / total_s,
        "decode_share": 1.0 - prefill_s / total_s,
    }


def _decode_step_s(lm: Any, params: Any, tokens: Any, lengths: Any, num_samples: int, max_new: int) -> float:
    """Median seconds of one jitted `lm.decode` step over the cache of a prefill of `tokens`."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    _, cache = jax.jit(lambda p, t, n: lm.prefill(p, t, n, num_samples, max_new))(params, tokens, lengths)
    shape = (tokens.shape[0], num_samples)
    step = jax.jit(lambda p, tok, pos, c: lm.decode(p, tok, pos, c)[0])  # logits only: no cache copy returned
    params = jax.jit(lm.decode_params)(params)  # once per batch in the sampler, so not part of a step
    positions = jnp.broadcast_to(lengths[:, None], shape).astype(jnp.int32)
    timing = common.time_call(lambda: jax.block_until_ready(step(params, jnp.zeros(shape, jnp.int32), positions,
                                                                 cache)), warmup=1, repeats=3)
    return timing["median_s"]


def _config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) | {"dtype": str(np.dtype(cfg.dtype)), "param_dtype": str(np.dtype(cfg.param_dtype))}


# --- transformers' side -------------------------------------------------------------------------------------------

def generation_config(workload: Workload, max_new_tokens: int | None = None) -> Any:
    """transformers' settings equal to ours: sampling, T, top-k, no top-p, m return sequences, no EOS stop."""
    from transformers import GenerationConfig  # noqa: PLC0415

    return GenerationConfig(
        do_sample=True, temperature=workload.temperature, top_k=workload.top_k, top_p=1.0,
        max_new_tokens=max_new_tokens or workload.max_new_tokens, num_return_sequences=workload.num_samples,
        eos_token_id=None, pad_token_id=PAD_ID, use_cache=True,
    )


def disable_eos(model: Any) -> None:
    """`generate` fills an unset `eos_token_id` from the model's own generation config: unset it there too.

    No EOS means no stopping criterion and no finished rows; it changes no logits processor, so the distribution
    each token is drawn from is unchanged (unlike `min_new_tokens`, which masks EOS).
    """
    model.generation_config.eos_token_id = None


def effective_eos(model: Any, config: Any) -> Any:
    """The eos_token_id `generate` will use (None = never stops early); private API, so best effort."""
    try:
        return model._prepare_generation_config(config)[0].eos_token_id
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__})"


def check_theirs(sequences: Any, prompt_width: int, workload: Workload, eos_id: int | None) -> dict[str, Any]:
    generated = sequences[:, prompt_width:]
    rows = len(workload.prompts) * workload.num_samples
    return {
        "sequences_shape": list(sequences.shape),
        "new_tokens": int(generated.shape[1]),
        "all_full_length": bool(sequences.shape[0] == rows and generated.shape[1] == workload.max_new_tokens),
        "eos_tokens_sampled": None if eos_id is None else int((generated == eos_id).sum()),
    }


class TheirGenerate:
    """transformers' side (built in its own process): its own loading of the same weights; `sample()` is one
    `generate` of all prompts in one left-padded batch, returning (wall_s, cpu_s)."""

    def __init__(self, source: ModelSource, workload: Workload, threads: int, eos_id: int | None) -> None:
        import torch  # noqa: PLC0415
        from transformers import AutoModelForCausalLM  # noqa: PLC0415

        torch.set_num_threads(threads)
        self.workload, self.eos_id = workload, eos_id
        start = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(source.hf_directory, gguf_file=source.gguf_file,
                                                          dtype=torch.float32).eval()
        self.load_s = time.perf_counter() - start
        disable_eos(self.model)
        self.tokens, mask = pad_left(workload.prompts)
        self.input_ids, self.attention_mask = torch.from_numpy(self.tokens), torch.from_numpy(mask)
        self.config = generation_config(workload)
        torch.manual_seed(workload.seed)
        self.rss_before = common.current_rss_bytes()
        self.call_peak = 0
        self.out = None

    def _generate(self, config: Any) -> Any:
        import torch  # noqa: PLC0415

        with torch.inference_mode():
            return self.model.generate(input_ids=self.input_ids, attention_mask=self.attention_mask,
                                       generation_config=config)

    def sample(self) -> tuple[float, float]:
        def run() -> None:
            self.out = self._generate(self.config)

        return _timed_sampling_call(self, run)

    def report(self, median_s: float, breakdown: bool) -> dict[str, Any]:
        import torch  # noqa: PLC0415

        result = {
            "model_class": type(self.model).__name__,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "padded_prompt_shape": list(self.tokens.shape),
            "generate_kwargs": {k: v for k, v in self.config.to_diff_dict().items()
                                if not k.startswith("transformers")},
            "effective_eos_token_id": effective_eos(self.model, self.config),
            "load_s": self.load_s,
            "check": check_theirs(self.out.numpy(), self.tokens.shape[1], self.workload, self.eos_id),
            "memory": {"rss_before_sampling_mib": self.rss_before / common.MIB,
                       "sampling_peak_rss_mib": self.call_peak / common.MIB,
                       "process_peak_before_breakdown_mib": common.peak_rss_bytes() / common.MIB},
            "runtime": {"torch_num_threads": torch.get_num_threads(),
                        "torch_num_interop_threads": torch.get_num_interop_threads()},
        }
        self.out = None
        if breakdown:
            one = generation_config(self.workload, max_new_tokens=1)
            prefill_s = common.timed_call(lambda: self._generate(one))[0]
            steps = self.workload.max_new_tokens - 1
            result["breakdown"] = {
                "prefill_s": prefill_s,
                "prefill_note": "a max_new_tokens=1 generate: prefill of batch * samples rows (generate repeats each "
                                "prompt num_return_sequences times) + one token",
                "decode_s": median_s - prefill_s,
                "decode_step_s": (median_s - prefill_s) / steps if steps else None,
                "prefill_share": prefill_s / median_s,
            }
        return result


# --- memory sweep -------------------------------------------------------------------------------------------------

def measure_memory_point(source: ModelSource, prompt: tuple[int, ...], num_samples: int, max_new_tokens: int,
                         temperature: float, top_k: int) -> dict[str, Any]:
    """Our peak RSS while sampling `num_samples` continuations of one prompt (one call, after compiling)."""
    import jax  # noqa: PLC0415

    code = code_fingerprint()
    cfg, params, _ = _load_ours(source)
    compiled, args, compile_s = compile_sampler(cfg, params, [prompt], num_samples, max_new_tokens, temperature,
                                                top_k, seed=0)
    gc.collect()
    with common.PeakRSS() as memory:
        out = jax.block_until_ready(compiled(*args))
    check = check_ours(out, max_new_tokens, None)
    return {"num_samples": num_samples, "padded_prompt_length": int(args[1].shape[1]), "compile_s": compile_s,
            "rss_before_call_mib": memory.start_bytes / common.MIB, "call_peak_rss_mib": memory.peak_bytes / common.MIB,
            "call_growth_mib": (memory.peak_bytes - memory.start_bytes) / common.MIB, "method": memory.method,
            "all_full_length": check["all_full_length"], "code_sha256_16": code}


def analytic_sample_bytes(cfg: Any, max_new_tokens: int, prefix_length: int) -> dict[str, float]:
    """Bytes that should scale with m (per sample) and the prefix cache that should not (stored once)."""
    item = np.dtype(cfg.dtype).itemsize
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * item  # keys + values, every layer
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


def memory_sweep(source: ModelSource, prompt: tuple[int, ...], prompt_source: str, samples: Sequence[int],
                 max_new_tokens: int, temperature: float, top_k: int, isolate: bool) -> dict[str, Any]:
    points = []
    for m in samples:
        print(f"[sampler] memory sweep: m = {m}", flush=True)
        value, process_peak = _run(isolate, measure_memory_point, source, prompt, m, max_new_tokens, temperature,
                                   top_k)
        points.append(value | {"process_peak_rss_mib": process_peak})
    cfg = _source_config(source)
    analytic = analytic_sample_bytes(cfg, max_new_tokens, points[0]["padded_prompt_length"])
    ms = np.asarray([p["num_samples"] for p in points], np.float64)
    peaks = np.asarray([p["call_peak_rss_mib"] for p in points])
    slope = float(np.polyfit(ms, peaks, 1)[0]) if len(ms) > 1 else None
    first, last = points[0], points[-1]
    per_sample_mib = analytic["total_bytes_per_sample"] / common.MIB
    growth = last["call_peak_rss_mib"] - first["call_peak_rss_mib"]
    expected = (last["num_samples"] - first["num_samples"]) * per_sample_mib
    return {
        "description": "our peak RSS during one sampling call of ONE prompt with m samples, each m in a fresh "
                       "process; the growth with m should be the per-sample generated part only, while a sampler "
                       "that copied the prompt cache per sample would also grow by the prefix cache per sample",
        "prompt_tokens": len(prompt),
        "prompt_source": prompt_source,
        "max_new_tokens": max_new_tokens,
        "points": points,
        "analytic": analytic | {"total_mib_per_sample": per_sample_mib,
                                "prefix_kv_cache_mib_once": analytic["prefix_kv_cache_bytes_once"] / common.MIB},
        "measured_slope_mib_per_sample": slope,
        "measured_growth_mib": growth,
        "analytic_growth_mib": expected,
        "growth_measured_over_analytic": growth / expected if expected else None,
        "growth_if_prefix_copied_per_sample_mib": expected + (last["num_samples"] - first["num_samples"])
        * analytic["prefix_kv_cache_bytes_once"] / common.MIB,
    }


def _source_config(source: ModelSource) -> Any:
    from lsi.checkpoints import load_config  # noqa: PLC0415

    return load_config(source.ours)


# --- orchestration ------------------------------------------------------------------------------------------------

def wait_for_quiet(threshold: float | None, timeout_s: float, poll_s: float = 5.0) -> dict[str, Any]:
    """Waits (up to `timeout_s`) until the 1-min load average is below `threshold`; returns what it saw."""
    before = os.getloadavg()
    start = time.monotonic()
    if threshold is not None:
        announced = False
        while os.getloadavg()[0] >= threshold and time.monotonic() - start < timeout_s:
            if not announced:
                print(f"[sampler] waiting for load average < {threshold} (now {os.getloadavg()[0]:.2f})", flush=True)
                announced = True
            time.sleep(poll_s)
    after = os.getloadavg()
    busy = getattr(common, "machine_busy_cores", None)  # /proc/stat: cores other processes keep busy right now
    return {"threshold_1min": threshold, "timeout_s": timeout_s, "waited_s": round(time.monotonic() - start, 1),
            "quiet": None if threshold is None else after[0] < threshold,
            "load_average_before": list(before), "load_average_at_start": list(after),
            "busy_cores_at_start": busy(0.5) if busy else None}


def _run(isolate: bool, fn: Any, *args: Any, env: dict[str, str] | None = None) -> tuple[dict[str, Any], float | None]:
    """`fn(*args)` in a fresh process (or here): (its result, that process's peak RSS in MiB or None)."""
    if not isolate:
        return fn(*args), None
    result = common.run_isolated(fn, *args, env=env)
    value, peak = result if isinstance(result, tuple) else (result.value, result.process_peak_rss_bytes)
    return value, peak / common.MIB


class _InProcess:
    """`common.SideProcess`'s interface for a side built in this process (`--no_isolate`)."""

    def __init__(self, factory: Any, *args: Any) -> None:
        self._side = factory(*args)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self._side, method)(*args)

    def close(self) -> None:
        self._side = None

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._side = None


def compare(source: ModelSource, workload: Workload, eos_id: int | None, args: argparse.Namespace,
            ours_env: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Builds both sides (each in its own process), waits for a quiet machine, then times them in alternating
    rounds (ours, theirs; theirs, ours; ...), so that other processes' load hits both alike."""
    def side(factory: Any, *side_args: Any, env: dict[str, str] | None = None) -> Any:
        return common.SideProcess(factory, *side_args, env=env) if args.isolate else _InProcess(factory, *side_args)

    with contextlib.ExitStack() as stack:
        print("[sampler] ours: loading and compiling", flush=True)
        sides = {"ours": stack.enter_context(side(OurSampler, source, workload, eos_id, env=ours_env))}
        if args.reference:
            print(f"[sampler] transformers: loading ({args.threads} torch threads)", flush=True)
            sides["transformers"] = stack.enter_context(side(TheirGenerate, source, workload, args.threads, eos_id))
        quiet = wait_for_quiet(args.quiet_load, args.quiet_timeout)
        print(f"[sampler] timing {' and '.join(sides)}: {args.warmup} warmup + {args.repeats} timed calls each",
              flush=True)
        timings = common.time_interleaved({name: functools.partial(s.call, "sample") for name, s in sides.items()},
                                          warmup=args.warmup, repeats=args.repeats)
        quiet["load_average_after_timing"] = list(os.getloadavg())
        results: dict[str, Any] = {}
        for name, s in sides.items():
            if args.breakdown:
                print(f"[sampler] {name}: breakdown", flush=True)
            result = s.call("report", timings[name]["median_s"], args.breakdown)
            peak = s.close()
            memory = result["memory"]
            before_breakdown = memory.pop("process_peak_before_breakdown_mib")
            memory["process_peak_rss_mib"] = before_breakdown if args.isolate else None
            memory["process_peak_incl_breakdown_mib"] = peak / common.MIB if peak else None
            results[name] = result | {"timing": timings[name]}
    return results["ours"], results.get("transformers"), quiet


# Defaults of the run and of the seconds-long smoke run (`--config`).
FULL = {"num_prompts": 8, "samples": 16, "new_tokens": 128, "sweep_samples": "1,4,16,64",
        "sweep_prompt_tokens": 1500, "quiet_load": 0.7}
SMOKE = {"num_prompts": 3, "samples": 4, "new_tokens": 8, "sweep_samples": "1,4", "sweep_prompt_tokens": 48,
         "quiet_load": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="packaged model name, .gguf file or HF directory (default: %(default)s)")
    source.add_argument("--config", default=None,
                        help="named lsi config with random weights and random prompts, e.g. 'tiny' (smoke test)")
    parser.add_argument("--num_prompts", type=int, default=None, help="prompts in the batch (default 8; smoke 3)")
    parser.add_argument("--samples", type=int, default=None, help="samples per prompt, m (default 16; smoke 4)")
    parser.add_argument("--new_tokens", type=int, default=None, help="tokens sampled per sample (default 128)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_k", type=int, default=40)
    parser.add_argument("--exemplars", type=int, default=4, help="CoT exemplars per prompt (of the 8)")
    parser.add_argument("--random_prompt_lengths", default="20,40",
                        help="lo,hi token lengths of the random prompts of --config runs")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side before timing")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (and seed of random weights/prompts)")
    parser.add_argument("--threads", type=int, default=common.usable_cores(),
                        help="torch intra-op threads (default: usable cores, %(default)s)")
    parser.add_argument("--output", default=None,
                        help=f"JSON path (default: {DEFAULT_OUTPUT.relative_to(REPO)} for a checkpoint, "
                             "a temp-dir path for --config)")
    parser.add_argument("--no_reference", "--no-reference", dest="reference", action="store_false",
                        help="skip the transformers side")
    parser.add_argument("--no_breakdown", "--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the prefill/decode breakdown of both sides")
    parser.add_argument("--no_memory_sweep", "--no-memory-sweep", dest="memory_sweep", action="store_false",
                        help="skip the memory-versus-m experiment")
    parser.add_argument("--memory_only", "--memory-only", action="store_true",
                        help="run only the memory experiment")
    parser.add_argument("--sweep_samples", default=None, help="comma-separated m of the memory sweep (1,4,16,64)")
    parser.add_argument("--sweep_prompt_tokens", type=int, default=None,
                        help="length of the memory sweep's prompt (default 1500)")
    parser.add_argument("--quiet_load", type=float, default=-1.0,
                        help="wait until the 1-min load average is below this before each timed side (default 0.7; "
                             "none for --config runs; 0 disables)")
    parser.add_argument("--quiet_timeout", type=float, default=600.0, help="longest wait for a quiet machine (s)")
    parser.add_argument("--no_isolate", "--no-isolate", dest="isolate", action="store_false",
                        help="run everything in this process (no per-side process peak memory)")
    parser.add_argument("--xla_flags", "--xla-flags", default=None,
                        help="XLA_FLAGS for our side's processes (appended to the inherited ones); needs isolation")
    args = parser.parse_args(argv)
    preset = SMOKE if args.config else FULL
    for name in ("num_prompts", "samples", "new_tokens", "sweep_samples", "sweep_prompt_tokens"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    if args.quiet_load < 0:
        args.quiet_load = preset["quiet_load"]
    elif args.quiet_load == 0:
        args.quiet_load = None
    args.sweep_samples = [int(s) for s in str(args.sweep_samples).split(",") if s.strip()]
    args.random_prompt_lengths = tuple(int(s) for s in args.random_prompt_lengths.split(","))
    if min(args.num_prompts, args.samples, args.new_tokens, args.repeats, *args.sweep_samples) < 1 or args.warmup < 0:
        parser.error("sizes and --repeats must be >= 1 and --warmup >= 0.")
    if args.xla_flags and not args.isolate:
        parser.error("--xla_flags needs a fresh process for our side; drop --no_isolate.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    code_at_start = code_fingerprint()
    if args.output:
        output = pathlib.Path(args.output)
    elif args.config:
        output = pathlib.Path(tempfile.gettempdir()) / "lsi-benchmarks" / f"sampler_{args.config}.json"
    else:
        output = DEFAULT_OUTPUT
    ours_env = None
    if args.xla_flags:
        ours_env = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()}

    with tempfile.TemporaryDirectory(prefix="lsi-sampler-") as tmp:
        if args.config:
            source = model_sources.random_weight_source(args.config, args.seed, pathlib.Path(tmp) / "model")
            vocab_size = _source_config(source).vocab_size
            prompts = random_prompts(args.num_prompts, args.random_prompt_lengths, vocab_size, args.seed)
            prompt_sources = ["random ids"] * len(prompts)
            long_prompt = random_prompts(1, (args.sweep_prompt_tokens,) * 2, vocab_size, args.seed + 1)[0]
            long_source = "random ids"
            eos_id = None
        else:
            from lsi.vocab import load_vocabulary  # noqa: PLC0415

            source = model_sources.checkpoint_source(args.checkpoint)
            vocab = load_vocabulary(args.checkpoint)
            texts, prompt_sources = cot_prompts(args.num_prompts, args.exemplars)
            prompts = [_encode(vocab, t) for t in texts]
            long_prompt, long_source = long_cot_prompt(vocab, args.sweep_prompt_tokens)
            eos_id = vocab.eos_id
        workload = Workload(prompts=tuple(tuple(p) for p in prompts), num_samples=args.samples,
                            max_new_tokens=args.new_tokens, temperature=args.temperature, top_k=args.top_k,
                            seed=args.seed, warmup=args.warmup, repeats=args.repeats)
        lengths = [len(p) for p in prompts]
        print(f"[sampler] {source.description}: {len(prompts)} prompts of {lengths} tokens x {args.samples} samples "
              f"x {args.new_tokens} new tokens", flush=True)

        ours = theirs = sweep = None
        quiet: dict[str, Any] = {}
        if not args.memory_only:
            ours, theirs, quiet["comparison"] = compare(source, workload, eos_id, args, ours_env)
        if args.memory_sweep or args.memory_only:
            quiet["memory_sweep"] = wait_for_quiet(args.quiet_load, args.quiet_timeout)
            sweep = memory_sweep(source, tuple(long_prompt), long_source, args.sweep_samples, args.new_tokens,
                                 args.temperature, args.top_k, args.isolate)

    record = _record(args, source, workload, prompt_sources, ours, theirs, sweep, quiet)
    seen = [code_at_start, code_fingerprint()] + ([ours["code_sha256_16"]] if ours else []) + [
        p["code_sha256_16"] for p in (sweep or {}).get("points", [])]
    record["code_sha256_16"] = {"at_start": code_at_start, "unchanged_during_run": all(c == seen[0] for c in seen)}
    common.write_json(output, record)
    print(_summary(record))
    print(f"[sampler] wrote {output}")
    return record


def _record(args: argparse.Namespace, source: ModelSource, workload: Workload, prompt_sources: list[str],
            ours: dict | None, theirs: dict | None, sweep: dict | None, quiet: dict) -> dict[str, Any]:
    tokens = workload.sampled_tokens_per_call
    ours_tps = common.throughput(tokens, ours["timing"]) if ours else None
    theirs_tps = common.throughput(tokens, theirs["timing"]) if theirs else None
    ratio = ours_tps["median"] / theirs_tps["median"] if ours_tps and theirs_tps else None
    mem = {side: (r["memory"]["process_peak_rss_mib"], r["memory"]["sampling_peak_rss_mib"])
           for side, r in (("ours", ours), ("transformers", theirs)) if r}
    both = len(mem) == 2
    lengths = [len(p) for p in workload.prompts]
    return {
        "benchmark": "sampler",
        "description": "sampled tokens/s = prompts * samples * new_tokens / median wall time of one call that samples "
                       "every prompt's samples in one batch; no early stop on either side",
        "model": source.description,
        "dtype": ours["model_config"]["dtype"] if ours else None,
        "settings": {"num_prompts": len(workload.prompts), "num_samples": workload.num_samples,
                     "max_new_tokens": workload.max_new_tokens, "temperature": workload.temperature,
                     "top_k": workload.top_k, "top_p": 1.0, "eos": "ignored (no early stop on either side)",
                     "seed": workload.seed, "warmup": workload.warmup, "repeats": workload.repeats,
                     "exemplars_per_prompt": None if args.config else args.exemplars},
        "prompts": {"token_lengths": lengths, "mean_tokens": float(np.mean(lengths)), "sources": prompt_sources,
                    "padded_shape_ours": ours["padded_prompt_shape"] if ours else None,
                    "padded_shape_transformers": theirs["padded_prompt_shape"] if theirs else None,
                    "layout": "ours: right-padded to the next power of two, prefilled once per prompt; "
                              "transformers: left-padded with an attention mask, each prompt repeated m times"},
        "sampled_tokens_per_call": tokens,
        "tokens_per_s": {"ours": ours_tps["median"] if ours_tps else None,
                         "transformers": theirs_tps["median"] if theirs_tps else None},
        "ratio_ours_over_transformers": ratio,
        "compile_s_ours": ours["compile_s"] if ours else None,
        "peak_rss_mib": {side: {"process": v[0], "during_timed_calls": v[1]} for side, v in mem.items()},
        "equal_work_checked": all(r["check"]["all_full_length"] for r in (ours, theirs) if r),
        "targets": {
            "speedup_at_least": TARGET_SPEEDUP,
            "speedup_met": None if ratio is None else ratio >= TARGET_SPEEDUP,
            "memory_below_transformers_met": (mem["ours"][0] < mem["transformers"][0]
                                              if both and None not in (mem["ours"][0], mem["transformers"][0])
                                              else None),
            "memory_during_calls_below_transformers": mem["ours"][1] < mem["transformers"][1] if both else None,
        },
        "breakdown": {side: r.get("breakdown") for side, r in (("ours", ours), ("transformers", theirs)) if r},
        "memory_sweep": sweep,
        "quiet_machine": quiet,
        "threads": {"torch": theirs["runtime"]["torch_num_threads"] if theirs else None,
                    "xla": f"default CPU client thread pool over {common.usable_cores()} usable cores"},
        "ours": None if ours is None else ours | {"tokens_per_s": ours_tps},
        "transformers": None if theirs is None else theirs | {"tokens_per_s": theirs_tps},
        "isolated_processes": args.isolate,
        **common.environment_info(PACKAGES, ENV_VARS),
    }


def _summary(record: dict[str, Any]) -> str:
    lines = [(f"{record['model']}  {record['dtype']}  prompts {record['prompts']['token_lengths']} x "
              f"{record['settings']['num_samples']} samples x {record['settings']['max_new_tokens']} new tokens")]
    rows = []
    for side in ("ours", "transformers"):
        result = record[side]
        if result is None:
            continue
        t = result["timing"]
        rows.append([side, record["tokens_per_s"][side], t["median_s"], t["min_s"], t["max_s"], t["cpu_utilization"],
                     t.get("other_processes_cores"), result["memory"]["sampling_peak_rss_mib"],
                     result["memory"]["process_peak_rss_mib"]])
    if rows:
        lines.append(common.format_table(["side", "tokens/s", "median s", "min s", "max s", "cpu util",
                                          "others' cores", "call peak MiB", "proc peak MiB"], rows))
    if record["ratio_ours_over_transformers"] is not None:
        targets = record["targets"]
        lines.append(f"ours / transformers = {record['ratio_ours_over_transformers']:.2f} (target >= "
                     f"{targets['speedup_at_least']:g}: {'met' if targets['speedup_met'] else 'NOT met'}); "
                     f"memory below theirs: {targets['memory_below_transformers_met']}; "
                     f"equal work checked: {record['equal_work_checked']}")
    if record["compile_s_ours"] is not None:
        lines.append(f"compile (ours): {record['compile_s_ours']:.2f} s")
    for side, b in record["breakdown"].items():
        if b:
            lines.append(f"{side}: prefill {b['prefill_s']:.2f} s ({100 * b['prefill_share']:.0f}%), "
                         f"decode step {b['decode_step_s'] or 0:.4f} s"
                         + (f", token choice {b['token_choice_s_per_step']:.4f} s/step"
                            if "token_choice_s_per_step" in b else ""))
    sweep = record["memory_sweep"]
    if sweep:
        lines.append(f"memory sweep, one prompt of {sweep['prompt_tokens']} tokens, {sweep['max_new_tokens']} new:")
        lines.append(common.format_table(
            ["m", "call peak MiB", "call growth MiB", "process peak MiB"],
            [[p["num_samples"], p["call_peak_rss_mib"], p["call_growth_mib"], p["process_peak_rss_mib"]]
             for p in sweep["points"]]))
        lines.append(f"growth {sweep['measured_growth_mib']:.1f} MiB measured vs {sweep['analytic_growth_mib']:.1f} "
                     f"MiB analytic (per-sample KV + buffers {sweep['analytic']['total_mib_per_sample']:.2f} MiB); "
                     f"a per-sample prefix copy would add {sweep['growth_if_prefix_copied_per_sample_mib']:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
