"""The activation difference: delta_j = mean_ft_j - mean_base_j at layer l, positions j < k.

Streamed over a token matrix in batches; each batch runs both models only up to layer l (no logits),
reduces on device to per-position sums, and the host adds them up in float64. The sums and a batch
cursor are checkpointed atomically, so a killed run resumes where it stopped and ends bit-identical to
an uninterrupted one. Batches are global arrays sharded over the mesh's data axes; in a multi-process
run each process feeds only its own rows and process 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from adl_jax import io
from adl_jax.errors import InputError, RunDirError, UsageError, require
from adl_jax.method.identity import source
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.transformer import forward
from adl_jax.sharding import global_batch, process_rows

STATE, META, TOKENS, RESULT = "state.safetensors", "meta.json", "tokens.npy", "delta.safetensors"


@dataclasses.dataclass(frozen=True)
class DiffSettings:
    """What defines a delta run; a run directory holds exactly one setting."""

    layer: int | float | None = None  # an index, a fraction of depth in (0, 1), or None (see resolve_layer)
    k: int = 5  # positions analysed
    n: int = 16  # tokens per text; the norm statistic reads positions k..n-1
    batch_size: int = 32
    checkpoint_every: int = 16  # batches

    def __post_init__(self):
        check_layer(self.layer)
        require(self.k >= 1, "k", self.k, "the number of positions analysed must be at least 1")
        if self.n <= self.k:
            raise UsageError(f"n={self.n} must exceed k={self.k} (--n, --k): the norm statistic reads positions k..n-1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be at least 1 (batches)")

    def resolved(self, cfg: ModelConfig) -> DiffSettings:
        """These settings with the layer as an index of `cfg`'s model."""
        return dataclasses.replace(self, layer=resolve_layer(self.layer, cfg))


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


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "k"))
def _batch_sums(base_params, ft_params, tokens, weight, *, cfg: ModelConfig, layer: int, k: int):
    """Per-position activation sums of both models and the summed norm of ft activations at >= k."""

    def resid(params):
        h = forward(params, tokens, cfg, until_layer=layer, capture=(layer,)).hidden[layer]
        return h.astype(jnp.float32) * weight[:, None, None]

    hb, hf = resid(base_params), resid(ft_params)
    norms = jnp.linalg.norm(hf[:, k:], axis=-1)
    finite = jnp.isfinite(hb).all() & jnp.isfinite(hf).all()
    return hb[:, :k].sum(0), hf[:, :k].sum(0), norms.sum(), finite


@dataclasses.dataclass
class DiffResult:
    """delta (k, D), the two means (k, D), and the finetuned model's mean activation norm at positions >= k."""

    delta: np.ndarray
    mean_base: np.ndarray
    mean_ft: np.ndarray
    ft_norm: float
    meta: dict

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
        io.write_arrays(Path(out) / RESULT, arrays)

    @classmethod
    def load(cls, out: str | Path) -> DiffResult:
        out = Path(out)
        if not (out / RESULT).exists():
            raise InputError(f"{out} holds no finished delta run ({RESULT} missing): run `adl diff` first")
        a = io.read_arrays(out / RESULT)
        return cls(a["delta"], a["mean_base"], a["mean_ft"], a["ft_norm"].item(), io.read_json(out / META))


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
    check_pair(base, ft)
    out = Path(out)
    settings = settings.resolved(base.cfg)
    if tokens.ndim != 2 or tokens.shape[1] != settings.n:
        raise ValueError(f"token matrix has shape {tokens.shape}, expected (samples, n={settings.n})")
    mesh = mesh or base.params["embed"].sharding.mesh  # where the models were placed at load
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if settings.batch_size % shards or settings.batch_size % jax.process_count():
        raise UsageError(
            f"--batch-size {settings.batch_size} must be a multiple of the {shards} data shards "
            f"and of the {jax.process_count()} processes"
        )
    identity = dict(
        dataclasses.asdict(settings), **source(base.spec, "base"), **source(ft.spec, "finetuned"), **(meta or {})
    )
    identity.pop("checkpoint_every")
    identity["samples"] = int(len(tokens))
    identity["dtype"] = str(base.params["embed"].dtype)  # a bfloat16 run is not a float32 one, nor resumed as one
    if identity["base_sha256"] is not None and identity["base_sha256"] == identity["finetuned_sha256"]:
        raise UsageError(
            f"base ({base.spec}) and finetuned ({ft.spec}) are the same weights, so delta would be 0: "
            "give the finetuned model as --finetuned"
        )
    with io.run_lock(out):
        _claim_run_dir(out, identity, tokens)
        return _accumulate(base, ft, tokens, settings, out, identity, mesh, progress)


def _accumulate(
    base: Model, ft: Model, tokens, settings: DiffSettings, out: Path, identity: dict, mesh: Mesh, progress: bool
):
    """The batch loop of `compute_delta` from the last checkpoint on, then the result files."""
    n_batches = -(-len(tokens) // settings.batch_size)
    state = _load_state(out) or dict(
        cursor=0,
        sum_base=np.zeros((settings.k, base.cfg.hidden_size)),
        sum_ft=np.zeros((settings.k, base.cfg.hidden_size)),
        norm_sum=0.0,
    )
    bar = tqdm(
        total=len(tokens),
        initial=min(state["cursor"] * settings.batch_size, len(tokens)),
        unit="text",
        desc="delta",
        disable=not progress or jax.process_index() != 0,
    )
    for b in range(state["cursor"], n_batches):
        rows = tokens[b * settings.batch_size : (b + 1) * settings.batch_size]
        batch, weight = _pad_rows(rows, settings.batch_size)
        sb, sf, ns, finite = _batch_sums(
            base.params,
            ft.params,
            _global(batch, mesh),
            _global(weight, mesh),
            cfg=base.cfg,
            layer=settings.layer,
            k=settings.k,
        )
        if not bool(finite):
            raise FloatingPointError(
                f"NaN/inf in the layer-{settings.layer} activations of batch {b} (texts "
                f"{b * settings.batch_size}..{b * settings.batch_size + len(rows) - 1}); check the weights "
                "(a bf16 overflow? load in float32)"
            )
        state["sum_base"] += np.asarray(sb, np.float64)
        state["sum_ft"] += np.asarray(sf, np.float64)
        state["norm_sum"] += float(ns)
        state["cursor"] = b + 1
        bar.update(len(rows))
        if state["cursor"] % settings.checkpoint_every == 0 and state["cursor"] < n_batches:
            _save_state(out, state)
    bar.close()

    count = len(tokens)
    mean_base = (state["sum_base"] / count).astype(np.float32)
    mean_ft = (state["sum_ft"] / count).astype(np.float32)
    ft_norm = state["norm_sum"] / (count * (settings.n - settings.k))
    result = DiffResult(mean_ft - mean_base, mean_base, mean_ft, float(ft_norm), identity)
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


def _load_state(out: Path) -> dict | None:
    if not (out / STATE).exists():
        return None
    try:
        a = io.read_arrays(out / STATE)
    except InputError as e:
        raise InputError(
            f"{e}; it holds the running sums of an interrupted run: delete it to restart the delta from "
            "the first batch (the rest of the run directory stays valid)"
        ) from e
    return dict(
        cursor=int(a["cursor"].item()), sum_base=a["sum_base"], sum_ft=a["sum_ft"], norm_sum=a["norm_sum"].item()
    )


def _save_state(out: Path, state: dict) -> None:
    if jax.process_index() == 0:
        io.write_arrays(
            out / STATE,
            dict(
                cursor=np.asarray(state["cursor"], np.int64),
                sum_base=state["sum_base"],
                sum_ft=state["sum_ft"],
                norm_sum=np.asarray(state["norm_sum"], np.float64),
            ),
        )


def _pad_rows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A full batch: the last one is padded with copies of its first row, weighted 0."""
    weight = np.zeros(size, np.float32)
    weight[: len(rows)] = 1.0
    pad = np.repeat(rows[:1], size - len(rows), axis=0)
    return np.concatenate([rows, pad]), weight


def _global(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows of a global batch -> one global array (the whole batch when single-process)."""
    return global_batch(x[process_rows(mesh, len(x))], mesh, len(x))
