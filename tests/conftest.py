"""Shared test setup: 8 simulated CPU devices (set before jax initialises) and cached real-model fixtures."""

import os

# 8 simulated devices for sharding tests; LLVM optimisation level 0 because compile time, not run time, dominates
# a test suite of tiny models on 2 cores (it cuts a tiny model's compile about 2.5x; numerics are unchanged IEEE).
_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")] + [f for f in _FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Identical programs compiled by several tests (and both xdist workers) are compiled once.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ.get("TMPDIR", "/tmp"), "lsi-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)


@functools.lru_cache(maxsize=1)
def _smollm2():
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

    return load_checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2():
    """(config, float32 numpy params) of the packaged SmolLM2-135M-Instruct GGUF."""
    return _smollm2()


@functools.lru_cache(maxsize=1)
def _smollm2_reference():
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from lsi.checkpoints import resolve_model_path  # noqa: PLC0415

    path = resolve_model_path("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def smollm2_reference():
    """transformers' own GGUF loading of the same file: the reference implementation."""
    return _smollm2_reference()
