"""The sampler's two decode paths, side by side: the layer-by-layer decode (`TransformerLM(layerwise=True)`, the
default) and the scanned `Transformer.decode` (`layerwise=False`): compile seconds, run seconds, sampled tokens/s,
and whether both sample the same tokens (they must).

The layerwise step reads per-layer weights and caches in place; the scanned one compiles one layer for all. Which
wins depends on the model: SmolLM2 (30 layers) and a deep, narrow model (80 layers) are measured.

    python -m benchmarks.decode_paths                    # -> benchmarks/results/decode_paths_cpu.json (~8 min)
    python -m benchmarks.decode_paths --models tiny --output /tmp/decode_paths.json      # seconds
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import jax
import numpy as np

from benchmarks import common, ours
from lsi.checkpoints import load_checkpoint
from lsi.io_utils import write_json_atomic
from lsi.models import get_config, init_params

DEFAULT_OUTPUT = common.RESULTS / "decode_paths_cpu.json"
MODELS = ("smollm2", "deep80", "tiny")


def load_model(name: str) -> tuple[Any, Any]:
    """(config, params): the real SmolLM2-135M-Instruct, or random weights for the deep and tiny configs."""
    if name == "smollm2":
        return load_checkpoint("smollm2-135m-instruct")
    cfg = get_config("tiny", **({"num_layers": 80, "embed_dim": 256, "num_heads": 4, "num_kv_heads": 2,
                                 "head_dim": 64, "mlp_dim": 512} if name == "deep80" else {}))
    return cfg, init_params(cfg, jax.random.PRNGKey(0))


def measure(name: str, prompt_length: int, num_samples: int, new_tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Both paths on one model: 4 prompts of up to `prompt_length` tokens, `num_samples` samples of `new_tokens`."""
    cfg, params = load_model(name)
    ids = np.random.default_rng(0).integers(1, cfg.vocab_size, (4, prompt_length))
    lengths = [prompt_length, prompt_length * 3 // 4, prompt_length // 2, prompt_length * 2 // 3]
    prompts = [row[:n].tolist() for row, n in zip(ids, lengths)]
    rows, sampled = [], {}
    for layerwise in (True, False):
        compiled, args, compile_s = ours.compile_sampler(cfg, params, prompts, num_samples, new_tokens, 0.7, 40,
                                                         seed=0, layerwise=layerwise)
        sampled[layerwise] = np.asarray(compiled(*args).tokens)  # also the warmup call
        timing = common.time_call(lambda c=compiled: c(*args).tokens.block_until_ready(), warmup=0, repeats=repeats)
        rows.append({"model": name, "num_layers": cfg.num_layers, "embed_dim": cfg.embed_dim,
                     "layerwise": layerwise, "compile_s": compile_s, "timing": timing,
                     "tokens_per_s": 4 * num_samples * new_tokens / timing["median_s"]})
        print(f"{name:8s} layerwise={layerwise!s:5s} compile {compile_s:6.1f} s  run {timing['median_s']:6.2f} s  "
              f"{rows[-1]['tokens_per_s']:7.1f} tokens/s", flush=True)
    same = bool(np.array_equal(sampled[True], sampled[False]))
    return [row | {"same_tokens_as_other_path": same} for row in rows]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,deep80", help=f"comma-separated, of {MODELS}")
    parser.add_argument("--prompt_length", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown --models {sorted(unknown)}; choose from {MODELS}")
    rows = [row for name in models
            for row in measure(name, args.prompt_length, args.samples, args.new_tokens, args.repeats)]
    record = {"benchmark": "decode_paths", "workload": {"prompts": 4, "prompt_length": args.prompt_length,
                                                        "samples": args.samples, "new_tokens": args.new_tokens},
              "results": rows, "environment": common.environment_info(("jax", "jaxlib", "flax"))}
    write_json_atomic(args.output, record)
    print(f"wrote {args.output}")
    return record


if __name__ == "__main__":
    main()
