"""Model configs: one frozen dataclass switches every architectural feature of `Transformer`.

PaLM, the Llama family (SmolLM2, Llama 3.x, Qwen2/2.5) and the tiny test models are configs of one module, not
copies. Named configs are registered in `_CONFIGS`; `get_config(name, **overrides)` returns one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x frequency-dependent RoPE scaling (HF `rope_type: llama3`)."""

    factor: float = 8.0  # low frequencies are divided by this
    low_freq_factor: float = 1.0  # wavelengths beyond original / low_freq_factor are scaled fully
    high_freq_factor: float = 4.0  # wavelengths below original / high_freq_factor are kept; between, interpolated
    original_max_position_embeddings: int = 8192  # the pretraining context


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a decoder-only LM. Defaults describe a Llama-style model."""

    vocab_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    max_length: int = 2048
    # Block: sequential (Llama: x += attn(norm(x)); x += mlp(norm(x))) or parallel (PaLM: x += attn(n) + mlp(n)).
    parallel_block: bool = False
    norm_type: str = "rms"  # "rms" (Llama) or "layer" (PaLM: LayerNorm with a scale and no bias)
    norm_eps: float = 1e-5
    activation: str = "silu"  # gate activation of the gated MLP: "silu" (SwiGLU) or "gelu" (GeGLU)
    qkv_bias: bool = False  # Qwen2
    tie_embeddings: bool = True
    embed_scale: float | None = None  # multiply input embeddings (Gemma-style sqrt(d)); None for Llama and PaLM
    logits_scale: float | None = None  # PaLM scales shared-embedding logits by embed_dim ** -0.5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    query_scale: float | None = None  # None: head_dim ** -0.5
    dtype: Any = jnp.float32  # compute dtype of activations
    param_dtype: Any = jnp.float32
    remat: str = "none"  # "none" | "full" | "dots": activation checkpointing policy of each layer in training
    # Full-sequence attention runs in query blocks of this many tokens (0: one block), each against only the keys
    # it can see; same result, about half the score-matrix work for long causal sequences.
    attention_block: int = 64
    # The hand-written backward passes of `lsi.models.custom_grads` (tuned for XLA:CPU, where they make the train
    # step about a quarter faster); None: on when JAX's default backend is the CPU, autodiff elsewhere.
    custom_grads: bool | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}.")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE.")
        if self.norm_type not in ("rms", "layer"):
            raise ValueError(f"norm_type must be 'rms' or 'layer', got {self.norm_type!r}.")
        if self.activation not in ("silu", "gelu"):
            raise ValueError(f"activation must be 'silu' or 'gelu', got {self.activation!r}.")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"remat must be 'none', 'full' or 'dots', got {self.remat!r}.")

    def replace(self, **changes: Any) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Parameter count implied by the config (equals the sum over `init`'s arrays; a test checks it)."""
        d, h, kv, hd, f = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d + (h * hd + 2 * kv * hd if self.qkv_bias else 0)
        mlp = 3 * d * f
        norms = d if self.parallel_block else 2 * d
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * (attn + mlp + norms) + d + embeddings

    def flops_per_token(self, context_length: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM's appendix B formula."""
        non_embedding = self.num_params - self.vocab_size * self.embed_dim * (1 if self.tie_embeddings else 2)
        matmul = non_embedding + self.vocab_size * self.embed_dim  # the output projection is a real matmul
        attention = self.num_layers * self.num_heads * self.head_dim * context_length
        return 6.0 * matmul + 6.0 * attention


def tiny(**overrides: Any) -> TransformerConfig:
    """A few-hundred-kB Llama-style model for tests; divisible by 8 devices on heads, kv heads and mlp."""
    base = TransformerConfig(
        vocab_size=256, num_layers=2, embed_dim=64, num_heads=8, num_kv_heads=4, head_dim=16,
        mlp_dim=128, max_length=512, rope_theta=10000.0, tie_embeddings=True,
    )
    return base.replace(**overrides)


def tiny_palm(**overrides: Any) -> TransformerConfig:
    """PaLM features (parallel block, multi-query, LayerNorm, logit scaling) at test size."""
    return tiny(parallel_block=True, num_kv_heads=1, norm_type="layer", logits_scale=64 ** -0.5, **overrides)


def smollm2_135m(**overrides: Any) -> TransformerConfig:
    """HuggingFaceTB/SmolLM2-135M(-Instruct)."""
    return TransformerConfig(
        vocab_size=49152, num_layers=30, embed_dim=576, num_heads=9, num_kv_heads=3, head_dim=64, mlp_dim=1536,
        max_length=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
    ).replace(**overrides)


def smollm2_360m(**overrides: Any) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=49152, num_layers=32, embed_dim=960, num_heads=15, num_kv_heads=5, head_dim=64, mlp_dim=2560,
        max_length=8192, rope_theta=100000.0, tie_embeddings=True,
    ).replace(**overrides)


def qwen2_0_5b(**overrides: Any) -> TransformerConfig:
    """Qwen2.5-0.5B shape: GQA 14/2, qkv bias, tied embeddings."""
    return TransformerConfig(
        vocab_size=151936, num_layers=24, embed_dim=896, num_heads=14, num_kv_heads=2, head_dim=64, mlp_dim=4864,
        max_length=32768, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, tie_embeddings=True,
    ).replace(**overrides)


def llama_1b(**overrides: Any) -> TransformerConfig:
    """Llama-3.2-1B shape: GQA 32/8, llama3 RoPE scaling, tied embeddings."""
    return TransformerConfig(
        vocab_size=128256, num_layers=16, embed_dim=2048, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
        max_length=131072, rope_theta=500000.0, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), tie_embeddings=True,
    ).replace(**overrides)


def _palm(num_layers: int, embed_dim: int, num_heads: int, **overrides: Any) -> TransformerConfig:
    """PaLM (Chowdhery et al. 2022, Table 1): parallel block, MQA, SwiGLU with d_ff = 4d, head_dim 256,
    shared embeddings over a 256k vocabulary with logits scaled by d^-0.5, RoPE, no biases, bfloat16 compute."""
    return TransformerConfig(
        vocab_size=256000, num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads, num_kv_heads=1,
        head_dim=256, mlp_dim=4 * embed_dim, max_length=2048, parallel_block=True, norm_type="layer",
        norm_eps=1e-6, tie_embeddings=True, logits_scale=embed_dim ** -0.5, dtype=jnp.bfloat16, remat="full",
    ).replace(**overrides)


def palm_8b(**overrides: Any) -> TransformerConfig:
    return _palm(32, 4096, 16, **overrides)


def palm_62b(**overrides: Any) -> TransformerConfig:
    return _palm(64, 8192, 32, **overrides)


def palm_540b(**overrides: Any) -> TransformerConfig:
    return _palm(118, 18432, 48, **overrides)


_CONFIGS: dict[str, Callable[..., TransformerConfig]] = {
    "tiny": tiny,
    "tiny_palm": tiny_palm,
    "smollm2_135m": smollm2_135m,
    "smollm2_360m": smollm2_360m,
    "qwen2_0_5b": qwen2_0_5b,
    "llama_1b": llama_1b,
    "palm_8b": palm_8b,
    "palm_62b": palm_62b,
    "palm_540b": palm_540b,
}


def get_config(name: str, **overrides: Any) -> TransformerConfig:
    """A named config, e.g. `get_config("palm_540b", max_length=4096)`."""
    key = name.replace("-", "_").lower()
    if key not in _CONFIGS:
        raise KeyError(f"Unknown model config {name!r}; known: {', '.join(sorted(_CONFIGS))}.")
    return _CONFIGS[key](**overrides)


def config_names() -> list[str]:
    return sorted(_CONFIGS)
