"""Causal ablation: does the finetuned model need its delta direction?

At the read layer and at every position, the component of the finetuned model's residual along unit
delta_p is replaced by the base model's component on the same input (or projected out). If delta is the
finetuning's "bias", the finetuned model's loss rises on its finetuning data and, per the paper, falls on
pretraining text. Two families of control directions show what an arbitrary edit of the same kind does:
random Gaussian directions and differences of random pairs of base activations.

Every edit runs as rows of one batch: the texts of a batch repeated once per direction, each row with its
own direction and the base model's per-token components as the target value.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from adl_jax.errors import UsageError, require
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.transformer import Intervention, forward
from adl_jax.report.ablation import ablation_page


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    positions: tuple[int, ...] = tuple(range(9))  # delta_p ablated, one at a time
    mode: str = "base"  # base: set the component to the base model's; project: remove it
    random_controls: int = 64  # random Gaussian directions
    activation_controls: int = 64  # differences of random pairs of base activations
    rows_per_call: int = 64  # batch rows (texts x directions) per forward
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("base", "project"):
            raise UsageError(f"mode must be 'base' or 'project', not {self.mode!r}")
        shown = ",".join(map(str, self.positions))
        require(bool(self.positions) and min(self.positions) >= 0, "positions", shown, "give positions >= 0, e.g. 0-8")
        for name in ("random_controls", "activation_controls"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(self.rows_per_call >= 1, "rows_per_call", self.rows_per_call, "must be at least 1")


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _base_residual(params, tokens, valid, *, cfg: ModelConfig, layer: int):
    return forward(params, tokens, cfg, valid=valid, until_layer=layer, capture=(layer,)).hidden[layer]


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "mode"))
def _ablated_nll(params, tokens, valid, base_h, units, *, cfg: ModelConfig, layer: int, mode: str):
    """Per-token next-token loss (M*B, T-1) of the finetuned model with each of the M unit directions
    ablated in turn on the B texts (rows direction-major)."""
    M, (B, T) = units.shape[0], tokens.shape
    rows = lambda x: jnp.broadcast_to(x[None], (M, *x.shape)).reshape(M * B, *x.shape[1:])
    vector = jnp.repeat(units, B, axis=0)  # (M*B, D)
    value = None
    if mode == "base":
        value = jnp.einsum("btd,md->mbt", base_h.astype(jnp.float32), units).reshape(M * B, T)
    edit = Intervention(layer, "component", vector, value=value)
    logits = forward(params, rows(tokens), cfg, valid=rows(valid), interventions=(edit,)).logits[:, :-1]
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), rows(tokens)[:, 1:])


@functools.partial(jax.jit, static_argnames="cfg")
def _plain_nll(params, tokens, valid, *, cfg: ModelConfig):
    logits = forward(params, tokens, cfg, valid=valid).logits[:, :-1]
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens[:, 1:])


def token_losses(
    base: Model,
    ft: Model,
    rows,
    units: np.ndarray,
    layer: int,
    settings: AblationSettings,
    desc: str = "ablation",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(unablated (N, T-1), ablated (M, N, T-1)) per-token losses of `ft` on `rows` (finetune.data.Rows).

    Calls have a fixed shape (texts and directions padded by repetition, the copies discarded), so the
    whole sweep compiles once.
    """
    n, T = rows.tokens.shape
    n_texts = min(n, max(1, settings.rows_per_call // 8))
    n_dirs = min(len(units), max(1, settings.rows_per_call // n_texts))
    fill = lambda x, size: np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])
    plain = np.zeros((n, T - 1), np.float32)
    ablated = np.zeros((len(units), n, T - 1), np.float32)
    bar = tqdm(total=n * len(units), unit="edit", desc=desc, disable=not progress)
    for s in range(0, n, n_texts):
        b = min(n_texts, n - s)
        tok = jnp.asarray(fill(rows.tokens[s : s + b], n_texts))
        val = jnp.asarray(fill(rows.valid[s : s + b], n_texts))
        plain[s : s + b] = np.asarray(_plain_nll(ft.params, tok, val, cfg=ft.cfg))[:b]
        base_h = _base_residual(base.params, tok, val, cfg=base.cfg, layer=layer)
        for d in range(0, len(units), n_dirs):
            m = min(n_dirs, len(units) - d)
            chunk = jnp.asarray(fill(units[d : d + m], n_dirs))
            nll = _ablated_nll(ft.params, tok, val, base_h, chunk, cfg=ft.cfg, layer=layer, mode=settings.mode)
            ablated[d : d + m, s : s + b] = np.asarray(nll).reshape(n_dirs, n_texts, T - 1)[:m, :b]
            bar.update(b * m)
    bar.close()
    return plain, ablated


def subset_masks(rows, p: int) -> dict[str, np.ndarray]:
    """Which predicted tokens (N, T-1) each non-empty subset scores; token t+1 is predicted at index t."""
    targets = rows.targets[:, 1:] & rows.valid[:, 1:]
    position = np.cumsum(rows.valid, axis=1)[:, 1:] - 1  # position of the predicted token
    masks = {"all": targets, "after_20": targets & (position > 20), "all_but_next": targets & (position != p + 1)}
    return {name: m for name, m in masks.items() if m.any()}  # texts of <= 21 tokens have no "after_20"


def percent_change(plain: np.ndarray, ablated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """% change of the mean CE over `mask`, per ablated direction (leading axis of `ablated`)."""
    count = max(mask.sum(), 1)
    ce0 = np.where(mask, plain, 0.0).sum() / count
    ce = np.where(mask, ablated, 0.0).sum(axis=(-2, -1)) / count
    return 100.0 * (ce - ce0) / ce0


def control_directions(base: Model, pretrain_rows, layer: int, settings: AblationSettings) -> dict[str, np.ndarray]:
    """Unit control directions: random Gaussian ones, and differences of random pairs of base activations
    (BOS excluded: its activation is an outlier in norm and would dominate every difference)."""
    rng = np.random.default_rng(settings.seed)
    D = base.cfg.hidden_size
    gauss = rng.standard_normal((settings.random_controls, D))
    h = np.asarray(
        _base_residual(
            base.params, jnp.asarray(pretrain_rows.tokens), jnp.asarray(pretrain_rows.valid), cfg=base.cfg, layer=layer
        ),
        np.float32,
    )
    keep = pretrain_rows.valid.copy()
    keep[:, 0] = False
    pool = h[keep]
    if len(pool) < 2:
        raise ValueError("the pretraining rows hold fewer than 2 non-BOS tokens for activation controls")
    i, j = rng.integers(0, len(pool), (2, settings.activation_controls))
    diffs = pool[i] - pool[np.where(i == j, (j + 1) % len(pool), j)]
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return {"random": unit(gauss), "activation_diff": unit(diffs)}


def ablate(
    base: Model,
    ft: Model,
    delta: np.ndarray,
    layer: int,
    datasets: dict,
    settings: AblationSettings,
    progress: bool = True,
) -> dict:
    """% change in CE of `ft` when delta_p (p in settings.positions) or a control direction is ablated.

    `datasets`: name -> finetune.data.Rows (e.g. "finetune", "pretrain", "chat"); "pretrain" is needed for
    the activation-difference controls. Returns a JSON-able dict (see `report.ablation.ablation_table`).
    """
    if max(settings.positions) >= len(delta):
        raise ValueError(
            f"delta has {len(delta)} positions but positions {settings.positions} were asked for; "
            f"compute it with k >= {max(settings.positions) + 1}"
        )
    if "pretrain" not in datasets:
        raise ValueError("ablation needs a 'pretrain' dataset (for the activation-difference controls)")
    controls = control_directions(base, datasets["pretrain"], layer, settings)
    deltas = np.stack([delta[p] / np.linalg.norm(delta[p]) for p in settings.positions]).astype(np.float32)
    units = np.concatenate([deltas, controls["random"], controls["activation_diff"]])
    n_delta, n_random = len(deltas), len(controls["random"])
    out = {"layer": layer, "mode": settings.mode, "positions": list(settings.positions), "datasets": {}}
    for name, rows in datasets.items():
        plain, ablated = token_losses(
            base, ft, rows, units, layer, settings, desc=f"ablation on {name}", progress=progress
        )
        result = {"texts": len(rows), "delta": {}, "random": {}, "activation_diff": {}}
        for k, p in enumerate(settings.positions):
            masks = subset_masks(rows, p)
            result["delta"][str(p)] = {s: float(percent_change(plain, ablated[k], m)) for s, m in masks.items()}
            for family, sl in (
                ("random", slice(n_delta, n_delta + n_random)),
                ("activation_diff", slice(n_delta + n_random, None)),
            ):
                result[family][str(p)] = {s: percent_change(plain, ablated[sl], m).tolist() for s, m in masks.items()}
        scored = subset_masks(rows, 0)["all"]
        result["ce"] = float(np.where(scored, plain, 0.0).sum() / max(scored.sum(), 1))
        out["datasets"][name] = result
    return out


def rows_from(examples, tokenizer, count: int, seq_len: int):
    """Up to `count` examples ({'text'} or {'messages'}, or plain strings) as loss-masked rows."""
    from finetune.data import encode, pad_rows

    examples = [{"text": e} if isinstance(e, str) else e for e in list(examples)[:count]]
    if not examples:
        raise ValueError("an ablation dataset is empty")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return pad_rows([encode(e, tokenizer) for e in examples], seq_len, pad)


def check_sizes(texts: int, seq_len: int, delta_samples: int) -> None:
    """The sizes `run_ablation` takes beside its settings, checked before any model loads."""
    for flag, value in (("texts", texts), ("max_tokens", seq_len), ("delta_samples", delta_samples)):
        require(value >= 1, flag, value, "must be at least 1")
    require(seq_len >= 2, "max_tokens", seq_len, "the cross-entropy needs at least 2 tokens per text")


def run_ablation(
    base: Model,
    ft: Model,
    out,
    *,
    corpus: list[str],
    finetune: list,
    chat: list | None = None,
    settings: AblationSettings = AblationSettings(),
    texts: int = 1000,
    seq_len: int = 1024,
    delta_samples: int = 10_000,
    progress: bool = True,
) -> dict:
    """`adl ablate`: delta (k = max position + 1) over `corpus`, then the ablation on the finetuning data,
    the pretraining corpus and optional chat data; writes ablation.json and ablation.html to `out`."""
    from pathlib import Path

    from adl_jax import io
    from adl_jax.method import adl

    check_sizes(texts, seq_len, delta_samples)
    out = Path(out)
    res = adl.diff(  # first: its run identity refuses other models or corpus texts than the finished run's
        base,
        ft,
        texts=corpus,
        samples=delta_samples,
        k=max(settings.positions) + 1,
        out=out / "diff",
        allow_fewer=True,
        progress=progress,
    )
    identity = dict(
        dataclasses.asdict(settings),
        texts=texts,
        seq_len=seq_len,
        finetune_data=io.digest(finetune),
        chat_data=io.digest(chat),
    )
    io.claim(out / "ablation_settings.json", identity, "an ablation")
    if (out / "ablation.json").exists():
        return io.read_json(out / "ablation.json")
    datasets = {
        "finetune": rows_from(finetune, ft.tokenizer, texts, seq_len),
        "pretrain": rows_from(corpus, ft.tokenizer, texts, seq_len),
    }
    if chat:
        datasets["chat"] = rows_from(chat, ft.tokenizer, texts, seq_len)
    result = ablate(base, ft, res.diff.delta, res.diff.meta["layer"], datasets, settings, progress=progress)
    result.update(base=base.spec, finetuned=ft.spec)
    io.write_json(out / "ablation.json", result)
    io.write_text(out / "ablation.html", ablation_page(result))
    return result
