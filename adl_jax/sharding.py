"""Meshes, logical-axis rules, and placing parameters onto a mesh tensor by tensor.

Every parameter dimension has a logical name (embed, heads, mlp, vocab, ...). A `Rules` value maps
logical names to mesh axes (data, fsdp, model). Params are placed once, at load, with
`jax.make_array_from_callback`, so each device reads only its own shard from disk and a model larger
than one device never sits whole on one device. After that `jax.jit` propagates the shardings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import Params, param_shapes

MESH_AXES = ("data", "fsdp", "model")

# Logical axes of each parameter (per-layer tensors carry a leading "layers" axis).
_LOGICAL = {
    "embed": ("vocab", "embed"), "lm_head": ("embed", "vocab"), "final_norm": ("norm",),
    "attn_norm": ("layers", "norm"), "mlp_norm": ("layers", "norm"),
    "post_attn_norm": ("layers", "norm"), "post_mlp_norm": ("layers", "norm"),
    "q_norm": ("layers", "head_dim"), "k_norm": ("layers", "head_dim"),
    "q": ("layers", "embed", "heads"), "k": ("layers", "embed", "kv_heads"), "v": ("layers", "embed", "kv_heads"),
    "o": ("layers", "heads", "embed"),
    "q_bias": ("layers", "heads"), "k_bias": ("layers", "kv_heads"), "v_bias": ("layers", "kv_heads"),
    "o_bias": ("layers", "norm"),
    "gate": ("layers", "embed", "mlp"), "up": ("layers", "embed", "mlp"), "down": ("layers", "mlp", "embed"),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Rules:
    """Which mesh axes shard each logical axis. Unlisted logical axes are replicated."""

    batch: tuple[str, ...] = ("data", "fsdp")
    embed: tuple[str, ...] = ("fsdp",)
    heads: tuple[str, ...] = ("model",)
    kv_heads: tuple[str, ...] = ("model",)
    mlp: tuple[str, ...] = ("model",)
    vocab: tuple[str, ...] = ("model",)

    def spec(self, logical: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
        """PartitionSpec for a tensor; a dimension the mesh axes do not divide evenly stays replicated."""
        out = []
        for name, size in zip(logical, shape):
            axes = tuple(a for a in getattr(self, name, ()) if mesh.shape[a] > 1)
            n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
            out.append(axes if axes and size % n == 0 else None)
        return PartitionSpec(*out)


def parse_mesh(spec: str | None, n_devices: int | None = None) -> dict[str, int]:
    """'data=2,fsdp=1,model=4' -> sizes. Omitted axes are 1; `data` absorbs the remaining devices."""
    n = n_devices or jax.device_count()
    sizes = {a: 1 for a in MESH_AXES}
    given = set()
    for part in filter(None, (spec or "").split(",")):
        name, _, value = part.partition("=")
        if name.strip() not in sizes or not value.strip().isdigit():
            raise ValueError(f"bad mesh entry {part!r}: write e.g. 'data=2,fsdp=1,model=4' (axes {MESH_AXES})")
        sizes[name.strip()] = int(value)
        given.add(name.strip())
    if "data" not in given:
        sizes["data"] = max(1, n // (sizes["fsdp"] * sizes["model"]))
    if int(np.prod(list(sizes.values()))) != n:
        raise ValueError(f"mesh {sizes} needs {int(np.prod(list(sizes.values())))} devices but {n} are available")
    return sizes


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
    """A (data, fsdp, model) mesh. Axes are `Auto`: jit propagates shardings from the placed inputs."""
    devices = devices or jax.devices()
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules = Rules()) -> Params:
    return _map_named(param_shapes(cfg), lambda name, shape: NamedSharding(mesh, rules.spec(_LOGICAL[name], shape, mesh)))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = Rules()) -> NamedSharding:
    """Shard the leading (batch) axis over the data-parallel mesh axes."""
    axes = tuple(a for a in rules.batch if mesh.shape[a] > 1) or None
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def materialize(
    cfg: ModelConfig,
    read: Callable[[str, tuple[slice, ...]], np.ndarray],
    dtype,
    mesh: Mesh | None = None,
    rules: Rules = Rules(),
) -> Params:
    """Build the param pytree from `read(name, index) -> np.ndarray`, one device shard at a time.

    `name` is the leaf name of the layout (e.g. "q", "embed"); `index` is a tuple of slices into the
    full tensor. Without a mesh everything goes to the default device.
    """
    shapes = param_shapes(cfg)
    if mesh is None:
        mesh = make_mesh(devices=jax.local_devices()[:1])
    shardings = param_shardings(cfg, mesh, rules)

    def build(name, shape, sharding):
        def shard(index):
            arr = np.asarray(read(name, index))
            want = tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))
            if arr.shape != want:
                raise ValueError(f"weight {name!r}: read a shard of shape {arr.shape}, expected {want}")
            return arr.astype(dtype)

        return jax.make_array_from_callback(shape, sharding, shard, dtype=dtype)

    return _map_named(shapes, lambda name, shape: build(name, shape, _leaf(shardings, name)))


def _leaf(tree, name):
    return tree["layers"][name] if name in tree.get("layers", {}) else tree[name]


def _map_named(shapes: Params, fn) -> Params:
    out = {k: fn(k, v) for k, v in shapes.items() if k != "layers"}
    out["layers"] = {k: fn(k, v) for k, v in shapes["layers"].items()}
    return out
