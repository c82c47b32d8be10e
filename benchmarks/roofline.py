"""The CPU's float32 matmul roofline, measured where the samplers run: the best GFLOP/s that XLA (ours) and numpy's
BLAS reach on the decode step's own matmul shapes and on a large square one. A sampler's tokens/s as a fraction of
`gflop_per_s / forward FLOPs per token` says how much of the machine it uses.

    python -m benchmarks.roofline --rows 128 --embed 576 --mlp 1536     # prints the JSON
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import numpy as np


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm up (compile, page in)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflop_per_s(shapes: list[tuple[int, int, int]], repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of [m, k] @ [k, n] float32 for each (m, k, n), with XLA (jax.jit'd dot) and with numpy."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in shapes:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb = jax.device_put(a), jax.device_put(b)
        dot = jax.jit(jnp.dot)
        flops = 2.0 * m * k * n
        rows.append({"shape": [m, k, n],
                     "xla_gflop_per_s": flops / _best_seconds(lambda: dot(ja, jb).block_until_ready(), repeats) / 1e9,
                     "numpy_gflop_per_s": flops / _best_seconds(lambda: a @ b, repeats) / 1e9})
    best = max(max(r["xla_gflop_per_s"], r["numpy_gflop_per_s"]) for r in rows)
    return {"shapes": rows, "best_gflop_per_s": best,
            "note": "float32 matmul, best of XLA (jax.jit dot) and numpy's BLAS over the shapes"}


def decode_shapes(rows: int, embed: int, mlp: int, vocab: int) -> list[tuple[int, int, int]]:
    """A decode step's matmuls at `rows` sequences (attention projection, MLP up and down, output logits), and a
    large square matmul (what the CPU reaches at its best)."""
    return [(rows, embed, embed), (rows, embed, mlp), (rows, mlp, embed), (rows, embed, vocab), (1024, 1024, 1024)]


def roofline(cfg: Any, rows: int, context_length: int, repeats: int = 5) -> dict[str, Any]:
    """The measured matmul roofline and the tokens/s it allows for `cfg`: forward FLOPs per token (PaLM's formula,
    `cfg.flops_per_token` / 3) at the mean attended `context_length`."""
    measured = matmul_gflop_per_s(decode_shapes(rows, cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size), repeats)
    flops = cfg.flops_per_token(context_length) / 3.0
    return {**measured, "forward_flops_per_token": flops, "context_length": context_length,
            "tokens_per_s_at_roofline": measured["best_gflop_per_s"] * 1e9 / flops}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--embed", type=int, default=576)
    parser.add_argument("--mlp", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=49152)
    args = parser.parse_args(argv)
    print(json.dumps(matmul_gflop_per_s(decode_shapes(args.rows, args.embed, args.mlp, args.vocab)), indent=2))


if __name__ == "__main__":
    main()
