"""Hugging Face checkpoint directories (config.json + *.safetensors, optionally sharded) for Llama and Qwen2."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from lsi.checkpoints.layout import CheckpointError, params_from_hf, params_to_hf
from lsi.io_utils import write_json_atomic
from lsi.models.configs import RopeScaling, TransformerConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def _rope(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """Rope theta and scaling from either transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or params
    theta = float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CheckpointError(f"{source}: rope type {rope_type!r} is not supported (supported: default, llama3).")
    return theta, RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> TransformerConfig:
    """A TransformerConfig from a HF config.json dict."""
    architectures = hf.get("architectures") or []
    architecture = architectures[0] if architectures else hf.get("model_type", "?")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{source}: architecture {architecture!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu).")
    try:
        heads = int(hf["num_attention_heads"])
        theta, scaling = _rope(hf, source)
        return TransformerConfig(
            vocab_size=int(hf["vocab_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            embed_dim=int(hf["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
            mlp_dim=int(hf["intermediate_size"]),
            max_length=int(hf.get("max_position_embeddings", 2048)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=architecture == "Qwen2ForCausalLM" or bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_theta=theta,
            rope_scaling=scaling,
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing key {e.args[0]!r}.") from None


def config_to_hf(cfg: TransformerConfig, architecture: str = "LlamaForCausalLM") -> dict[str, Any]:
    """A HF config.json dict for `cfg` (Llama, or Qwen2 when the model has qkv biases)."""
    if cfg.parallel_block or cfg.norm_type != "rms" or cfg.logits_scale or cfg.embed_scale:
        raise CheckpointError("Only Llama-family configs can be exported to Hugging Face format.")
    if cfg.qkv_bias:
        architecture = "Qwen2ForCausalLM"
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                    high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    return {
        "architectures": [architecture],
        "model_type": "qwen2" if architecture == "Qwen2ForCausalLM" else "llama",
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_layers,
        "hidden_size": cfg.embed_dim,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.mlp_dim,
        "max_position_embeddings": cfg.max_length,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "attention_bias": cfg.qkv_bias,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if cfg.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "rope_parameters": rope,
        "torch_dtype": "float32",
    }


def _safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e}).") from None
        files = sorted({directory / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard files that do not exist: {', '.join(missing)}.")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files (and no model.safetensors.index.json).")
    return files


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """Memory-mapped reader of one .safetensors file that understands bfloat16 (which numpy lacks) and reports
    truncation or a corrupt header with the file's name."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if header_len <= 0 or 8 + header_len > size:
                    raise ValueError(f"header length {header_len} does not fit in {size} bytes")
                header = json.loads(f.read(header_len))
        except (ValueError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e}).") from None
        header.pop("__metadata__", None)
        self.entries: dict[str, dict[str, Any]] = header
        self.data_start = 8 + header_len
        ends = {name: self.data_start + e["data_offsets"][1] for name, e in header.items()}
        cut = sorted((name for name, end in ends.items() if end > size), key=ends.get)
        if cut:
            raise CheckpointError(
                f"{path}: file is truncated: tensor {cut[0]!r} (and {len(cut) - 1} more after it) ends past the "
                f"file's {size} bytes; the tensors need {ends[cut[-1]]} bytes."
            )

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype_name = entry["dtype"]
        if dtype_name not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype_name}.")
        begin, end = entry["data_offsets"]
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + begin, shape=(end - begin,))
        array = np.frombuffer(raw, dtype=_DTYPES[dtype_name]).reshape(entry["shape"])
        if dtype_name == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array


def load_hf_config(directory: str | os.PathLike) -> TransformerConfig:
    """The config of a HF directory, from its config.json alone."""
    directory = pathlib.Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json; expected a Hugging Face checkpoint directory.")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e}).") from None
    return config_from_hf(hf_config, str(config_path))


def load_hf_directory(directory: str | os.PathLike) -> tuple[TransformerConfig, dict]:
    """(config, float32 numpy params) from a HF directory; every tensor's shape is checked against config.json."""
    directory = pathlib.Path(directory)
    cfg = load_hf_config(directory)
    owner: dict[str, tuple[pathlib.Path, SafetensorsFile]] = {}
    for path in _safetensors_files(directory):
        handle = SafetensorsFile(path)
        for name in handle.keys():
            owner[name] = (path, handle)

    def get(name: str) -> np.ndarray:
        if name not in owner:
            raise CheckpointError(f"{directory}: tensor {name!r} is missing from the safetensors files.")
        return owner[name][1].get(name)

    return cfg, params_from_hf(cfg, get, str(directory))


EXPORT_DTYPES = ("float32", "bfloat16")


def save_hf_directory(cfg: TransformerConfig, params: dict, directory: str | os.PathLike,
                      dtype: str = "float32") -> pathlib.Path:
    """Writes config.json + model.safetensors (float32, or bfloat16 for half the size) that transformers loads;
    returns the directory."""
    import ml_dtypes  # noqa: PLC0415 - comes with jax; numpy has no bfloat16 of its own
    from safetensors.numpy import save_file  # noqa: PLC0415

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"Export dtype must be one of {EXPORT_DTYPES}, got {dtype!r}.")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(cfg, jax_to_numpy(params))
    if dtype == "bfloat16":
        tensors = {name: array.astype(ml_dtypes.bfloat16) for name, array in tensors.items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    write_json_atomic(directory / "config.json", {**config_to_hf(cfg), "torch_dtype": dtype})
    return directory


def write_generation_config(directory: str | os.PathLike, *, bos_id: int | None, stop_ids: Sequence[int],
                            pad_id: int | None) -> pathlib.Path:
    """generation_config.json: what `generate` (transformers, vLLM) stops on. `stop_ids` lists EOS and, for a chat
    model, its end-of-turn token, so a chat reply ends where lsi's sampler ends it; greedy by default."""
    config: dict[str, Any] = {"do_sample": False}
    if bos_id is not None:
        config["bos_token_id"] = int(bos_id)
    if stop_ids:
        ids = [int(i) for i in stop_ids]
        config["eos_token_id"] = ids[0] if len(ids) == 1 else ids
    if pad_id is not None:
        config["pad_token_id"] = int(pad_id)
    return write_json_atomic(pathlib.Path(directory) / "generation_config.json", config)


def jax_to_numpy(tree: Any) -> Any:
    import jax  # noqa: PLC0415

    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), tree)
