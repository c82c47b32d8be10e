"""GGUF files (llama.cpp's format) for the `llama` and `qwen2` architectures, dequantized to float32.

The `gguf` package reads the file and dequantizes every block type it implements (F32, F16, BF16, Q4_0, Q4_1, Q5_x,
Q8_0, K-quants, ...). llama.cpp's converter permutes the rows of Llama's q and k projections so that RoPE rotates
adjacent pairs; we undo that so the tensors are in HF's `rotate_half` layout, which our model uses.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from lsi.checkpoints.layout import CheckpointError, params_from_hf
from lsi.models.configs import TransformerConfig

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# GGUF tensor names (per layer, after `blk.{i}.`) -> HF names (after `model.layers.{i}.`).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def open_gguf(path: str | os.PathLike) -> Any:
    """A `gguf.GGUFReader`, with a clear error for a missing, truncated or foreign file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}.")
    try:
        return _reader_class()(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError or struct errors on bad bytes
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); is it truncated?") from None


@functools.lru_cache(maxsize=1)
def _reader_class() -> type:
    import gguf  # noqa: PLC0415 - heavy import, only for GGUF checkpoints

    class TensorNamingReader(gguf.GGUFReader):
        """A GGUFReader whose error on a tensor's data (a truncated file) names that tensor."""

        def _build_tensors(self, start_offs: int, fields: list) -> None:
            try:
                super()._build_tensors(start_offs, fields)
            except ValueError:
                for info in fields:  # find the first tensor the file cannot hold; parts[1] is its name's bytes
                    try:
                        super()._build_tensors(start_offs, [info])
                    except ValueError as e:
                        name = bytes(info.parts[1]).decode("utf-8", "replace")
                        raise ValueError(f"tensor {name!r}: {e}") from None
                raise

    return TensorNamingReader


def field(reader: Any, key: str, source: str, default: Any = None) -> Any:
    """A metadata value; a missing key is an error naming it unless a default is given."""
    if key in reader.fields:
        return reader.fields[key].contents()
    if default is not None:
        return default
    raise CheckpointError(f"{source}: metadata key {key!r} is missing.")


def config_from_gguf(reader: Any, source: str) -> TransformerConfig:
    arch = field(reader, "general.architecture", source)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}.")
    tensor_names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in tensor_names:
        raise CheckpointError(f"{source}: tensor 'rope_freqs.weight' (llama.cpp's Llama 3 RoPE factors) is not "
                              "supported; import the Hugging Face directory instead.")
    heads = int(field(reader, f"{arch}.attention.head_count", source))
    embed = int(field(reader, f"{arch}.embedding_length", source))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = int(field(reader, f"{arch}.vocab_size", source, default=len(tokens.data) if tokens else -1))
    if vocab < 0:
        raise CheckpointError(f"{source}: neither '{arch}.vocab_size' nor 'tokenizer.ggml.tokens' is present.")
    return TransformerConfig(
        vocab_size=vocab,
        num_layers=int(field(reader, f"{arch}.block_count", source)),
        embed_dim=embed,
        num_heads=heads,
        num_kv_heads=int(field(reader, f"{arch}.attention.head_count_kv", source, default=heads)),
        head_dim=int(field(reader, f"{arch}.attention.key_length", source, default=embed // heads)),
        mlp_dim=int(field(reader, f"{arch}.feed_forward_length", source)),
        max_length=int(field(reader, f"{arch}.context_length", source, default=2048)),
        norm_eps=float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", source)),
        rope_theta=float(field(reader, f"{arch}.rope.freq_base", source, default=10000.0)),
        qkv_bias=arch == "qwen2",
        tie_embeddings="output.weight" not in tensor_names,
    )


def _unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation: interleaved rotary pairs -> HF's two halves per head."""
    rows = weight.shape[0]
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _dequantized(tensor: Any, source: str) -> np.ndarray:
    import gguf  # noqa: PLC0415

    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(
            f"{source}: tensor {tensor.name!r} uses quantization {tensor.tensor_type.name}, which cannot be "
            "dequantized by the installed gguf package."
        ) from None
    # GGUF lists dimensions innermost first; numpy wants them outermost first.
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(array, np.float32).reshape(shape)


def load_gguf(path: str | os.PathLike) -> tuple[TransformerConfig, dict]:
    """(config, float32 numpy params) from a GGUF file."""
    source = os.fspath(path)
    reader = open_gguf(path)
    cfg = config_from_gguf(reader, source)
    arch = field(reader, "general.architecture", source)
    hf_to_tensor: dict[str, Any] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name in _GLOBAL_NAMES:
            hf_to_tensor[_GLOBAL_NAMES[name]] = tensor
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest in _LAYER_NAMES:
                hf_to_tensor[f"model.layers.{layer}.{_LAYER_NAMES[rest]}"] = tensor

    def get(hf_name: str) -> np.ndarray:
        if hf_name not in hf_to_tensor:
            raise CheckpointError(f"{source}: no tensor for {hf_name!r} (GGUF name {_gguf_name(hf_name)!r}).")
        tensor = hf_to_tensor[hf_name]
        array = _dequantized(tensor, source)
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute_rows(array, cfg.num_heads)
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            array = _unpermute_rows(array, cfg.num_kv_heads)
        return array

    return cfg, params_from_hf(cfg, get, source)


def _gguf_name(hf_name: str) -> str:
    for gguf_name, name in _GLOBAL_NAMES.items():
        if name == hf_name:
            return gguf_name
    _, _, layer, rest = hf_name.split(".", 3)
    for gguf_name, name in _LAYER_NAMES.items():
        if name == rest:
            return f"blk.{layer}.{gguf_name}"
    return hf_name
