"""Finetuning with optax: LoRA or full, on our own `forward`, sharded by the mesh rules, resumable.

One jitted step computes the masked next-token cross-entropy (float32, over tiles of positions: never the
full logits, `adl_jax.models.loss`) over `grad_accum` micro-batches (a `lax.scan`, so the gradient equals that of
one big batch) and applies AdamW with warmup, cosine or linear decay and global-norm clipping. Trainable
weights and optimizer state are float32 whatever the base or compute dtype; rows may hold packed examples
(segment ids, `finetune.data.pack_rows`). Orbax checkpoints hold the trainable weights, the optimizer
state, the step and the data cursor; batches and dropout keys are functions of (seed, cursor, step), so a
resumed run repeats an uninterrupted one bit for bit. Output directory: `checkpoints/<step>/`, `metrics.jsonl`
and TensorBoard event files (`finetune.metrics`).
In a multi-process run (a TPU pod) each process draws and feeds only its rows of every batch, process 0
writes the metrics, and the export gathers the shards to process 0.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from adl_jax import io
from adl_jax.models.adapters import adapter_specs
from adl_jax.io import differences
from adl_jax.errors import UsageError, require
from adl_jax.models.config import ModelConfig
from adl_jax.models.params import param_shardings
from adl_jax.models.transformer import REMAT, Params, forward
from adl_jax.sharding import Rules, global_batch, make_mesh, process_rows
from finetune.data import Rows, Splits, batch_at
from finetune.lora import LoraConfig, apply_lora, init_adapters
from finetune.metrics import MetricLog
from adl_jax.models.loss import next_token_nll

# Fields that change no number of the run, so a resumed run may set them differently.
BOOKKEEPING = ("checkpoint_every", "eval_every")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's numbers, plus when to checkpoint and evaluate. Static under jit."""

    steps: int = 100  # optimizer updates
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per update
    seq_len: int = 256
    lr: float = 1e-4
    warmup: int = 10
    schedule: str = "cosine"  # cosine | linear (decay to 0 after warmup)
    weight_decay: float = 0.0  # decoupled; matrices only (not norms, biases)
    grad_clip: float = 1.0  # global norm; 0 = off
    mode: str = "lora"  # lora | full
    lora: LoraConfig = LoraConfig()
    mix_ratio: float = 0.0  # pretraining samples per finetuning sample
    eval_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: int = 50  # 0 = only at the end
    eval_every: int = 50  # 0 = only at the end
    remat: str = "none"  # what each block keeps for the backward pass: none (all) | dots (matmul outputs) | full
    compute_dtype: str = "base"  # base (the base weights' dtype) | bfloat16 | float32; master weights stay f32

    def __post_init__(self):
        if self.mode not in ("lora", "full"):
            raise UsageError(f"mode must be 'lora' or 'full', not {self.mode!r}")
        if self.schedule not in ("cosine", "linear"):
            raise UsageError(f"schedule must be 'cosine' or 'linear', not {self.schedule!r}")
        for name in ("steps", "batch_size", "grad_accum", "seq_len"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be at least 1")
        if self.mix_ratio < 0 or not 0 <= self.eval_fraction < 1:
            raise UsageError(
                f"mix_ratio must be >= 0 (not {self.mix_ratio}), eval_fraction in [0, 1) (not {self.eval_fraction})"
            )
        require(
            0 < self.lr < math.inf, "lr", self.lr, "the learning rate must be > 0 (a negative one ascends the loss)"
        )
        for name in ("warmup", "weight_decay", "grad_clip", "checkpoint_every", "eval_every"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        lora = self.lora
        require(lora.rank >= 1, "lora_rank", lora.rank, "the adapters' rank must be at least 1")
        require(lora.alpha > 0, "lora_alpha", lora.alpha, "must be > 0 (the adapters' scale is alpha / rank)")
        require(0 <= lora.dropout < 1, "lora_dropout", lora.dropout, "must be in [0, 1)")
        require(self.remat in REMAT, "remat", self.remat, f"must be one of {', '.join(REMAT)}")
        require(
            self.compute_dtype in ("base", "bfloat16", "float32"),
            "compute_dtype",
            self.compute_dtype,
            "must be base, bfloat16 or float32",
        )


class TrainResult(NamedTuple):
    params: Params  # the model with its trained weights (adapters merged), in the base dtype
    trainable: Any  # LoRA adapters or full float32 weights
    step: int


def learning_rate(tc: TrainConfig):
    """Linear warmup reaching `lr` at update `warmup` - 1, then cosine or linear decay towards 0."""

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        progress = jnp.clip((count - tc.warmup) / max(tc.steps - tc.warmup, 1), 0.0, 1.0)
        decay = 0.5 * (1 + jnp.cos(jnp.pi * progress)) if tc.schedule == "cosine" else 1.0 - progress
        return jnp.where(count < tc.warmup, tc.lr * (count + 1) / max(tc.warmup, 1), tc.lr * decay)

    return schedule


def _decays(path, x) -> bool:
    """Weight decay applies to matrices: ndim >= 2 once the stacked `layers` axis is discounted."""
    return x.ndim - any(getattr(k, "key", None) == "layers" for k in path) >= 2


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate(tc), weight_decay=tc.weight_decay, mask=lambda p: jax.tree_util.tree_map_with_path(_decays, p)
    )
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw) if tc.grad_clip else adamw


def model_params(trainable, base: Params, tc: TrainConfig, key=None) -> Params:
    """The weights the forward runs with. Training (a key given): LoRA dropout, adapters unmerged (no
    gradient of a full matrix); otherwise adapters merged, as exported."""
    if tc.mode == "lora":
        dropout = tc.lora.dropout if key is not None else 0.0
        return apply_lora(base, trainable, tc.lora.scale, dropout=dropout, key=key, merge=key is None)
    dtype = lambda b: b.dtype if tc.compute_dtype == "base" else tc.compute_dtype
    return jax.tree.map(lambda t, b: t.astype(dtype(b)), trainable, base)


def token_nll(params: Params, cfg: ModelConfig, tc: TrainConfig, tokens, segments, targets):
    """(sum, count) of the float32 next-token negative log-likelihood over target tokens, in `tc`'s compute
    dtype and remat policy. `segments`: packed documents' ids (0 = padding), or a boolean validity mask
    (one document a row). The loss runs over tiles of positions, never forming the (B, T, vocab) logits."""
    if tc.compute_dtype != "base":
        params = jax.tree.map(
            lambda x: x.astype(tc.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
        )
    last = cfg.num_layers - 1
    h = forward(
        params, tokens, cfg, segments=segments.astype(jnp.int32), until_layer=last, capture=(last,), remat=tc.remat
    )
    # Every position with the next token as label, the last masked; a document's first token is no target,
    # so no position predicts across a packed boundary.
    mask = jnp.pad(targets[:, 1:], ((0, 0), (0, 1)))
    return next_token_nll(params, h.hidden[last], cfg, jnp.roll(tokens, -1, axis=1), mask), jnp.sum(mask)


def loss_and_grads(trainable, base: Params, batch, cfg: ModelConfig, tc: TrainConfig, key):
    """Mean target-token loss over the whole batch (B * grad_accum rows) and its gradient.

    Row b * grad_accum + a goes to micro-batch a, so each micro-batch keeps the batch axis sharding.
    """
    micro = jax.tree.map(lambda x: x.reshape(tc.batch_size, tc.grad_accum, -1).swapaxes(0, 1), batch)

    def body(carry, xs):
        grads, total, count = carry
        (tokens, segments, targets), i = xs
        loss = lambda t: token_nll(
            model_params(t, base, tc, jax.random.fold_in(key, i)), cfg, tc, tokens, segments, targets
        )
        (s, n), g = jax.value_and_grad(loss, has_aux=True)(trainable)
        return (jax.tree.map(jnp.add, grads, g), total + s, count + n), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), trainable)
    init = (zeros, jnp.float32(0), jnp.int32(0))
    (grads, total, count), _ = jax.lax.scan(body, init, (micro, jnp.arange(tc.grad_accum)))
    count = jnp.maximum(count, 1).astype(jnp.float32)
    return total / count, jax.tree.map(lambda g: g / count, grads)


# Module-level jits with the configs static: a resumed run in the same process reuses the compiled step.
@functools.partial(jax.jit, static_argnames=("cfg", "tc"), donate_argnums=(0, 1))
def train_step(trainable, opt_state, base, batch, step, *, cfg: ModelConfig, tc: TrainConfig):
    """One optimizer update on batch = (tokens, segments, targets), each (batch_size * grad_accum, T)."""
    key = jax.random.fold_in(jax.random.PRNGKey(tc.seed), step)
    loss, grads = loss_and_grads(trainable, base, batch, cfg, tc, key)
    updates, opt_state = make_optimizer(tc).update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def _initial_state(base: Params, cfg: ModelConfig, tc: TrainConfig, tx, mesh, rules: Rules):
    """Float32 trainable weights and optimizer state, placed like the weights they belong to."""
    shardings = param_shardings(cfg, mesh, rules)
    if tc.mode == "full":
        trainable = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), base)  # donated: never alias base
    else:
        adapters = init_adapters(base, tc.lora, jax.random.PRNGKey(tc.seed))
        shardings = _adapter_shardings(shardings, adapters)
        trainable = jax.device_put(adapters, shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, trainable), shardings, transform_non_params=lambda _: replicated
    )
    return trainable, jax.device_put(tx.init(trainable), state_shardings)


@functools.partial(jax.jit, static_argnames=("cfg", "tc"))
def _eval_nll(trainable, base, tokens, segments, targets, *, cfg: ModelConfig, tc: TrainConfig):
    return token_nll(model_params(trainable, base, tc), cfg, tc, tokens, segments, targets)


def _adapter_shardings(weight_shardings: Params, adapters) -> dict:
    out = {}
    for name in adapters:
        w = weight_shardings["layers"][name]
        out[name] = tuple(NamedSharding(w.mesh, spec) for spec in adapter_specs(w.spec))
    return out


def run_identity(cfg: ModelConfig, tc: TrainConfig, rows: Rows) -> dict:
    """What a checkpoint must share with a run that resumes it: training settings, model, data."""
    digest = hashlib.sha256()
    for a in (rows.tokens, rows.segments, rows.targets):
        digest.update(np.ascontiguousarray(a).tobytes())
    settings = {k: v for k, v in dataclasses.asdict(tc).items() if k not in BOOKKEEPING}
    return io.plain({**settings, "model": dataclasses.asdict(cfg), "data": digest.hexdigest()})


def train(
    params: Params,
    cfg: ModelConfig,
    splits: Splits,
    tc: TrainConfig,
    out_dir: str | Path,
    *,
    mesh=None,
    rules: Rules = Rules(),
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train, resuming from the latest checkpoint in `out_dir/checkpoints` when there is one.

    `params`: the base model (any dtype; frozen in LoRA mode). `stop_at`: end this call after that step
    with a checkpoint (e.g. to fit a job's time limit); a later call continues.
    """
    out_dir = Path(out_dir).absolute()  # orbax refuses relative checkpoint paths
    if splits.train.tokens.shape[1] != tc.seq_len:
        raise ValueError(f"the data rows have {splits.train.tokens.shape[1]} tokens but seq_len={tc.seq_len}")
    mesh = mesh or make_mesh(devices=jax.local_devices()[:1])
    data_parallel = math.prod(mesh.shape[a] for a in rules.batch)
    if tc.batch_size % data_parallel:
        raise ValueError(f"batch_size={tc.batch_size} is not a multiple of the {data_parallel} data-parallel shards")
    base = jax.device_put(params, param_shardings(cfg, mesh, rules))
    tx = make_optimizer(tc)
    trainable, opt_state = _initial_state(base, cfg, tc, tx, mesh, rules)

    identity = run_identity(cfg, tc, splits.train)
    options = ocp.CheckpointManagerOptions(max_to_keep=None)  # keep the whole series
    lead = (
        jax.process_index() == 0
    )  # shows progress (and writes the metrics, `MetricLog`); orbax coordinates checkpoints
    with ocp.CheckpointManager(out_dir / "checkpoints", options=options) as manager:
        step, cursor, trainable, opt_state = _resume(manager, identity, trainable, opt_state, out_dir)
        log = MetricLog(out_dir, step)
        per_update = tc.batch_size * tc.grad_accum
        mine = process_rows(mesh, per_update, rules)  # each process draws and feeds only its rows
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        bar = tqdm(total=tc.steps, initial=step, disable=not (progress and lead), unit="step", desc="finetune")
        tick = time.perf_counter()
        while step < end:
            batch = batch_at(splits.train, cursor + mine.start, mine.stop - mine.start, tc.seed)
            arrays = tuple(
                global_batch(a, mesh, per_update, rules) for a in (batch.tokens, batch.segments, batch.targets)
            )
            trainable, opt_state, out = train_step(trainable, opt_state, base, arrays, step, cfg=cfg, tc=tc)
            loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
            step, cursor = step + 1, cursor + per_update
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                manager.wait_until_finished()
                raise FloatingPointError(
                    f"loss {loss}, gradient norm {grad_norm} at step {step}: training stopped. The last good "
                    f"checkpoint is step {manager.latest_step()} in {out_dir / 'checkpoints'}; lower lr or check "
                    "the data"
                )
            record = {
                "step": step,
                "loss": loss,
                "grad_norm": grad_norm,
                "lr": float(learning_rate(tc)(step - 1)),
                "tokens_per_s": float(batch.valid.sum()) / (time.perf_counter() - tick),
            }
            if step == tc.steps or (tc.eval_every and step % tc.eval_every == 0):
                for name, rows in (("eval_loss_ft", splits.eval_ft), ("eval_loss_pt", splits.eval_pt)):
                    if rows is not None:
                        record[name] = _mean_nll(trainable, base, rows, cfg, tc, mesh, rules)
            log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step == end or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                state = ocp.args.StandardSave({"trainable": trainable, "opt_state": opt_state})
                meta = ocp.args.JsonSave({"identity": identity, "cursor": cursor, "step": step})
                manager.save(step, args=ocp.args.Composite(state=state, meta=meta))
            tick = time.perf_counter()
        bar.close()
        log.close()
    return TrainResult(model_params(trainable, base, tc), trainable, step)


def _resume(manager, identity: dict, trainable, opt_state, out_dir: Path):
    """(step, data cursor, trainable, optimizer state) of the latest checkpoint, or the initial ones."""
    step = manager.latest_step()
    if step is None:
        return 0, 0, trainable, opt_state
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    differ = differences(meta["identity"], identity)
    if differ:
        raise ValueError(
            f"{out_dir} holds a run with other settings ({', '.join(differ)}); "
            "resume with the same settings or use another output directory"
        )
    return step, meta["cursor"], *_restore(manager, step, trainable, opt_state)


def _restore(manager, step: int, trainable, opt_state):
    """(trainable, optimizer state) of checkpoint `step`, placed like the given ones."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"trainable": trainable, "opt_state": opt_state})
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return state["trainable"], state["opt_state"]


def checkpoint_steps(out_dir: str | Path) -> list[int]:
    """The steps of a run's saved checkpoints, in order."""
    with ocp.CheckpointManager(Path(out_dir).absolute() / "checkpoints") as manager:
        return sorted(manager.all_steps())


def checkpoint_params(
    params: Params,
    cfg: ModelConfig,
    tc: TrainConfig,
    out_dir: str | Path,
    step: int,
    *,
    mesh=None,
    rules: Rules = Rules(),
) -> Params:
    """The model at checkpoint `step` of the run in `out_dir` (adapters merged, as `final/` is exported), so a
    run's trace can be read at every saved step. `params`: the run's base model."""
    mesh = mesh or make_mesh(devices=jax.local_devices()[:1])
    base = jax.device_put(params, param_shardings(cfg, mesh, rules))
    trainable, opt_state = _initial_state(base, cfg, tc, make_optimizer(tc), mesh, rules)
    with ocp.CheckpointManager(Path(out_dir).absolute() / "checkpoints") as manager:
        trainable, _ = _restore(manager, step, trainable, opt_state)
    return model_params(trainable, base, tc)


def _mean_nll(trainable, base, rows: Rows, cfg: ModelConfig, tc: TrainConfig, mesh, rules: Rules) -> float:
    """Mean target-token loss over `rows`, in fixed-size batches (the last padded with target-free rows);
    each process feeds its own rows of each batch."""
    mine = process_rows(mesh, tc.batch_size, rules)
    put = lambda x: global_batch(x, mesh, tc.batch_size, rules)
    total, count = 0.0, 0
    for start in range(0, len(rows), tc.batch_size):
        index = np.arange(start, start + tc.batch_size)[mine]
        chunk = rows.take(index % len(rows))
        targets = chunk.targets & (index < len(rows))[:, None]
        s, n = _eval_nll(trainable, base, put(chunk.tokens), put(chunk.segments), put(targets), cfg=cfg, tc=tc)
        total, count = total + float(s), count + int(n)
    return total / max(count, 1)


def export_hf_dir(result: TrainResult, cfg: ModelConfig, path: str | Path, tokenizer=None) -> None:
    """Write the trained model (adapters merged) as an HF directory that `adl diff` and transformers read."""
    from jax.experimental import multihost_utils

    from adl_jax.models.weights import save_hf_dir

    params = result.params
    if jax.process_count() > 1:  # every process joins the gather of the shards; process 0 writes
        params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() != 0:
            return
    save_hf_dir(params, cfg, path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
