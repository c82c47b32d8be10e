"""LoRA fine-tuning (Hu et al., 2021) as a `Parameterization` of the train step: the model's weights stay frozen and
each targeted projection kernel W gets a trained low-rank update, W + (alpha / rank) * A @ B.

    TrainConfig(lora=LoraConfig(rank=8, targets=("query", "value")))    # gin: lsi.TrainConfig.lora = @lsi.LoraConfig()

The train state's params are {"model": the frozen model params, "lora": {layer group: {kernel: {"a", "b"}}}};
only "lora" has gradients and optimizer state. B starts at zero, so step 0 is exactly the base model. Export writes
the merged kernels (`model_params`), a plain checkpoint that needs no LoRA support to load.

A kernel's dimensions split into inputs and outputs (query [layers, embed | heads, head_dim], out [layers, heads,
head_dim | embed]); A is [layers, *inputs, rank] and B [layers, rank, *outputs], so both keep the kernel's logical
axes and shard with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from lsi.models import TransformerConfig, abstract_params, param_logical_axes

# The projection kernels LoRA can target, by (layer group, name), and how many dimensions after the stacked layer
# axis are the kernel's inputs.
KERNEL_INPUT_DIMS = {
    ("attention", "query"): 1, ("attention", "key"): 1, ("attention", "value"): 1, ("attention", "out"): 2,
    ("mlp", "gate"): 1, ("mlp", "up"): 1, ("mlp", "down"): 1,
}
TARGET_NAMES = tuple(name for _, name in KERNEL_INPUT_DIMS)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scale and target kernels (names from `TARGET_NAMES`) of the adapters. The defaults are the LoRA paper's
    GPT-3 setting: query and value projections, rank 8, alpha = 2 x rank."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be >= 1, got {self.rank}.")
        unknown = sorted(set(self.targets) - set(TARGET_NAMES))
        if unknown or not self.targets:
            raise ValueError(f"LoraConfig.targets must name some of {TARGET_NAMES}, got {self.targets}.")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def kernels(self) -> list[tuple[str, str, int]]:
        """(layer group, kernel name, number of input dimensions) of each target, in a fixed order."""
        return [(group, name, dims) for (group, name), dims in KERNEL_INPUT_DIMS.items() if name in self.targets]


def _adapter_shapes(kernel_shape: tuple[int, ...], input_dims: int, rank: int
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A's and B's shapes for a stacked kernel [layers, *inputs, *outputs]."""
    layers, inputs, outputs = kernel_shape[0], kernel_shape[1:1 + input_dims], kernel_shape[1 + input_dims:]
    return (layers, *inputs, rank), (layers, rank, *outputs)


def init_adapters(model_params: Any, config: LoraConfig, seed: int) -> dict[str, Any]:
    """A ~ N(0, 1 / fan_in) (so A @ B has the kernel's scale once B trains), B = 0 (so the update starts at zero)."""
    key = jax.random.PRNGKey(seed)
    adapters: dict[str, Any] = {}
    for index, (group, name, dims) in enumerate(config.kernels()):
        kernel = model_params["layers"][group][name]
        a_shape, b_shape = _adapter_shapes(kernel.shape, dims, config.rank)
        fan_in = math.prod(a_shape[1:-1])
        a = jax.random.normal(jax.random.fold_in(key, index), a_shape, jnp.float32) / math.sqrt(fan_in)
        adapters.setdefault(group, {})[name] = {"a": a, "b": jnp.zeros(b_shape, jnp.float32)}
    return adapters


def merge(model_params: Any, adapters: dict[str, Any], config: LoraConfig) -> Any:
    """The model params with W + scale * A @ B in place of each targeted kernel (the rest shared, not copied)."""
    layers = dict(model_params["layers"])
    for group, kernels in adapters.items():
        layers[group] = dict(layers[group])
        for name, ab in kernels.items():
            kernel = layers[group][name]
            a, b = ab["a"], ab["b"]  # [layers, *inputs, rank], [layers, rank, *outputs]
            flat_a = a.reshape(a.shape[0], -1, a.shape[-1])  # [layers, inputs, rank]
            flat_b = b.reshape(b.shape[0], b.shape[1], -1)  # [layers, rank, outputs]
            delta = jnp.einsum("lir,lro->lio", flat_a, flat_b).reshape(kernel.shape) * config.scale
            layers[group][name] = kernel + delta.astype(kernel.dtype)
    return {**model_params, "layers": layers}


def _adapter_axes(model_axes: Any, config: LoraConfig) -> dict[str, Any]:
    axes: dict[str, Any] = {}
    for group, name, dims in config.kernels():
        layer_axis, *kernel_axes = model_axes["layers"][group][name]
        axes.setdefault(group, {})[name] = {"a": (layer_axis, *kernel_axes[:dims], None),
                                            "b": (layer_axis, None, *kernel_axes[dims:])}
    return axes


@dataclasses.dataclass(frozen=True)
class LoraParams:
    """The `lsi.training.trainer.Parameterization` of LoRA fine-tuning."""

    config: LoraConfig
    seed: int = 0

    def init(self, model_params: Any) -> dict[str, Any]:
        return {"model": model_params, "lora": init_adapters(model_params, self.config, self.seed)}

    def abstract(self, model_cfg: TransformerConfig) -> dict[str, Any]:
        model = abstract_params(model_cfg)
        return {"model": model, "lora": jax.eval_shape(lambda: init_adapters(model, self.config, self.seed))}

    def logical_axes(self, model_cfg: TransformerConfig) -> dict[str, Any]:
        model = param_logical_axes(model_cfg)
        return {"model": model, "lora": _adapter_axes(model, self.config)}

    def is_trainable(self, params: Any) -> dict[str, bool]:
        del params
        return {"model": False, "lora": True}

    def model_params(self, params: Any) -> Any:
        return merge(params["model"], params["lora"], self.config)
