"""llama.cpp's side of the sampler benchmark: the benchmark's workload sampled with llama.cpp's own C API (through
llama-cpp-python's ctypes bindings), in a side process of its own (`common.SideProcess`).

Per group of prompts (one prompt by default), llama.cpp does what our sampler does: each prompt is prefilled once into
one sequence of a unified KV cache, which `llama_memory_seq_cp` then shares with its m - 1 sibling sequences (cells
are tagged with several sequence ids: nothing is copied); then all of the group's samples decode together, one token
each per `llama_decode`, for exactly `max_new_tokens` tokens, EOS included (no early stop), as the other sides do.
Tokens are chosen by a sampler chain of top-k, then temperature, then a draw seeded with the workload's seed. Only the
positions that are sampled from produce logits (a prompt's last token; every token of a decode step).

Why groups: llama.cpp's unified cache is attended to as a whole (other sequences' cells are masked, not skipped), so
one batch of all prompts would make every decoded token attend over every prompt's cells. `prompts_per_batch` trades
that against the larger matmuls of a bigger batch; the group's sequences must fit llama.cpp's 256 sequence ids.

The weights are those of a GGUF file: `benchmarks.gguf_export` writes the packaged Q4_1 model dequantized to F32 (the
values our sampler computes with), and llama.cpp also runs the Q4_1 file itself, its usual fast configuration.

    python -m benchmarks.llama_cpp_side --check   # tokens/s of a small shape, greedy equality with ours

This module imports llama_cpp and numpy, no jax and no torch: the side's peak memory is llama.cpp's own.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from benchmarks import common, sampler

KV_CACHE_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: the sequence ids one context holds


@llama_cpp.llama_log_callback
def _log_errors_only(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level == 3:  # GGML_LOG_LEVEL_ERROR; the load and context logs are hundreds of INFO lines per side
        print(text.decode("utf-8", "replace"), end="", file=sys.stderr, flush=True)


def quiet_logs() -> None:
    llama_cpp.llama_log_set(_log_errors_only, ctypes.c_void_p(0))


def load_model(gguf_path: str | os.PathLike) -> Any:
    """llama.cpp's model (on the CPU: no layers offloaded), with a clear error for a file it cannot load."""
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(os.fsencode(gguf_path), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {gguf_path}")
    return model


def new_context(model: Any, n_ctx: int, n_batch: int, n_sequences: int, threads: int, kv_cache_type: str,
                kv_unified: bool = True) -> Any:
    """A context whose KV cache holds `n_ctx` cells over `n_sequences` sequences, decoding up to `n_batch` tokens per
    call in one physical batch (n_ubatch = n_batch: a whole prompt is prefilled in one pass), with room for the
    logits of one token per sequence (all a decode step samples from; a prefill needs one row).

    Unified: the sequences share one pool of cells (a prompt copied to its samples is stored once), and every token
    attends over all of the pool's cells in use, masked. Not unified: each sequence has a stream of n_ctx /
    n_sequences cells of its own (a copied prompt is stored per sample) and attends over its own."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
    params.n_seq_max = params.n_outputs_max = n_sequences
    params.n_threads = params.n_threads_batch = threads
    params.type_k = params.type_v = KV_CACHE_TYPES[kv_cache_type]
    params.kv_unified = kv_unified
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} cells, batch {n_batch}, "
                           f"{n_sequences} sequences")
    return ctx


def sampler_chain(top_k: int, temperature: float, seed: int) -> Any:
    """top-k (none where 0), then temperature, then a draw seeded with `seed`: llama.cpp's usual order."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if top_k:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def greedy_chain() -> Any:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    return chain


class Batch:
    """A `llama_batch` of up to `capacity` tokens, one sequence id each, filled from Python."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)

    def fill(self, tokens: Sequence[int], positions: Sequence[int], sequences: Sequence[int],
             logits: Sequence[bool]) -> None:
        if len(tokens) > self.capacity:
            raise ValueError(f"{len(tokens)} tokens do not fit a batch of {self.capacity}")
        b = self.batch
        for i, (token, pos, seq, out) in enumerate(zip(tokens, positions, sequences, logits, strict=True)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, pos, 1, seq, out
        b.n_tokens = len(tokens)

    def decode(self, ctx: Any) -> None:
        status = llama_cpp.llama_decode(ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for {self.batch.n_tokens} tokens "
                               "(1: no KV cache slot: the context is too small)")

    def free(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


def sample_group(ctx: Any, batch: Batch, chain: Any, prompts: Sequence[Sequence[int]], num_samples: int,
                 max_new_tokens: int) -> np.ndarray:
    """int32 [len(prompts), num_samples, max_new_tokens] tokens of `prompts` sampled together in `ctx`.

    Prompt j lives in sequence j * m, prefilled alone (logits of its last token only), its first tokens drawn from
    those logits, then shared with sequences j * m + 1 ... j * m + m - 1. Each decode step feeds every sample's last
    token at its own position and draws the next token from that token's logits.
    """
    memory = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_clear(memory, True)
    m, group = num_samples, len(prompts)
    tokens = np.zeros((group, m, max_new_tokens), np.int32)  # [prompts, samples, new tokens]
    for j, prompt in enumerate(prompts):
        n = len(prompt)
        batch.fill(prompt, range(n), [j * m] * n, [i == n - 1 for i in range(n)])
        batch.decode(ctx)
        for s in range(m):
            tokens[j, s, 0] = llama_cpp.llama_sampler_sample(chain, ctx, n - 1)
        for s in range(1, m):
            llama_cpp.llama_memory_seq_cp(memory, j * m, j * m + s, -1, -1)
    lengths = np.repeat([len(p) for p in prompts], m)  # [group * m]: each sample's prompt length
    sequences = list(range(group * m))
    for step in range(1, max_new_tokens):
        batch.fill(tokens[:, :, step - 1].ravel().tolist(), (lengths + step - 1).tolist(), sequences,
                   [True] * (group * m))
        batch.decode(ctx)
        step_tokens = [llama_cpp.llama_sampler_sample(chain, ctx, i) for i in sequences]
        tokens[:, :, step] = np.asarray(step_tokens, np.int32).reshape(group, m)
    return tokens


def group_sizes(prompts: Sequence[Sequence[int]], group: int, num_samples: int, max_new_tokens: int,
                kv_unified: bool = True) -> tuple[int, int]:
    """(KV cells, batch tokens) the largest group of `group` prompts needs, and a batch that holds a whole prompt or
    one decode step. Unified: its prompts once and every sample's generated tokens (all but the last are fed back);
    not unified: a stream per sample, each as long as the longest prompt and its generated tokens."""
    groups = [prompts[i:i + group] for i in range(0, len(prompts), group)]
    if kv_unified:
        cells = max(sum(len(p) for p in g) + len(g) * num_samples * (max_new_tokens - 1) for g in groups)
    else:
        cells = min(group, len(prompts)) * num_samples * (max(len(p) for p in prompts) + max_new_tokens)
    return cells, max(max(len(p) for p in prompts), group * num_samples)


def model_description(model: Any) -> dict[str, Any]:
    buffer = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, buffer, len(buffer))
    return {"description": buffer.value.decode("utf-8", "replace"), "size_bytes": llama_cpp.llama_model_size(model),
            "num_params": llama_cpp.llama_model_n_params(model)}


class LlamaCppSampler(common.Side):
    """The workload's prompts sampled by llama.cpp from `gguf_path`, `prompts_per_batch` prompts (with all their
    samples) per batch, `threads` threads; `call()` gives int32 [prompts, samples, max_new_tokens] tokens.

    The model and a context sized for the workload are built on construction (no call includes them).
    `kv_cache_type` is the cache's element type: "f32" (as our float32 sampler keeps it) or "f16" (llama.cpp's
    default)."""

    def __init__(self, gguf_path: str | os.PathLike, workload: sampler.Workload, threads: int,
                 eos_id: int | None = None, kv_cache_type: str = "f32", prompts_per_batch: int = 1,
                 kv_unified: bool = True) -> None:
        quiet_logs()
        m = workload.num_samples
        if m > MAX_SEQUENCES:
            raise ValueError(f"llama.cpp holds at most {MAX_SEQUENCES} sequences per context; m = {m}")
        self.gguf_path, self.workload, self.threads, self.eos_id = os.fspath(gguf_path), workload, threads, eos_id
        self.kv_cache_type, self.kv_unified = kv_cache_type, kv_unified
        self.prompts_per_batch = max(1, min(prompts_per_batch, len(workload.prompts), MAX_SEQUENCES // m))
        start = time.perf_counter()
        self.model = load_model(self.gguf_path)
        self.load_s = time.perf_counter() - start
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        cells, n_batch = group_sizes(workload.prompts, self.prompts_per_batch, m, workload.max_new_tokens,
                                     kv_unified)
        self.ctx = new_context(self.model, cells, n_batch, self.prompts_per_batch * m, threads, kv_cache_type,
                               kv_unified)
        self.batch = Batch(n_batch)

    def sample(self, max_new_tokens: int | None = None) -> np.ndarray:
        """int32 [prompts, samples, new tokens]: the workload (with `max_new_tokens` new tokens where given)."""
        w, g = self.workload, self.prompts_per_batch
        chain = sampler_chain(w.top_k, w.temperature, w.seed)  # a fresh chain: every call draws the same tokens
        try:
            return np.concatenate([sample_group(self.ctx, self.batch, chain, w.prompts[i:i + g], w.num_samples,
                                                max_new_tokens or w.max_new_tokens)
                                   for i in range(0, len(w.prompts), g)])
        finally:
            llama_cpp.llama_sampler_free(chain)

    def call(self) -> np.ndarray:
        return self.sample()

    def greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> np.ndarray:
        """int32 [prompts, new_tokens]: argmax continuations of `prompts`, decoded together in a context of their
        own (same threads and cache type), no early stop."""
        cells, n_batch = group_sizes(prompts, len(prompts), 1, new_tokens, self.kv_unified)
        ctx = new_context(self.model, cells, n_batch, len(prompts), self.threads, self.kv_cache_type,
                          self.kv_unified)
        batch, chain = Batch(n_batch), greedy_chain()
        try:
            return sample_group(ctx, batch, chain, prompts, 1, new_tokens)[:, 0]
        finally:
            llama_cpp.llama_sampler_free(chain)
            batch.free()
            llama_cpp.llama_free(ctx)

    def check(self) -> dict[str, Any]:
        """Whether the last call sampled exactly `max_new_tokens` valid tokens for every sample (no early stop)."""
        tokens, w = self.output, self.workload
        return {"tokens_shape": list(tokens.shape),
                "all_full_length": tokens.shape == (len(w.prompts), w.num_samples, w.max_new_tokens)
                and bool(((tokens >= 0) & (tokens < self.n_vocab)).all()),
                "eos_tokens_sampled": None if self.eos_id is None else int((tokens == self.eos_id).sum())}

    def report(self, median_s: float, breakdown: bool) -> dict[str, Any]:
        result = {
            "device": "cpu",
            "gguf_file": self.gguf_path,
            "model": model_description(self.model),
            "prompt_tokens": [len(p) for p in self.workload.prompts],
            "layout": f"unpadded; {self.prompts_per_batch} prompt(s) per batch, each prefilled once and copied to "
                      f"its samples' sequences (llama_memory_seq_cp; {'unified' if self.kv_unified else 'per-sequence'}"
                      " KV cache)",
            "context": {"n_ctx": llama_cpp.llama_n_ctx(self.ctx), "n_batch": llama_cpp.llama_n_batch(self.ctx),
                        "n_ubatch": llama_cpp.llama_n_ubatch(self.ctx),
                        "n_seq_max": llama_cpp.llama_n_seq_max(self.ctx),
                        "kv_unified": self.kv_unified, "kv_cache_type": self.kv_cache_type, "flash_attn": "auto"},
            "sampler_chain": f"top_k({self.workload.top_k}) -> temp({self.workload.temperature}) -> "
                             f"dist(seed {self.workload.seed})",
            "load_s": self.load_s,
            "check": self.check(),
            "memory": self.call_memory("sampling") | {
                "process_peak_before_breakdown_mib": common.peak_rss_bytes() / common.MIB},
            "runtime": {"n_threads": llama_cpp.llama_n_threads(self.ctx),
                        "n_threads_batch": llama_cpp.llama_n_threads_batch(self.ctx),
                        "llama_cpp_python": llama_cpp.__version__,
                        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()},
        }
        self.output = None
        if breakdown:
            prefill_s = common.timed_call(lambda: self.sample(max_new_tokens=1))[0]
            steps = self.workload.max_new_tokens - 1
            result["breakdown"] = {
                "prefill_s": prefill_s,
                "prefill_note": "a max_new_tokens=1 call: each prompt's prefill + its samples' first tokens",
                "decode_s": median_s - prefill_s,
                "decode_step_s": (median_s - prefill_s) / steps if steps else None,
                "prefill_share": prefill_s / median_s,
            }
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="tokens/s of a small shape and greedy equality with ours (`benchmarks.llama_cpp_check`; "
                             "its flags follow)")
    args, rest = parser.parse_known_args(argv)
    if not args.check:
        parser.error("nothing to do: pass --check (the benchmark itself builds this side as a SideProcess)")
    # Imported here, by its module path, so that its side processes are started from that module, not __main__.
    from benchmarks import llama_cpp_check

    llama_cpp_check.main(rest)


if __name__ == "__main__":
    main()
