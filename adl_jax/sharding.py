"""Meshes, logical-axis rules, and placing parameters onto a mesh tensor by tensor.

Every parameter dimension has a logical name (embed, heads, mlp, vocab, ...; declared with each parameter
in `models/params.py`). A `Rules` value maps logical names to mesh axes (data, fsdp, model). Params are placed once, at load, with
`jax.make_array_from_callback`, so each device reads only its own shard from disk and a model larger
than one device never sits whole on one device. After that `jax.jit` propagates the shardings.

Multi-host (a TPU pod slice, several GPU hosts): `init_distributed` joins the processes, each process
feeds only its own rows of every batch (`process_rows`, `global_batch`), and the same code runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")


@dataclasses.dataclass(frozen=True)
class Rules:
    """Which mesh axes shard each logical axis; an empty tuple replicates it. Every logical axis a tensor
    names must be a field here, so a misspelt one is an error rather than silently replicated."""

    batch: tuple[str, ...] = ("data", "fsdp")
    embed: tuple[str, ...] = ("fsdp",)
    heads: tuple[str, ...] = ("model",)
    kv_heads: tuple[str, ...] = ("model",)
    mlp: tuple[str, ...] = ("model",)
    vocab: tuple[str, ...] = ("model",)
    layers: tuple[str, ...] = ()
    norm: tuple[str, ...] = ()
    head_dim: tuple[str, ...] = ()

    def spec(self, logical: tuple[str, ...], shape: tuple[int, ...], sizes: Mapping[str, int]) -> PartitionSpec:
        """PartitionSpec for a tensor on a mesh of these axis sizes (`mesh.shape`); a dimension the mesh
        axes do not divide evenly stays replicated."""
        known = [f.name for f in dataclasses.fields(self)]
        out = []
        for name, size in zip(logical, shape, strict=True):
            if name not in known:
                raise ValueError(f"unknown logical axis {name!r} in {logical}; the sharding rules know {known}")
            axes = tuple(a for a in getattr(self, name) if sizes[a] > 1)
            n = int(np.prod([sizes[a] for a in axes])) if axes else 1
            out.append(axes if axes and size % n == 0 else None)
        return PartitionSpec(*out)


def parse_mesh(spec: str | None, n_devices: int | None = None, batch_size: int | None = None) -> dict[str, int]:
    """'data=2,fsdp=1,model=4' -> sizes. Omitted axes are 1; `data` absorbs the remaining devices.

    With no spec and a `batch_size`: as many devices on `data` as divide the batch, the rest on `model`,
    so the default layout of any device count accepts the batch.
    """
    n = n_devices or jax.device_count()
    if not spec and batch_size:
        spec = f"model={n // math.gcd(batch_size, n)}"
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


def layouts(n_devices: int, batch_size: int) -> list[dict[str, int]]:
    """Every (data, fsdp, model) layout of `n_devices` whose data x fsdp divides the batch, in the order a
    default mesh is chosen (the first that fits): most data parallelism (data x fsdp, the ways the batch is
    split) first, then most `data` (fsdp gathers weights that data replicates)."""
    g = math.gcd(batch_size, n_devices)
    sizes = [
        {"data": d, "fsdp": dp // d, "model": n_devices // dp}
        for dp in range(1, g + 1)
        if g % dp == 0
        for d in range(1, dp + 1)
        if dp % d == 0
    ]
    return sorted(sizes, key=lambda s: (s["data"] * s["fsdp"], s["data"]), reverse=True)


MEMORY_ENV = "ADL_DEVICE_MEMORY_GIB"


def device_memory() -> int | None:
    """Bytes one device may hold, for choosing a default mesh: $ADL_DEVICE_MEMORY_GIB when set, else what the
    runtime reports (GPU, TPU); None when unknown (CPU: devices share the host's memory)."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        try:
            return int(float(given) * 2**30)
        except ValueError:
            raise ValueError(f"{MEMORY_ENV}={given!r}: give a number of GiB per device, e.g. 16") from None
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def make_mesh(spec: str | None = None, devices=None, batch_size: int | None = None) -> Mesh:
    """A (data, fsdp, model) mesh over `devices` (default: all; see `parse_mesh` for the default layout).
    Axes are `Auto`: jit propagates shardings from the placed inputs."""
    devices = devices or jax.devices()
    sizes = parse_mesh(spec, len(devices), batch_size)
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def partition_specs(shapes, logical, sizes: Mapping[str, int], rules: Rules = Rules()):
    """The PartitionSpec of every tensor of a pytree of shapes, given the same pytree of logical axes."""
    return jax.tree.map(lambda shape, axes: rules.spec(axes, shape, sizes), shapes, logical, is_leaf=_is_shape)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = Rules()) -> NamedSharding:
    """Shard the leading (batch) axis over the data-parallel mesh axes."""
    axes = tuple(a for a in rules.batch if mesh.shape[a] > 1) or None
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def process_rows(mesh: Mesh, n_rows: int, rules: Rules = Rules()) -> slice:
    """The rows of an `n_rows` global batch that this process's devices hold: all of them in a
    single-process run, one contiguous block per process in a multi-process one."""
    index = batch_sharding(mesh, 1, rules).addressable_devices_indices_map((n_rows,)).values()
    blocks = sorted({range(n_rows)[i[0]] for i in index}, key=lambda r: r.start)
    if any(a.stop != b.start for a, b in zip(blocks, blocks[1:])):
        raise ValueError(f"this process's devices hold rows {blocks} of the batch: not one block; reorder the mesh")
    return slice(blocks[0].start, blocks[-1].stop)


def global_batch(local: np.ndarray, mesh: Mesh, n_rows: int, rules: Rules = Rules()) -> jax.Array:
    """One global batch of `n_rows` rows from this process's rows of it (`local`, the `process_rows` block)."""
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, local.ndim, rules), local, (n_rows, *local.shape[1:])
    )


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Join a multi-process run when one is asked for, before anything starts a JAX backend.

    Asked for by the arguments, by `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`),
    or by `ADL_MULTIHOST=1`, which leaves the rest to JAX's cluster detection (Cloud TPU pods, SLURM,
    Open MPI). Otherwise nothing happens, so one command serves a laptop and a pod. Joined processes
    other than 0 are silenced (stdout, logs below WARNING): a pod prints each message once.
    Returns whether this process is part of a multi-process run.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not jax.distributed.is_initialized():
        if not (coordinator or num_processes or os.environ.get("ADL_MULTIHOST") == "1"):
            return False
        jax.distributed.initialize(coordinator, num_processes, process_id)
    if jax.process_index() == 0:
        logging.getLogger(__name__).info(
            "process 0 of %d, %d devices (%d here)", jax.process_count(), jax.device_count(), jax.local_device_count()
        )
    else:
        sys.stdout = open(os.devnull, "w")  # for the life of the process
        logging.disable(logging.INFO)
    return jax.process_count() > 1


def materialize(
    shapes,
    logical,
    read: Callable[[str, tuple[slice, ...]], np.ndarray],
    dtype,
    mesh: Mesh | None = None,
    rules: Rules = Rules(),
):
    """Build a pytree of arrays (`shapes`, with the `logical` axes of each) from `read(name, index) -> np.ndarray`,
    one device shard at a time.

    `name` is the leaf's key (e.g. "q", "embed"); `index` is a tuple of slices into the full tensor.
    Without a mesh everything goes to the default device.
    """
    if mesh is None:
        mesh = make_mesh(devices=jax.local_devices()[:1])
    specs = partition_specs(shapes, logical, mesh.shape, rules)

    def build(path, shape, spec):
        name = path[-1].key

        def shard(index):
            arr = np.asarray(read(name, index))
            want = tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))
            if arr.shape != want:
                raise ValueError(f"weight {name!r}: read a shard of shape {arr.shape}, expected {want}")
            return arr.astype(dtype, copy=False)

        return jax.make_array_from_callback(shape, NamedSharding(mesh, spec), shard, dtype=dtype)

    return jax.tree_util.tree_map_with_path(build, shapes, specs, is_leaf=_is_shape)


def _is_shape(x) -> bool:
    return isinstance(x, tuple)
