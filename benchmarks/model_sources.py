"""Where a benchmark's two sides load the same weights from: a packaged/real checkpoint, or random weights of a
named config written as a HF directory (so ours and transformers read identical tensors)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where each side loads the same weights from."""

    ours: str  # for lsi.checkpoints.load_checkpoint: a .gguf file, a HF directory or a packaged name
    hf_directory: str  # for AutoModelForCausalLM.from_pretrained
    gguf_file: str | None  # file name inside hf_directory, when the weights are a GGUF
    description: str


def random_params(config_name: str, seed: int, array_dtype: Any = np.float32, **overrides: Any
                  ) -> tuple[Any, Any]:
    """(config, numpy params in `array_dtype`) of a named config: norm scales near 1, other tensors N(0, 1/embed_dim).

    Drawn in float32 with numpy over `abstract_params`'s shapes, leaf by leaf (a jitted init takes seconds to compile
    even for the tiny config), then cast: the same seed gives the same weights in every process and dtype.
    """
    import jax  # noqa: PLC0415

    from lsi.models import abstract_params, get_config  # noqa: PLC0415

    cfg = get_config(config_name, **overrides)
    rng = np.random.default_rng(seed)
    std = cfg.embed_dim ** -0.5

    def draw(path: Any, leaf: Any) -> np.ndarray:
        noise = rng.standard_normal(leaf.shape, dtype=np.float32)
        value = 1.0 + 0.1 * noise if jax.tree_util.keystr(path).endswith("['scale']") else std * noise
        return value.astype(array_dtype)

    return cfg, jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


def random_weight_source(config_name: str, seed: int, directory: pathlib.Path) -> ModelSource:
    from lsi.checkpoints import save_hf_directory  # noqa: PLC0415

    cfg, params = random_params(config_name, seed)
    save_hf_directory(cfg, params, directory)
    return ModelSource(ours=str(directory), hf_directory=str(directory), gguf_file=None,
                       description=f"config {config_name!r}, random weights (numpy seed {seed})")


def checkpoint_source(name: str) -> ModelSource:
    from lsi.checkpoints import resolve_model_path  # noqa: PLC0415

    path = resolve_model_path(name)
    if path.suffix == ".gguf":
        return ModelSource(ours=str(path), hf_directory=str(path.parent), gguf_file=path.name,
                           description=f"{name} ({path.name})")
    directory = path if path.is_dir() else path.parent
    return ModelSource(ours=str(directory), hf_directory=str(directory), gguf_file=None, description=name)
