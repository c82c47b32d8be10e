"""Optimizers (optax) and the logical axes of their state, so optimizer state shards exactly like the params.

Adafactor with factored second moments is the default, as in t5x and PaLM fine-tuning; AdamW is the alternative.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from lsi.partitioning import is_axes_leaf


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """What `make_optimizer` builds. Paper defaults: lr 5e-5 constant (PAPER.md: schedule not stated)."""

    name: str = "adafactor"  # "adafactor" | "adamw"
    learning_rate: float = 5e-5
    schedule: str = "constant"  # "constant" | "cosine" | "rsqrt" (each after `warmup_steps` of linear warmup)
    warmup_steps: int = 0
    total_steps: int = 10_000
    clip_norm: float | None = 1.0  # global-norm clipping; None disables
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    decay_norms_and_biases: bool = False  # weight decay on 1-d params (norm scales, biases); off as usual

    def __post_init__(self) -> None:
        if self.name not in ("adafactor", "adamw"):
            raise ValueError(f"optimizer name must be 'adafactor' or 'adamw', got {self.name!r}.")
        if self.schedule not in ("constant", "cosine", "rsqrt"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'rsqrt', got {self.schedule!r}.")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    warmup = max(cfg.warmup_steps, 0)
    if cfg.schedule == "constant":
        after: optax.Schedule = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.total_steps - warmup, 1))
    else:
        after = lambda step: cfg.learning_rate * jax.lax.rsqrt(jax.numpy.maximum(step, 1.0))  # noqa: E731
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])


def _decay_mask(params: Any, cfg: OptimizerConfig) -> Any:
    # Scanned layers add a leading axis, so a layer's norm scale is 2-d: mask by the trailing shape instead.
    return jax.tree_util.tree_map_with_path(
        lambda path, x: cfg.decay_norms_and_biases or not (
            str(path[-1]).find("scale") >= 0 or str(path[-1]).find("bias") >= 0
        ),
        params,
    )


def make_optimizer(cfg: OptimizerConfig = OptimizerConfig()) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg)
    if cfg.name == "adafactor":
        core = optax.adafactor(learning_rate=schedule, multiply_by_parameter_scale=False, clipping_threshold=None,
                               weight_decay_rate=cfg.weight_decay or None,
                               weight_decay_mask=lambda p: _decay_mask(p, cfg))
    else:
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=lambda p: _decay_mask(p, cfg))
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
    return core


def _key_path(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def optimizer_state_axes(state: Any, params: Any, params_axes: Any) -> Any:
    """Logical axes for every optimizer-state leaf, derived from the parameter it belongs to.

    A leaf shaped like its parameter gets the parameter's axes; a factored statistic (the parameter's shape with one
    dimension reduced away, as Adafactor's row/column moments) gets the axes of the remaining dimensions; anything
    else (counters, placeholders) is replicated.
    """
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], tuple]] = {}
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_axes = jax.tree_util.tree_leaves(params_axes, is_leaf=is_axes_leaf)
    for (path, leaf), axes in zip(flat_params, flat_axes):
        by_path[_key_path(path)] = (tuple(leaf.shape), tuple(axes))

    def axes_for(path: tuple[Any, ...], leaf: Any) -> tuple:
        keys = _key_path(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for start in range(len(keys)):
            match = by_path.get(keys[start:])
            if match is None:
                continue
            param_shape, axes = match
            if shape == param_shape:
                return axes
            for dim in range(len(param_shape)):
                if param_shape[:dim] + param_shape[dim + 1:] == shape:
                    return axes[:dim] + axes[dim + 1:]
            break
        return (None,) * len(shape)

    return jax.tree_util.tree_map_with_path(axes_for, state)
