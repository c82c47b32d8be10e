"""Meshes, THE logical-axis rules table, and sharding helpers.

Model code names logical axes (`batch`, `length`, `embed`, `heads`, ...). This module alone maps them onto the
mesh axes `data`, `fsdp` and `tensor`. Data parallelism, FSDP and tensor parallelism are rows of `LOGICAL_AXIS_RULES`,
not code paths: a gin mesh config changes the mesh shape, never the model.

Resolution follows flax's rule semantics with one addition: rules for a logical name are tried in order, and a rule
is skipped when its mesh axes are already used by another dimension of the same array *or* do not divide that
dimension. So `embed` is FSDP-sharded in a weight but replicated in an activation whose `batch` already took `fsdp`,
and a 3-head KV projection stays replicated on an 8-way tensor axis instead of failing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = tuple[str, ...] | str | None
Rules = tuple[tuple[str, MeshAxes], ...]

# THE table. Order matters: the first usable rule for a name wins, later rows are fallbacks.
LOGICAL_AXIS_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("batch", "fsdp"),
    # Samples of one prompt take whatever data-parallel axes the prompts' batch could not divide.
    ("samples", ("data", "fsdp")),
    ("samples", "data"),
    ("samples", "fsdp"),
    ("length", None),
    ("cache_length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the (data, fsdp, tensor) mesh. A -1 takes the devices left over (like t5x's `model_parallel_submesh`)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        free = [i for i, s in enumerate(sizes) if s == -1]
        if len(free) > 1:
            raise ValueError(f"At most one mesh axis may be -1, got {self}.")
        known = math.prod(s for s in sizes if s != -1)
        if free:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices cannot fill mesh {self}: {num_devices} % {known} != 0.")
            sizes[free[0]] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"Mesh {tuple(sizes)} needs {math.prod(sizes)} devices but {num_devices} are in use.")
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig | Sequence[int] = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(config, MeshConfig):
        config = MeshConfig(*config)
    shape = config.shape(len(devices))
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - simulated CPU devices have no physical topology to optimise for.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def make_abstract_mesh(shape: Sequence[int]) -> jax.sharding.AbstractMesh:
    """A mesh of `shape` with no devices behind it: for sizing pod layouts without allocating."""
    return jax.sharding.AbstractMesh(tuple(shape), MESH_AXES)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _mesh_axis_sizes(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes if hasattr(mesh, "axis_sizes") else mesh.devices.shape))


def batch_devices(mesh: Mesh | None, rules: Rules = LOGICAL_AXIS_RULES) -> int:
    """How many ways `mesh` splits a `batch` axis that divides evenly (1 without a mesh)."""
    if mesh is None:
        return 1
    sizes = _mesh_axis_sizes(mesh)
    first = next(axes for name, axes in rules if name == "batch")
    return math.prod(sizes.get(axis, 1) for axis in _as_tuple(first))


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None,
    mesh: Mesh | jax.sharding.AbstractMesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """Maps one array's logical axis names to a PartitionSpec on `mesh` (see the module docstring for the rule)."""
    sizes = _mesh_axis_sizes(mesh)
    used: set[str] = set()
    spec: list[tuple[str, ...] | str | None] = []
    for dim, name in enumerate(logical_axes):
        chosen: tuple[str, ...] = ()
        if name is not None:
            for rule_name, mesh_axes in rules:
                if rule_name != name:
                    continue
                axes = tuple(a for a in _as_tuple(mesh_axes) if sizes.get(a, 1) > 1)
                if any(a in used for a in axes):
                    continue
                if shape is not None and axes and shape[dim] % math.prod(sizes[a] for a in axes):
                    continue
                chosen = axes
                break
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def logical_sharding(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def is_axes_leaf(x: Any) -> bool:
    """A tuple of logical axis names (a plain tuple: optimizer states are NamedTuples and must stay nodes)."""
    return type(x) is tuple and all(isinstance(a, (str, type(None))) for a in x)


def tree_shardings(abstract_tree: Any, axes_tree: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given a matching tree of logical-axis tuples."""
    return jax.tree.map(
        lambda x, axes: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)),
        abstract_tree,
        axes_tree,
        is_leaf=is_axes_leaf,
    )


def shard_tree(tree: Any, axes_tree: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """Places host or device arrays onto `mesh` following their logical axes."""
    shardings = tree_shardings(tree, axes_tree, mesh, rules)
    return jax.tree.map(jax.device_put, tree, shardings)


# The mesh in effect for activation constraints inside model code. None (the default) makes `constrain` a no-op,
# so the model runs unchanged on one device, under plain `jit`, and under `eval_shape`.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("lsi_active_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules = LOGICAL_AXIS_RULES) -> Iterator[None]:
    """Within this context (at trace time) `constrain` pins activations to `mesh` by their logical axes."""
    token = _ACTIVE.set(None if mesh is None else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside `activation_sharding`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    if len(logical_axes) != x.ndim:
        raise ValueError(f"Logical axes {tuple(logical_axes)} do not match an array of shape {x.shape}.")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical_axes, x.shape, mesh, rules)))


def per_device_bytes(abstract_tree: Any, axes_tree: Any, mesh: Mesh | jax.sharding.AbstractMesh,
                     rules: Rules = LOGICAL_AXIS_RULES) -> int:
    """Bytes one device holds for a tree laid out by logical axes (ceil-divided shards, no allocation)."""
    sizes = _mesh_axis_sizes(mesh)
    total = 0
    leaves = jax.tree.leaves(abstract_tree)
    axes_leaves = jax.tree.leaves(axes_tree, is_leaf=is_axes_leaf)
    if len(leaves) != len(axes_leaves):
        raise ValueError(f"{len(leaves)} arrays but {len(axes_leaves)} logical-axis entries.")
    for leaf, axes in zip(leaves, axes_leaves):
        spec = logical_to_spec(axes, leaf.shape, mesh, rules)
        shard = list(leaf.shape)
        for dim, mesh_axes in enumerate(spec):
            divisor = math.prod(sizes[a] for a in _as_tuple(mesh_axes))
            shard[dim] = -(-shard[dim] // divisor)
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total
