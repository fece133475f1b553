"""The activation difference: delta_j = mean_ft_j - mean_base_j at layer l, positions j < k.

Streamed over a token matrix in batches, for one base and any number of finetuned models ("organisms"):
each batch runs the base once, over its first k positions only (attention is causal, so they do not
depend on later tokens), and every organism over all n positions, stopping at the last layer read (no
logits). Organisms that are LoRA adapters of this very base run as one forward over an organism axis:
their adapters are stacked and the base weights are shared, so each base matmul covers organisms x batch.
Full finetunes run their own forward in the same step.

Per-position sums accumulate on device (float32 with Kahan compensation) and the host reads them only at
checkpoints, where the NaN/inf check runs per organism; meanwhile the next batches are already dispatched.
Each organism's sums and batch cursor are checkpointed atomically in its own run directory, so a killed
run resumes where it stopped and ends bit-identical to an uninterrupted one. Batches are global arrays
sharded over the mesh's data axes; stacked adapters put their organism axis on the `data` axis where it
divides, so more devices audit more organisms at once. In a multi-process run each process feeds only
its own rows and process 0 writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from adl_jax import io
from adl_jax.errors import InputError, RunDirError, UsageError, require
from adl_jax.method.identity import source
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.transformer import LowRankUpdate, forward
from adl_jax.sharding import Rules, global_batch, process_rows

STATE, META, TOKENS, RESULT = "state.safetensors", "meta.json", "tokens.npy", "delta.safetensors"
ORGANISM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Token rows (texts x n) per batch and data shard that keep a device's matmuls busy, by platform, for a model
# of width <= WIDE; wider models take proportionally fewer, so the activations held stay about the same size.
TOKENS_PER_SHARD = {"cpu": 4096, "gpu": 65536, "tpu": 65536}
WIDE = 2048


@dataclasses.dataclass(frozen=True)
class DiffSettings:
    """What defines a delta run; a run directory holds exactly one setting."""

    layer: int | float | None = None  # an index, a fraction of depth in (0, 1), or None (see resolve_layer)
    k: int = 5  # positions analysed
    n: int = 16  # tokens per text; the norm statistic reads positions k..n-1
    batch_size: int | None = None  # None: `default_batch_size` (or the batch size the run directory started with)
    checkpoint_every: int = 16  # batches
    layers: tuple[int, ...] | str | None = None  # also store delta at these layers ("all": every layer)

    def __post_init__(self):
        check_layer(self.layer)
        require(self.k >= 1, "k", self.k, "the number of positions analysed must be at least 1")
        if self.n <= self.k:
            raise UsageError(f"n={self.n} must exceed k={self.k} (--n, --k): the norm statistic reads positions k..n-1")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be at least 1 (batches)")
        layers_ok = self.layers in (None, "all") or (
            isinstance(self.layers, tuple) and all(isinstance(x, (int, np.integer)) and x >= 0 for x in self.layers)
        )
        require(layers_ok, "layers", self.layers, "give 'all' or a tuple of layer indices >= 0")

    def resolved(self, cfg: ModelConfig) -> DiffSettings:
        """These settings with the layer as an index of `cfg`'s model and `layers` as the sorted indices
        read (the read layer among them)."""
        layer = resolve_layer(self.layer, cfg)
        wanted = range(cfg.num_layers) if self.layers == "all" else self.layers or ()
        for x in wanted:
            if not x < cfg.num_layers:
                raise UsageError(f"--layers {x}: this model has layers 0..{cfg.num_layers - 1}")
        return dataclasses.replace(self, layer=layer, layers=tuple(sorted({layer, *map(int, wanted)})))


def check_layer(layer) -> None:
    """A layer setting is None, an index >= 0 or a fraction of depth strictly between 0 and 1."""
    index = isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and layer >= 0
    fraction = isinstance(layer, float) and 0 < layer < 1
    require(layer is None or index or fraction, "layer", layer, "give a layer index >= 0 or a fraction in (0, 1)")


def resolve_layer(layer: int | float | None, cfg: ModelConfig) -> int:
    """None -> the paper's int(0.5 * (L - 1)); a float in (0, 1) -> that fraction of depth; an int -> itself."""
    check_layer(layer)
    if layer is None:
        return cfg.middle_layer
    if isinstance(layer, float):
        return int(layer * (cfg.num_layers - 1))
    if not layer < cfg.num_layers:
        raise UsageError(
            f"--layer {layer}: this model has layers 0..{cfg.num_layers - 1}; or give a fraction in (0, 1)"
        )
    return int(layer)


def default_batch_size(cfg: ModelConfig, n: int, mesh: Mesh, texts: int | None = None, organisms: int = 1) -> int:
    """Texts per batch: `TOKENS_PER_SHARD` token rows per data shard of the platform (scaled down by
    width / WIDE for wider models), shared by the organisms a step runs (their rows are what is computed and
    held), no more than the `texts` there are, as a multiple of the data shards and processes so every
    batch splits."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    tokens = TOKENS_PER_SHARD.get(mesh.devices.flat[0].platform, TOKENS_PER_SHARD["cpu"])
    rows = max(1, int(tokens * min(1, WIDE / cfg.hidden_size)) // (n * organisms)) * shards
    step = math.lcm(shards, jax.process_count())
    return -(-min(rows, texts or rows) // step) * step


def check_pair(base: Model, ft: Model) -> None:
    """Base and finetuned must share architecture and tokenizer, checked before any compute."""
    strip = dict(bos_token_id=None, eos_token_ids=(), pad_token_id=None)
    a, b = dataclasses.replace(base.cfg, **strip), dataclasses.replace(ft.cfg, **strip)
    if a != b:
        diffs = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        raise InputError(
            f"base ({base.spec}) and finetuned ({ft.spec}) models differ in {diffs}: "
            "ADL compares a model with its own finetune; pick the finetuned model's actual base"
        )
    if base.tokenizer.get_vocab() != ft.tokenizer.get_vocab():
        raise InputError(
            f"base ({base.spec}) and finetuned ({ft.spec}) tokenizers have different vocabularies; "
            "the activations at a position would not belong to the same text"
        )


def lora_of(base_params: dict, params: dict) -> dict[str, tuple[jax.Array, jax.Array]] | None:
    """{target: (A, B)} when `params` are `base_params`' own arrays plus LoRA updates (scale folded into B),
    so the model can join the stacked organism forward; None for any other model (a full finetune)."""
    if params.keys() != base_params.keys() or params["layers"].keys() != base_params["layers"].keys():
        return None
    if any(params[key] is not base_params[key] for key in params if key != "layers"):
        return None
    adapters = {}
    for target, x in params["layers"].items():
        w = base_params["layers"][target]
        if isinstance(x, LowRankUpdate) and x.w is w and not x.dropout:
            adapters[target] = (x.a, x.b if x.scale == 1.0 else x.b * x.scale)
        elif x is not w:
            return None
    return adapters or None  # the base's very arrays: nothing to stack, it runs as its own forward


# ---- the compiled step ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The static shape of one step: layers read, positions, and where the organism axis lives on the mesh."""

    cfg: ModelConfig
    layers: tuple[int, ...]
    k: int
    mesh: Mesh
    organism_axes: tuple[str, ...]  # mesh axes of the stacked adapters' organism axis
    row_axes: tuple[str, ...]  # mesh axes of the batch rows inside the stacked forward


def _kahan(total, comp, x):
    """One compensated add: (total, comp) holds the sum as total - comp."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


def _residuals(params, tokens, plan: _Plan) -> jax.Array:
    """(len(layers), B, T, D) float32 residuals after each layer read."""
    hidden = forward(params, tokens, plan.cfg, until_layer=plan.layers[-1], capture=plan.layers).hidden
    return jnp.stack([hidden[x] for x in plan.layers]).astype(jnp.float32)


def _stacked_residuals(base_params, adapters, tokens, plan: _Plan) -> jax.Array:
    """(O, len(layers), B, T, D): every stacked LoRA organism in one forward, vmapped over the adapter arrays
    only, so each base weight meets all organisms' rows in one matmul."""
    spec = lambda *axes: NamedSharding(plan.mesh, PartitionSpec(*axes))
    tokens = jax.lax.with_sharding_constraint(tokens, spec(plan.row_axes or None, None))

    def one(ab):
        layers = {t: LowRankUpdate(w, *ab[t], 1.0) if t in ab else w for t, w in base_params["layers"].items()}
        return _residuals({**base_params, "layers": layers}, tokens, plan)

    h = jax.vmap(one)(adapters)
    return jax.lax.with_sharding_constraint(h, spec(plan.organism_axes or None, None, plan.row_axes or None))


@functools.partial(jax.jit, static_argnames=("plan",))
def _batch_sums(acc, base_params, adapters, full_params, tokens, weight, active, *, plan: _Plan):
    """`acc` plus this batch's per-organism sums (where `active`): base and finetuned activations at positions
    < k and the norm of finetuned activations at >= k, at every layer read; `finite` ANDs each organism's check."""
    w = weight[None, :, None, None]
    hb = _residuals(base_params, tokens[:, : plan.k], plan) * w  # causal: positions < k need no later token
    hs = [_stacked_residuals(base_params, adapters, tokens, plan)] if adapters else []
    hs += [_residuals(p, tokens, plan)[None] for p in full_params]
    hf = jnp.concatenate(hs) * w[None]  # (O, layers, B, n, D)
    sums = dict(
        base=jnp.broadcast_to(hb.sum(1), (hf.shape[0], *hb.sum(1).shape)),
        ft=hf[:, :, :, : plan.k].sum(2),
        norm=jnp.linalg.norm(hf[:, :, :, plan.k :], axis=-1).sum((2, 3)),
    )
    on = lambda x: active.reshape(-1, *[1] * (x.ndim - 1))
    new = {}
    for key, x in sums.items():
        total, comp = _kahan(acc[key], acc[key + "_c"], x)
        new[key], new[key + "_c"] = jnp.where(on(x), total, acc[key]), jnp.where(on(x), comp, acc[key + "_c"])
    finite = jnp.isfinite(hb).all() & jnp.isfinite(hf).all(axis=(1, 2, 3, 4))
    new["finite"] = acc["finite"] & (finite | ~active)
    replicated = NamedSharding(plan.mesh, PartitionSpec())
    return {key: jax.lax.with_sharding_constraint(x, replicated) for key, x in new.items()}


# ---- results ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DiffResult:
    """delta (k, D), the two means (k, D), and the finetuned model's mean activation norm at positions >= k,
    at the read layer; with several layers read, also delta (L', k, D) and ft_norm (L',) at each of
    meta["layers"]."""

    delta: np.ndarray
    mean_base: np.ndarray
    mean_ft: np.ndarray
    ft_norm: float
    meta: dict
    delta_layers: np.ndarray | None = None
    ft_norm_layers: np.ndarray | None = None

    def __repr__(self):
        norms = ", ".join(f"{x:.1f}" for x in np.linalg.norm(self.delta, axis=-1))
        return (
            f"DiffResult(layer={self.meta['layer']}, samples={self.meta['samples']}, k={self.delta.shape[0]}, "
            f"d={self.delta.shape[1]}, |delta_j|=[{norms}], ft_norm={self.ft_norm:.1f})"
        )

    def save(self, out: str | Path) -> None:
        arrays = dict(
            delta=self.delta,
            mean_base=self.mean_base,
            mean_ft=self.mean_ft,
            ft_norm=np.asarray(self.ft_norm, np.float32),
        )
        if self.delta_layers is not None:
            arrays.update(delta_layers=self.delta_layers, ft_norm_layers=self.ft_norm_layers)
        io.write_arrays(Path(out) / RESULT, arrays)

    @classmethod
    def load(cls, out: str | Path) -> DiffResult:
        out = Path(out)
        if not (out / RESULT).exists():
            raise InputError(f"{out} holds no finished delta run ({RESULT} missing): run `adl diff` first")
        a = io.read_arrays(out / RESULT)
        return cls(
            a["delta"],
            a["mean_base"],
            a["mean_ft"],
            a["ft_norm"].item(),
            io.read_json(out / META),
            a.get("delta_layers"),
            a.get("ft_norm_layers"),
        )


class OrganismsFailed(FloatingPointError):
    """Some organisms hit NaN/inf; `results` holds the finished others (also written), `failures` the reasons."""

    def __init__(self, failures: dict[str, str], results: dict[str, DiffResult]):
        super().__init__("; ".join(failures.values()) + (f" (the other {len(results)} finished)" if results else ""))
        self.failures, self.results = failures, results


# ---- the runs ---------------------------------------------------------------------------------------------


def compute_delta(
    base: Model,
    ft: Model,
    tokens: np.ndarray,
    settings: DiffSettings,
    out: str | Path,
    *,
    mesh: Mesh | None = None,  # default: the mesh the params live on
    meta: dict | None = None,
    progress: bool = True,
) -> DiffResult:
    """Run (or resume) the delta over `tokens` (N, n) and write delta.safetensors + meta.json into `out`.

    `base`/`ft` carry .spec, .cfg, .params, .tokenizer. The run's identity is its settings, the models'
    resolved paths and file fingerprints (see `identity.source`), the tokens, and `meta` (corpus, seed, ...);
    a directory holding a run with another identity is refused, so a result is never reused or resumed
    for other settings or other weights.
    """
    try:
        return _run(base, {"": ft}, {"": Path(out)}, tokens, settings, mesh, meta, progress)[""]
    except OrganismsFailed as e:
        raise FloatingPointError(e.failures[""]) from None


def compute_deltas(
    base: Model,
    organisms: dict[str, Model],
    tokens: np.ndarray,
    settings: DiffSettings,
    out: str | Path | dict[str, str | Path],
    *,
    mesh: Mesh | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> dict[str, DiffResult]:
    """`compute_delta` of every organism against one base in one pass; organism NAME's run is `out`/NAME
    (or `out`[NAME] when `out` maps names to run directories, as a sweep lays them out), exactly the
    directory `compute_delta(base, organisms[NAME], ..., out/NAME)` writes (and resumes).

    An organism whose activations turn NaN/inf is dropped at the next checkpoint; the others finish and
    are written, then `OrganismsFailed` names the failed ones (its `.results` holds the rest).
    """
    require(bool(organisms), "organisms", organisms, "give at least one finetuned model")
    for name in organisms:
        if not ORGANISM_NAME.fullmatch(name):
            raise UsageError(f"organism name {name!r}: use letters, digits, '_', '.' and '-' (it names OUT/{name})")
    dirs = {name: Path(out[name] if isinstance(out, dict) else Path(out) / name) for name in organisms}
    return _run(base, organisms, dirs, tokens, settings, mesh, meta, progress)


def _run(base, organisms, dirs, tokens, settings, mesh, meta, progress) -> dict[str, DiffResult]:
    for ft in organisms.values():
        check_pair(base, ft)
    mesh = mesh or base.params["embed"].sharding.mesh  # where the models were placed at load
    settings = settings.resolved(base.cfg)
    if settings.batch_size is None:
        settings = dataclasses.replace(
            settings,
            batch_size=_started_batch_size(dirs)
            or default_batch_size(base.cfg, settings.n, mesh, len(tokens), len(organisms)),
        )
    if tokens.ndim != 2 or tokens.shape[1] != settings.n:
        raise ValueError(f"token matrix has shape {tokens.shape}, expected (samples, n={settings.n})")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if settings.batch_size % shards or settings.batch_size % jax.process_count():
        raise UsageError(
            f"--batch-size {settings.batch_size} must be a multiple of the {shards} data shards "
            f"and of the {jax.process_count()} processes"
        )
    identities = {name: _identity(base, ft, tokens, settings, meta) for name, ft in organisms.items()}
    with contextlib.ExitStack() as stack:
        for name, out in dirs.items():
            stack.enter_context(io.run_lock(out))
            _claim_run_dir(out, identities[name], tokens)
        return _accumulate(base, organisms, dirs, tokens, settings, identities, mesh, progress)


def _started_batch_size(dirs: dict[str, Path]) -> int | None:
    """The batch size the organisms' existing run directories were started with (one run resumes as it began)."""
    sizes = {io.read_json(d / META).get("batch_size") for d in dirs.values() if (d / META).exists()}
    if len(sizes) > 1:
        raise RunDirError(
            f"the organisms' run directories were started with different batch sizes {sorted(sizes)}; "
            "give --batch-size or use a new --out directory"
        )
    return sizes.pop() if sizes else None


def _identity(base: Model, ft: Model, tokens, settings: DiffSettings, meta: dict | None) -> dict:
    identity = dict(
        dataclasses.asdict(settings), **source(base.spec, "base"), **source(ft.spec, "finetuned"), **(meta or {})
    )
    identity.pop("checkpoint_every")
    if len(settings.layers) == 1:
        identity.pop("layers")  # a one-layer run is identified as before layers existed
    else:
        identity["layers"] = list(settings.layers)
    identity["samples"] = int(len(tokens))
    identity["dtype"] = str(base.params["embed"].dtype)  # a bfloat16 run is not a float32 one, nor resumed as one
    if identity["base_sha256"] is not None and identity["base_sha256"] == identity["finetuned_sha256"]:
        raise UsageError(
            f"base ({base.spec}) and finetuned ({ft.spec}) are the same weights, so delta would be 0: "
            "give the finetuned model as --finetuned"
        )
    return identity


def organism_shards(sizes, count: int) -> int:
    """The ways `count` stacked adapters split on a mesh of these axis sizes: over `data` where it divides
    their count (each device group audits its own organisms over all rows), else 1 (every device holds all)."""
    return sizes["data"] if sizes["data"] > 1 and count % sizes["data"] == 0 else 1


def _organism_layout(mesh: Mesh, count: int, rules: Rules = Rules()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(organism axes, row axes) of the stacked forward: `data` carries organisms where `organism_shards`
    splits them, the other batch axes carry rows."""
    organism = ("data",) if organism_shards(mesh.shape, count) > 1 else ()
    rows = tuple(a for a in rules.batch if mesh.shape[a] > 1 and a not in organism)
    return organism, rows


def _stack_adapters(loras: list[dict], mesh: Mesh, organism_axes: tuple[str, ...]) -> dict:
    """{target: (A (O, L, in, r), B (O, L, r, out))} over the organisms, zero-padded to the largest rank
    (an organism without a target gets zeros: exactly its own computation), the organism axis on
    `organism_axes` and the others split as the organisms' own A and B."""
    stacked = {}
    for target in sorted({t for lora in loras for t in lora}):
        a0, b0 = next(lora[target] for lora in loras if target in lora)
        rank = max(lora[target][0].shape[-1] for lora in loras if target in lora)
        zero = (jnp.zeros((*a0.shape[:-1], rank), a0.dtype), jnp.zeros((b0.shape[0], rank, b0.shape[-1]), b0.dtype))
        a = jnp.stack(
            [jnp.pad(x[0], [(0, 0), (0, 0), (0, rank - x[0].shape[-1])]) for x in (l.get(target, zero) for l in loras)]
        )
        b = jnp.stack(
            [jnp.pad(x[1], [(0, 0), (0, rank - x[1].shape[-2]), (0, 0)]) for x in (l.get(target, zero) for l in loras)]
        )
        stacked[target] = tuple(
            jax.device_put(x, NamedSharding(mesh, PartitionSpec(organism_axes or None, *_inner_spec(x0))))
            for x, x0 in ((a, a0), (b, b0))
        )
    return stacked


def _inner_spec(x: jax.Array) -> tuple:
    """The mesh axes of an adapter array's own dimensions (none where it was not placed by name)."""
    spec = tuple(x.sharding.spec) if isinstance(x.sharding, NamedSharding) else ()
    return spec + (None,) * (x.ndim - len(spec))


def _accumulate(base, organisms, dirs, tokens, settings: DiffSettings, identities, mesh: Mesh, progress: bool):
    """The batch loop from each organism's last checkpoint on, then the result files."""
    n_batches = -(-len(tokens) // settings.batch_size)
    shape = (len(settings.layers), settings.k, base.cfg.hidden_size)
    states = {name: _load_state(out, shape) for name, out in dirs.items()}
    loras = {name: lora_of(base.params, ft.params) for name, ft in organisms.items()}
    todo = [name for name in organisms if states[name]["cursor"] < n_batches]
    order = [name for name in todo if loras[name] is not None] + [name for name in todo if loras[name] is None]
    organism_axes, row_axes = _organism_layout(mesh, sum(loras[name] is not None for name in order))
    plan = _Plan(base.cfg, settings.layers, settings.k, mesh, organism_axes, row_axes)
    adapters = _stack_adapters([loras[name] for name in order if loras[name] is not None], mesh, organism_axes)
    fulls = tuple(organisms[name].params for name in order if loras[name] is None)
    starts = np.array([states[name]["cursor"] for name in order])

    replicated = NamedSharding(mesh, PartitionSpec())
    put = lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])
    acc = {key: put(np.stack([states[name][key] for name in order])) for key in _SUMS} if order else {}
    if order:
        acc["finite"] = put(np.ones(len(order), bool))
    failures, checked = {}, min(starts, default=n_batches)
    bar = tqdm(
        total=len(tokens),
        initial=min(checked * settings.batch_size, len(tokens)),
        unit="text",
        desc="delta" if len(organisms) == 1 else f"delta x{len(organisms)}",
        disable=not progress or jax.process_index() != 0,
    )
    pending = []  # accumulators of dispatched batches: the host waits only two batches behind
    for b in range(checked, n_batches):
        rows = tokens[b * settings.batch_size : (b + 1) * settings.batch_size]
        batch, weight = _pad_rows(rows, settings.batch_size)
        active = put(starts <= b)
        acc = _batch_sums(
            acc, base.params, adapters, fulls, _global(batch, mesh), _global(weight, mesh), active, plan=plan
        )
        pending.append((acc["finite"], len(rows)))
        if len(pending) > 2:
            done, count = pending.pop(0)
            done.block_until_ready()
            bar.update(count)
        cursor = b + 1
        if cursor % settings.checkpoint_every == 0 or cursor == n_batches:
            host = {key: np.asarray(x.addressable_data(0)) for key, x in acc.items()}
            for i, name in enumerate(order):
                if name in failures or starts[i] >= cursor:
                    continue
                if not host["finite"][i]:
                    failures[name] = _nan_message(name, organisms[name], settings, max(checked, starts[i]), b, tokens)
                    continue
                states[name] = dict(cursor=cursor, **{key: host[key][i] for key in _SUMS})
                if cursor < n_batches:
                    _save_state(dirs[name], states[name])
            checked = cursor
    bar.update(sum(count for _, count in pending))
    bar.close()

    results = {
        name: _result(states[name], identities[name], settings, len(tokens), dirs[name])
        for name in organisms
        if name not in failures
    }
    if failures:
        raise OrganismsFailed(failures, results)
    return results


_SUMS = ("base", "base_c", "ft", "ft_c", "norm", "norm_c")


def _nan_message(name: str, ft: Model, settings: DiffSettings, first: int, last: int, tokens) -> str:
    texts = f"texts {first * settings.batch_size}..{min((last + 1) * settings.batch_size, len(tokens)) - 1}"
    who = f" of organism {name!r} ({ft.spec})" if name else ""
    return (
        f"NaN/inf in the layer {settings.layers} activations{who} in batch {first}..{last} ({texts}); check "
        "the weights (a bf16 overflow? load in float32)"
    )


def _result(state: dict, identity: dict, settings: DiffSettings, count: int, out: Path) -> DiffResult:
    """The means from an organism's final sums, written to `out` (with its final state) by process 0."""
    total = lambda key: state[key].astype(np.float64) - state[key + "_c"].astype(np.float64)
    mean_base = (total("base") / count).astype(np.float32)
    mean_ft = (total("ft") / count).astype(np.float32)
    ft_norm = total("norm") / (count * (settings.n - settings.k))
    read = settings.layers.index(settings.layer)
    delta = mean_ft - mean_base
    several = len(settings.layers) > 1
    result = DiffResult(
        delta[read],
        mean_base[read],
        mean_ft[read],
        float(ft_norm[read]),
        identity,
        delta if several else None,
        ft_norm.astype(np.float32) if several else None,
    )
    if jax.process_index() == 0:
        result.save(out)
        _save_state(out, state)
    return result


def _claim_run_dir(out: Path, identity: dict, tokens: np.ndarray) -> None:
    """First run: write meta + tokens. Later runs: refuse a directory that holds another run, naming what
    differs (a model or corpus whose files changed since is another run, never reused or blended)."""
    meta_path = out / META
    if meta_path.exists():
        old = io.read_json(meta_path)
        changed = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        fingerprinted = [k.removesuffix("_sha256") for k in changed if k.endswith("_sha256")]
        edited = [k for k in fingerprinted if k not in changed]  # the same path, other contents
        if edited:
            what = ", ".join(f"the {k} ({identity[k]})" for k in edited)
            raise RunDirError(
                f"{out} holds a delta run of other weights: {what} changed since it was computed (its files' "
                "fingerprint differs); use a new --out directory, or delete the old run to recompute"
            )
        if changed:
            raise RunDirError(
                f"{out} holds a delta run with other settings ({', '.join(changed)} differ); "
                "use a new --out directory or delete the old run"
            )
        if not np.array_equal(np.load(out / TOKENS), tokens):
            raise RunDirError(f"{out} holds a delta run over other texts; use a new --out directory")
        return
    if jax.process_index() == 0:
        io.write_npy(out / TOKENS, tokens)
        io.write_json(meta_path, identity)


def _load_state(out: Path, shape: tuple[int, int, int]) -> dict:
    """An organism's checkpointed sums (float32 total and compensation, per layer read), or zeros. A state
    of the format before device sums (float64 totals, one layer) is read into this one."""
    zeros = dict(
        cursor=0, **{key: np.zeros(shape[:1] if key.startswith("norm") else shape, np.float32) for key in _SUMS}
    )
    if not (out / STATE).exists():
        return zeros
    try:
        a = io.read_arrays(out / STATE)
    except InputError as e:
        raise InputError(
            f"{e}; it holds the running sums of an interrupted run: delete it to restart the delta from "
            "the first batch (the rest of the run directory stays valid)"
        ) from e
    if "base_c" not in a:  # float64 host sums: sum_base, sum_ft (k, D), norm_sum ()
        old = dict(base=a["sum_base"][None], ft=a["sum_ft"][None], norm=np.asarray(a["norm_sum"]).reshape(1))
        a = dict(cursor=a["cursor"])
        for key, x in old.items():
            a[key] = x.astype(np.float32)
            a[key + "_c"] = (a[key].astype(np.float64) - x).astype(np.float32)
    return dict(cursor=int(a["cursor"].item()), **{key: a[key] for key in _SUMS})


def _save_state(out: Path, state: dict) -> None:
    if jax.process_index() == 0:
        io.write_arrays(out / STATE, dict(cursor=np.asarray(state["cursor"], np.int64), **{k: state[k] for k in _SUMS}))


def _pad_rows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A full batch: the last one is padded with copies of its first row, weighted 0."""
    weight = np.zeros(size, np.float32)
    weight[: len(rows)] = 1.0
    pad = np.repeat(rows[:1], size - len(rows), axis=0)
    return np.concatenate([rows, pad]), weight


def _global(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of a global batch -> one global array (the whole batch when single-process)."""
    return global_batch(x[process_rows(mesh, len(x))], mesh, len(x))
