"""Checkpoint import and export: Hugging Face directories, GGUF files, packaged model names.

`cfg, params = load_checkpoint(path_or_name)` returns a `TransformerConfig` and float32 numpy parameters in our
layout (place them on a mesh with `lsi.partitioning.shard_tree`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from lsi.checkpoints.gguf_file import config_from_gguf, load_gguf, open_gguf
from lsi.checkpoints.hf import config_from_hf, config_to_hf, load_hf_config, load_hf_directory, save_hf_directory
from lsi.checkpoints.hf import write_generation_config
from lsi.checkpoints.layout import CheckpointError
from lsi.checkpoints.registry import PACKAGED_MODELS, resolve_model_path
from lsi.models.configs import TransformerConfig


def _located(path_or_name: str | os.PathLike) -> tuple[str, pathlib.Path]:
    """("hf", directory) or ("gguf", file) of a checkpoint path or packaged model name."""
    path = resolve_model_path(path_or_name)
    if path.is_dir():
        return "hf", path
    if path.suffix == ".gguf":
        return "gguf", path
    if path.suffix == ".safetensors" or path.name == "config.json":
        return "hf", path.parent
    raise CheckpointError(f"{path}: unknown checkpoint format; expected a HF directory or a .gguf file.")


def load_checkpoint(path_or_name: str | os.PathLike) -> tuple[TransformerConfig, Any]:
    """(config, params) from a HF directory, a .gguf file, or a packaged model name such as `smollm2-135m-instruct`."""
    kind, path = _located(path_or_name)
    return load_hf_directory(path) if kind == "hf" else load_gguf(path)


def load_config(path_or_name: str | os.PathLike) -> TransformerConfig:
    """The config `load_checkpoint` would return, without reading the weights."""
    kind, path = _located(path_or_name)
    return load_hf_config(path) if kind == "hf" else config_from_gguf(open_gguf(path), str(path))


__all__ = [
    "CheckpointError", "PACKAGED_MODELS", "config_from_hf", "config_to_hf", "load_checkpoint", "load_config",
    "load_gguf", "load_hf_config", "load_hf_directory", "resolve_model_path", "save_hf_directory",
    "write_generation_config",
]
