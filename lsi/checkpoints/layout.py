"""Conversion between Hugging Face's Llama tensor layout and our parameter tree.

Importers (safetensors, GGUF) present tensors under HF's Llama names and [out_features, in_features] layout; this
module checks every shape against the config and stacks layers along our leading `layers` axis. Exporters use the
inverse. Keeping one mapping means both importers and the exporter cannot disagree about a transpose.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lsi.models.configs import TransformerConfig

TensorGetter = Callable[[str], np.ndarray]


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported: the message names the file and the tensor or key."""


def hf_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Expected HF tensor shapes for one layer (names relative to `model.layers.{i}.`) and the globals."""
    d, h, kv, hd, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    shapes = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (h * hd, d),
        "self_attn.k_proj.weight": (kv * hd, d),
        "self_attn.v_proj.weight": (kv * hd, d),
        "self_attn.o_proj.weight": (d, h * hd),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    if cfg.qkv_bias:
        shapes.update({
            "self_attn.q_proj.bias": (h * hd,),
            "self_attn.k_proj.bias": (kv * hd,),
            "self_attn.v_proj.bias": (kv * hd,),
        })
    return shapes


def _checked(get: TensorGetter, name: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    array = np.asarray(get(name))
    if tuple(array.shape) != tuple(shape):
        raise CheckpointError(
            f"{source}: tensor {name!r} has shape {tuple(array.shape)} but the config expects {tuple(shape)}."
        )
    return array.astype(np.float32, copy=False)


def params_from_hf(cfg: TransformerConfig, get: TensorGetter, source: str) -> dict:
    """Our parameter tree (float32 numpy) from HF-named tensors. `get(name)` raises KeyError for a missing tensor."""
    if cfg.parallel_block:
        raise CheckpointError(f"{source}: HF Llama layout has no parallel-block (PaLM) models.")
    d, h, kv, hd, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    shapes = hf_shapes(cfg)

    def stack(suffix: str) -> np.ndarray:
        return np.stack([
            _checked(get, f"model.layers.{i}.{suffix}", shapes[suffix], source) for i in range(cfg.num_layers)
        ])

    attention = {
        "query": stack("self_attn.q_proj.weight").reshape(cfg.num_layers, h, hd, d).transpose(0, 3, 1, 2),
        "key": stack("self_attn.k_proj.weight").reshape(cfg.num_layers, kv, hd, d).transpose(0, 3, 1, 2),
        "value": stack("self_attn.v_proj.weight").reshape(cfg.num_layers, kv, hd, d).transpose(0, 3, 1, 2),
        "out": stack("self_attn.o_proj.weight").reshape(cfg.num_layers, d, h, hd).transpose(0, 2, 3, 1),
    }
    if cfg.qkv_bias:
        attention["query_bias"] = stack("self_attn.q_proj.bias").reshape(cfg.num_layers, h, hd)
        attention["key_bias"] = stack("self_attn.k_proj.bias").reshape(cfg.num_layers, kv, hd)
        attention["value_bias"] = stack("self_attn.v_proj.bias").reshape(cfg.num_layers, kv, hd)
    layers = {
        "attention": attention,
        "pre_attention_norm": {"scale": stack("input_layernorm.weight")},
        "pre_mlp_norm": {"scale": stack("post_attention_layernorm.weight")},
        "mlp": {
            "gate": stack("mlp.gate_proj.weight").transpose(0, 2, 1),
            "up": stack("mlp.up_proj.weight").transpose(0, 2, 1),
            "down": stack("mlp.down_proj.weight").transpose(0, 2, 1),
        },
    }
    params = {
        "embedding": _checked(get, "model.embed_tokens.weight", (cfg.vocab_size, d), source),
        "final_norm": {"scale": _checked(get, "model.norm.weight", (d,), source)},
        "layers": layers,
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = _checked(get, "lm_head.weight", (cfg.vocab_size, d), source).T
    del f
    return params


def params_to_hf(cfg: TransformerConfig, params: dict) -> dict[str, np.ndarray]:
    """HF-named float32 tensors from our parameter tree (the inverse of `params_from_hf`)."""
    d, h, kv, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layers = params["layers"]
    attention = layers["attention"]
    out: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": np.asarray(params["embedding"], np.float32),
        "model.norm.weight": np.asarray(params["final_norm"]["scale"], np.float32),
    }
    if not cfg.tie_embeddings:
        # Contiguous: safetensors.numpy writes an array's raw buffer, so a transposed view would be saved transposed.
        out["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"], np.float32).T)
    for i in range(cfg.num_layers):
        prefix = f"model.layers.{i}."
        layer = {
            "input_layernorm.weight": layers["pre_attention_norm"]["scale"][i],
            "post_attention_layernorm.weight": layers["pre_mlp_norm"]["scale"][i],
            "self_attn.q_proj.weight": np.asarray(attention["query"][i]).reshape(d, h * hd).T,
            "self_attn.k_proj.weight": np.asarray(attention["key"][i]).reshape(d, kv * hd).T,
            "self_attn.v_proj.weight": np.asarray(attention["value"][i]).reshape(d, kv * hd).T,
            "self_attn.o_proj.weight": np.asarray(attention["out"][i]).reshape(h * hd, d).T,
            "mlp.gate_proj.weight": np.asarray(layers["mlp"]["gate"][i]).T,
            "mlp.up_proj.weight": np.asarray(layers["mlp"]["up"][i]).T,
            "mlp.down_proj.weight": np.asarray(layers["mlp"]["down"][i]).T,
        }
        if cfg.qkv_bias:
            layer["self_attn.q_proj.bias"] = np.asarray(attention["query_bias"][i]).reshape(h * hd)
            layer["self_attn.k_proj.bias"] = np.asarray(attention["key_bias"][i]).reshape(kv * hd)
            layer["self_attn.v_proj.bias"] = np.asarray(attention["value_bias"][i]).reshape(kv * hd)
        for name, value in layer.items():
            out[prefix + name] = np.ascontiguousarray(np.asarray(value, np.float32))
    return out
