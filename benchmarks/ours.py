"""Our side of every benchmark, in JAX: each class here is built in a side process of its own (`common.SideProcess`).

This module imports jax and lsi's model code; `benchmarks.peers` imports torch and transformers; the benchmark
modules import neither at the top, so that each side's process holds (and its peak memory counts) only its own
library. lsi.training is imported where a train step is built: it brings orbax and optax, which the sampler's
process should not hold.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, forward, model_sources, sampler, trainer
from lsi.checkpoints import load_checkpoint
from lsi.decoding import (FINISH_MAX_LENGTH, SamplerSpec, TransformerLM, bucket_length, choose_tokens, make_sampler,
                          sample_keys)
from lsi.models import Transformer, get_config, init_params
from lsi.partitioning import make_mesh
from lsi.sampling_methods import Temperature


def load_on_device(load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any, float]:
    """(config, params on the default device, seconds) from `load()`'s (config, host params); only the device copy
    stays alive, as in a real run."""
    start = time.perf_counter()
    cfg, host_params = load()
    params = jax.block_until_ready(jax.device_put(host_params))
    del host_params
    gc.collect()
    return cfg, params, time.perf_counter() - start


def runtime() -> dict[str, Any]:
    """Which backend and devices our side ran on, with which XLA flags."""
    return {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def device_memory_mib() -> dict[str, float] | None:
    """The first device's allocator figures in MiB (None where the backend keeps none, as CPUs may)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (CPU backends may not implement it)
        stats = None
    return {k: stats[k] / common.MIB for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
            if k in stats} if stats else None


# --- sampling -----------------------------------------------------------------------------------------------------

def compile_sampler(cfg: Any, params: Any, prompts: Sequence[Sequence[int]], num_samples: int, max_new_tokens: int,
                    temperature: float, top_k: int, seed: int, layerwise: bool = True) -> tuple[Any, tuple, float]:
    """(compiled sampler, its device arguments, compile seconds) for right-padded, length-bucketed prompts."""
    tokens, mask = sampler.pad(prompts, bucket_length(max(len(p) for p in prompts)), left=False)
    spec = SamplerSpec(num_samples=num_samples, max_new_tokens=max_new_tokens, eos_ids=(), stop_sequences=(),
                       method=Temperature(temperature, top_k=top_k), pad_id=sampler.PAD_ID)
    args = jax.device_put((params, tokens.astype(np.int32), mask.sum(1, dtype=np.int32),
                           np.arange(len(prompts), dtype=np.int32), jnp.int32(seed)))
    start = time.perf_counter()
    compiled = make_sampler(TransformerLM(cfg, layerwise), spec).lower(*args).compile()
    return compiled, args, time.perf_counter() - start


class OurSampler(common.Side):
    """`load()` gives (config, host params), which go to the device once; the sampler is compiled on construction, so
    no call includes the compile; `report()` describes the calls made."""

    def __init__(self, load: Callable[[], tuple[Any, Any]], workload: sampler.Workload, eos_id: int | None) -> None:
        self.workload, self.eos_id = workload, eos_id
        self.code = sampler.code_fingerprint()
        self.cfg, self.params, self.load_s = load_on_device(load)
        self.compiled, self.args, self.compile_s = compile_sampler(
            self.cfg, self.params, workload.prompts, workload.num_samples, workload.max_new_tokens,
            workload.temperature, workload.top_k, workload.seed)
        self.device_memory_before = device_memory_mib()

    def call(self) -> Any:
        return jax.block_until_ready(self.compiled(*self.args))

    def check(self) -> dict[str, Any]:
        """Whether every sample of the last call generated exactly `max_new_tokens` tokens (no early stop)."""
        out, full = self.output, self.workload.max_new_tokens
        lengths, reasons, tokens = np.asarray(out.lengths), np.asarray(out.finish_reason), np.asarray(out.tokens)
        return {"tokens_shape": list(tokens.shape), "new_tokens_min": int(lengths.min()),
                "new_tokens_max": int(lengths.max()),
                "all_full_length": bool((lengths == full).all() and (reasons == FINISH_MAX_LENGTH).all()
                                        and tokens.shape[-1] == full),
                "eos_tokens_sampled": None if self.eos_id is None else int((tokens == self.eos_id).sum())}

    def report(self, median_s: float, breakdown: bool) -> dict[str, Any]:
        result = {
            "model_config": common.config_dict(self.cfg),
            "num_params": self.cfg.num_params,
            "padded_prompt_shape": list(self.args[1].shape),
            "code_sha256_16": self.code,
            "load_s": self.load_s,
            "compile_s": self.compile_s,
            "check": self.check(),
            "memory": self.call_memory("sampling") | {
                "process_peak_before_breakdown_mib": common.peak_rss_bytes() / common.MIB,
                "device_mib_before_sampling": self.device_memory_before,
                "device_mib_after_sampling": device_memory_mib()},
            "runtime": runtime(),
        }
        self.output = self.compiled = None  # free the sampler's buffers before the breakdown's own
        if breakdown:
            result["breakdown"] = sampling_breakdown(self.cfg, self.params, self.workload, median_s)
        return result


def sampling_breakdown(cfg: Any, params: Any, workload: sampler.Workload, total_s: float) -> dict[str, Any]:
    """Where our time goes: prefill (+ the first token), per decode step, and the token choice within a step."""
    prefill, args, compile_s = compile_sampler(cfg, params, workload.prompts, workload.num_samples, 1,
                                               workload.temperature, workload.top_k, workload.seed)
    prefill_s = common.time_call(lambda: jax.block_until_ready(prefill(*args)), warmup=1, repeats=2)["median_s"]
    steps = workload.max_new_tokens - 1
    step_s = (total_s - prefill_s) / steps if steps else None
    batch, m = len(workload.prompts), workload.num_samples
    method = Temperature(workload.temperature, top_k=workload.top_k)

    @jax.jit
    def choose(logits: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        # What the sampler does per step besides the model: top-k draw and the chosen token's log-probability.
        token = choose_tokens(logits, keys, method)
        return token, jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[..., None], axis=-1)[..., 0]

    logits = jax.random.normal(jax.random.PRNGKey(0), (batch, m, cfg.vocab_size), jnp.float32) * 3.0
    keys = sample_keys(0, jnp.arange(batch), m)
    choose_s = common.time_call(lambda: jax.block_until_ready(choose(logits, keys)), warmup=1, repeats=5)["median_s"]
    logits = None  # free it before the decode-step measurements
    # One model decode step alone (outside the sampler's loop), against the real caches (the padded prompt and
    # max_new generated slots per sample) and against near-empty ones: the difference is the cost of attention.
    lm = TransformerLM(cfg)
    full_step = decode_step_s(lm, params, args[1], args[2], m, workload.max_new_tokens)
    bare_step = decode_step_s(lm, params, jnp.ones((batch, 16), jnp.int32), jnp.full((batch,), 16, jnp.int32), m, 1)
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


def decode_step_s(lm: Any, params: Any, tokens: Any, lengths: Any, num_samples: int, max_new: int) -> float:
    """Median seconds of one jitted `lm.decode` step over the cache of a prefill of `tokens`."""
    _, cache = jax.jit(lambda p, t, n: lm.prefill(p, t, n, num_samples, max_new))(params, tokens, lengths)
    shape = (tokens.shape[0], num_samples)
    step = jax.jit(lambda p, tok, pos, c: lm.decode(p, tok, pos, c)[0])  # logits only: no cache copy returned
    params = jax.jit(lm.decode_params)(params)  # once per batch in the sampler, so not part of a step
    positions = jnp.broadcast_to(lengths[:, None], shape).astype(jnp.int32)
    return common.time_call(lambda: jax.block_until_ready(step(params, jnp.zeros(shape, jnp.int32), positions,
                                                               cache)), warmup=1, repeats=3)["median_s"]


def memory_point(checkpoint: str, workload: sampler.Workload) -> dict[str, Any]:
    """Our peak RSS while sampling `workload` (one prompt, m samples) in one call, after compiling."""
    side = OurSampler(functools.partial(load_checkpoint, checkpoint), workload, None)
    side.run_once()
    start, peak = side.rss_before_bytes, side.call_peak_bytes
    return {"num_samples": workload.num_samples, "padded_prompt_length": int(side.args[1].shape[1]),
            "compile_s": side.compile_s, "rss_before_call_mib": start / common.MIB,
            "call_peak_rss_mib": peak / common.MIB, "call_growth_mib": (peak - start) / common.MIB,
            "method": side.memory_method, "all_full_length": side.check()["all_full_length"],
            "code_sha256_16": side.code}


def bf16_config(config_name: str) -> Any:
    return get_config(config_name, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)


def random_bf16_params(config_name: str, seed: int) -> tuple[Any, Any]:
    """`model_sources.random_params` of a config computed in bfloat16, the weights rounded to bfloat16."""
    cfg = bf16_config(config_name)
    return model_sources.random_params(config_name, seed, cfg.dtype, dtype=cfg.dtype, param_dtype=cfg.param_dtype)


def device_bandwidth(num_mib: int, repeats: int = 10) -> dict[str, Any]:
    """Device copy bandwidth: a jitted `x * 2` over a bf16 array reads and writes it once (bytes moved = 2 * size)."""
    n = num_mib * common.MIB // 2
    x = jax.block_until_ready(jnp.ones((n,), jnp.bfloat16))
    scale = jax.jit(lambda a: a * jnp.asarray(2, a.dtype))
    timing = common.time_call(lambda: jax.block_until_ready(scale(x)), warmup=2, repeats=repeats)
    moved = 2 * n * 2
    return {"array_mib": num_mib, "bytes_moved_per_call": moved, "median_s": timing["median_s"],
            "min_s": timing["min_s"], "bytes_per_s": moved / timing["median_s"],
            "best_bytes_per_s": moved / timing["min_s"]}


def measure_gpu_sampler(config_name: str, workload: sampler.Workload, breakdown: bool, bandwidth_mib: int
                        ) -> dict[str, Any]:
    """`benchmarks.gpu_sampler`'s measurement of our side, then of the device's copy bandwidth."""
    side = OurSampler(functools.partial(random_bf16_params, config_name, workload.seed), workload, None)
    result = common.measure_side(side, workload.warmup, workload.repeats, breakdown)
    del side  # its params and caches leave the device before the bandwidth array arrives
    return result | {"bandwidth": device_bandwidth(bandwidth_mib)}


# --- forward ------------------------------------------------------------------------------------------------------

class OursForward(common.Side):
    """Loads the checkpoint, puts the params on the device once, compiles the jitted forward."""

    def __init__(self, source: model_sources.ModelSource, workload: forward.Workload) -> None:
        self.cfg, self.params, self.load_s = load_on_device(functools.partial(load_checkpoint, source.ours))
        self.tokens = forward.benchmark_tokens(workload, self.cfg.vocab_size)
        self.device_tokens = jax.block_until_ready(jax.device_put(self.tokens))
        model = Transformer(self.cfg)
        start = time.perf_counter()  # [batch, length] -> [batch, length, vocab]
        lowered = jax.jit(lambda p, t: model.apply({"params": p}, t)).lower(self.params, self.device_tokens)
        self.lower_s = time.perf_counter() - start
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start

    def call(self) -> Any:
        return jax.block_until_ready(self.compiled(self.params, self.device_tokens))

    def finish(self, logits_path: str | None) -> dict[str, Any]:
        if logits_path:
            np.save(logits_path, np.asarray(self.output))
        return {
            "model_config": common.config_dict(self.cfg),
            "num_params": self.cfg.num_params,
            "forward_flops_per_token": self.cfg.flops_per_token(self.tokens.shape[1]) / 3.0,
            "logits_shape": list(self.output.shape),
            "logits_dtype": str(self.output.dtype),
            "tokens_sha256_16": forward.digest(self.tokens),
            "load_s": self.load_s,
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            "memory": self.call_memory("forward"),
            "runtime": runtime() | {"compilation_cache_dir": jax.config.jax_compilation_cache_dir},
        }


# --- training -----------------------------------------------------------------------------------------------------

def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one n^3 matmul in `dtype` on the default device: the practical peak MFU is measured against."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    return 2.0 * n ** 3 / common.time_call(lambda: f(a, a).block_until_ready(), warmup=2, repeats=repeats)["min_s"]


def train_weights(work: trainer.Workload) -> tuple[Any, Any]:
    """(config, float32 params) of our side: `work`'s checkpoint, or a named config's random init."""
    if work.checkpoint.startswith("random:"):
        cfg = get_config(work.checkpoint.removeprefix("random:"))
        return cfg, init_params(cfg, jax.random.PRNGKey(work.seed))
    return load_checkpoint(work.checkpoint_path)


class OursTrainStep(common.Side):
    """The jitted train step on `work`'s batch, one step per call; the first step (which compiles) runs on
    construction."""

    def __init__(self, work: trainer.Workload, custom_grads: bool | None = None) -> None:
        from lsi.training.optimizers import OptimizerConfig  # noqa: PLC0415
        from lsi.training.trainer import (  # noqa: PLC0415
            TrainConfig, initial_state, make_train_step, training_model_config)

        self.work = work
        cfg, params = train_weights(work)
        opt = OptimizerConfig(name="adamw", learning_rate=work.learning_rate, clip_norm=1.0, weight_decay=0.0)
        tc = TrainConfig(steps=1, batch_size=work.batch_size, seq_length=work.length, optimizer=opt,
                         dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[work.dtype],
                         num_microbatches=work.num_microbatches)
        self.cfg = training_model_config(tc, cfg.replace(remat=work.remat, custom_grads=custom_grads))
        mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
        self.step_fn = make_train_step(self.cfg, opt, work.num_microbatches, mesh, (work.batch_size, work.length))
        self.state = initial_state(params, opt, self.step_fn.shardings)
        del params
        tokens = work.tokens(self.cfg.vocab_size)
        batch = {"tokens": tokens, "positions": np.broadcast_to(np.arange(work.length, dtype=np.int32), tokens.shape),
                 "segment_ids": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}
        self.batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        self.losses: list[float] = []
        start = time.perf_counter()
        self.call()
        self.first_step_s = time.perf_counter() - start  # includes the compile

    def call(self) -> None:
        self.state, metrics = self.step_fn(self.state, self.batch)
        self.losses.append(float(metrics["loss"]))  # blocks until the step is done

    def matmul_peak(self) -> float:
        return matmul_peak(self.work.dtype)

    def finish(self) -> dict[str, Any]:
        tokens = self.work.batch_size * self.work.length
        return {
            "first_step_s_including_compile": self.first_step_s,
            "first_step_loss": self.losses[0],
            "losses": self.losses,
            "flops_per_token": self.cfg.flops_per_token(self.work.length),
            "device": str(jax.devices()[0]),
            "num_params": self.cfg.num_params,
            "dense_gemm_floor": trainer.gemm_floor("jax", self.cfg, tokens, jax.jit, jnp.asarray,
                                                   jax.block_until_ready),
        }
