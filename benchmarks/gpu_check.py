"""GPU/TPU readiness in one run and one JSON: correctness first, then speed.

1. logits: a random Llama (`llama_1b`; `tiny` with --smoke) in bfloat16 compute on the accelerator against the same
   weights in float32 on the CPU: the RMS logit error relative to the reference's spread (at most 5%: bf16 keeps ~3
   significant digits) and how often the argmax agrees (at least 90%; random weights leave near-ties at the top).
2. sharding: the sampler's tokens with the weights sharded over every device of the mesh (FSDP) equal the unsharded
   sampler's, token for token (on one GPU the mesh has one device: the sharded code path still runs).
3. sampler: `benchmarks.gpu_sampler` (tokens/s against transformers, fraction of the memory-bandwidth floor).
4. trainer: `benchmarks.gpu_trainer` with and without the hand-written backward passes (bf16 MFU against a measured
   bf16 matmul rate).

    benchmarks/gpu_check.sh              # on the device: $OUT/gpu_check.json (else benchmarks/results/gpu_check.json)
    benchmarks/gpu_check.sh --smoke      # the same steps with the tiny model on whatever backend is here (CI: CPU)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, gpu_sampler, gpu_trainer, model_sources
from lsi import partitioning
from lsi.decoding import SamplerSpec, TransformerLM, make_sampler
from lsi.io_utils import write_json_atomic
from lsi.models import Transformer, param_logical_axes
from lsi.sampling_methods import Temperature

MAX_RELATIVE_LOGIT_ERROR = 0.05  # RMS error over the float32 logits' standard deviation
MIN_ARGMAX_AGREEMENT = 0.9  # random weights leave many near-ties at the top


def logits_check(config_name: str, seed: int = 0) -> dict[str, Any]:
    """bf16 logits on the default device against float32 logits on the CPU, same random weights and tokens."""
    cfg, params = model_sources.random_params(config_name, seed)
    tokens = np.random.default_rng(seed).integers(3, cfg.vocab_size, (2, 64)).astype(np.int32)  # [batch, length]
    cpu = jax.devices("cpu")[0]  # jit runs where its arguments are
    reference = np.asarray(jax.jit(Transformer(cfg).apply)(jax.device_put({"params": params}, cpu),
                                                           jax.device_put(tokens, cpu)), np.float32)  # [b, l, vocab]
    bf16 = cfg.replace(dtype=jnp.bfloat16)
    on_device = np.asarray(jax.jit(Transformer(bf16).apply)({"params": jax.device_put(params)}, tokens), np.float32)
    error = on_device - reference
    rms = float(np.sqrt(np.mean(error ** 2)) / reference.std())
    agreement = float((on_device.argmax(-1) == reference.argmax(-1)).mean())
    return {"config": config_name, "device": str(jax.devices()[0]), "reference": "float32 on the CPU",
            "rms_error_over_reference_std": rms, "max_abs_error_over_reference_std": float(
                np.abs(error).max() / reference.std()), "argmax_agreement": agreement,
            "passed": rms <= MAX_RELATIVE_LOGIT_ERROR and agreement >= MIN_ARGMAX_AGREEMENT}


def sharding_check(config_name: str, seed: int = 0) -> dict[str, Any]:
    """The sampler's tokens with FSDP-sharded weights over every device equal those of the unsharded sampler."""
    cfg, params = model_sources.random_params(config_name, seed)
    spec = SamplerSpec(num_samples=4, max_new_tokens=16, method=Temperature(0.7, top_k=40))
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 17, 9, 32], np.int32)
    tokens = np.where(np.arange(32) < lengths[:, None], rng.integers(3, cfg.vocab_size, (4, 32)), 0).astype(np.int32)
    ids = np.arange(4, dtype=np.int32)
    single = jax.device_get(make_sampler(TransformerLM(cfg), spec)(jax.device_put(params), tokens, lengths, ids, 0))
    mesh = partitioning.make_mesh((1, jax.device_count(), 1))
    sharded_params = partitioning.shard_tree(params, param_logical_axes(cfg), mesh)
    sharded = jax.device_get(make_sampler(TransformerLM(cfg), spec, mesh)(sharded_params, tokens, lengths, ids, 0))
    return {"config": config_name, "mesh": dict(mesh.shape), "devices": jax.device_count(),
            "tokens_equal": bool(np.array_equal(single.tokens, sharded.tokens)),
            "passed": bool(np.array_equal(single.tokens, sharded.tokens))}


def _step(name: str, fn: Callable[[], dict[str, Any]], record: dict[str, Any], output: pathlib.Path) -> None:
    """Runs one step, records its result (or its error) and seconds, and rewrites the JSON: a step that fails or a
    run cut short by a time limit still leaves the steps before it."""
    start = time.perf_counter()
    try:
        record[name] = fn()
    except Exception as e:  # noqa: BLE001 - a failed step is a result; the later steps still run
        record[name] = {"error": f"{type(e).__name__}: {e}", "passed": False}
    record[name]["seconds"] = time.perf_counter() - start
    print(f"[gpu_check] {name}: {record[name].get('passed', 'done')} in {record[name]['seconds']:.1f} s", flush=True)
    write_json_atomic(output, record)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny model (seconds; any backend)")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    out = os.environ.get("OUT")
    output = args.output or (pathlib.Path(out) / "gpu_check.json" if out else common.RESULTS / "gpu_check.json")
    config = "tiny" if args.smoke else "llama_1b"
    record: dict[str, Any] = {"benchmark": "gpu_check", "smoke": args.smoke, "backend": jax.default_backend(),
                              "devices": [str(d) for d in jax.devices()]}
    scratch = output.parent / f".{output.stem}_parts"
    _step("logits", lambda: logits_check(config), record, output)
    _step("sharding", lambda: sharding_check(config), record, output)
    sampler_args = ["--config", config, "--output", str(scratch / "sampler.json")] + (
        ["--repeats", "1", "--warmup", "0", "--no_breakdown"] if args.smoke else [])
    _step("sampler", lambda: gpu_sampler.main(sampler_args), record, output)
    for custom_grads in (True, False):
        name = "trainer" if custom_grads else "trainer_autodiff"
        _step(name, lambda c=custom_grads: gpu_trainer.main(
            ["--config", config, "--output", str(scratch / f"{name}.json"),
             "--custom_grads" if c else "--no_custom_grads"]),
            record, output)
    record["passed"] = all(record[k].get("passed", "error" not in record[k])
                           for k in ("logits", "sharding", "sampler", "trainer", "trainer_autodiff"))
    record["environment"] = common.environment_info(("jax", "jaxlib", "flax", "torch", "transformers"))
    write_json_atomic(output, record)
    print(f"[gpu_check] passed: {record['passed']}; wrote {output}")
    return record


if __name__ == "__main__":
    main()
