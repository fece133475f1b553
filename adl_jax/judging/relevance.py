"""Semantic relevance of the lens tokens, and whether the trace is above chance (offline).

Relevance as dataset overlap (`judging.offline`) counts only the data's own frequent words, so synonyms,
related words and other casings score nothing. Here every lens token is scored by the cosine of its sentence
embedding to the centroid of the finetuning data's embeddings (or the description's, when there is no data).
Cosines have no absolute scale, so they are read against a null: the same lenses applied to control vectors
(random directions of delta's norm at every position, the base and finetuned models' mean activations, and
optionally placebo organisms' deltas) give the tokens that a vector without this finetuning's trace produces.

A token is relevant when it scores above the null tokens' upper quantile. A position's statistic is the larger
share of relevant tokens over the two lenses (logit lens, patchscope at the position's chosen scale); each
control gets the same statistic from its own two readings, and the p-value is (1 + #controls at least as
large) / (1 + #controls): the observed delta counts as one more draw. The controls are pooled over positions
(a random direction is a random direction wherever it was drawn); positions are then corrected for by
Bonferroni, so the trace is significant when some position's p times k is below alpha.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from tqdm.auto import tqdm

from adl_jax.judging.offline import normalise
from adl_jax.judging.similarity import unit_rows
from adl_jax.errors import InputError
from adl_jax.method.adl import ADLResult
from adl_jax.method.diff import DiffResult
from adl_jax.method.lens import logit_lens, patchscope_each
from adl_jax.models.load import Model

LENSES = ("logit_lens", "patchscope")
_WORDLIKE = re.compile(r"[^\W_]")  # a letter or digit: tokens without one (punctuation, space) are never relevant


@dataclasses.dataclass(frozen=True)
class RelevanceSettings:
    controls_per_position: int = 20  # random directions per position; all positions' are pooled into one null
    profile_draws: int = 200  # draws of a random direction in every cell of a layer profile: p down to 1/201
    quantile: float = 0.95  # a token is relevant above this quantile of the null's token scores
    alpha: float = 0.05  # significance level: over positions by Bonferroni; over a layer profile by its max statistic
    top: int = 20  # lens tokens read per vector, as for the overlap measure
    max_texts: int = 200  # finetuning texts that make the reference centroid
    seed: int = 0

    def __post_init__(self):
        if (
            min(self.controls_per_position, self.profile_draws) < 1
            or not 0 < self.quantile < 1
            or not 0 < self.alpha < 1
        ):
            raise ValueError(
                f"{self}: needs controls_per_position and profile_draws >= 1, 0 < quantile < 1 and 0 < alpha < 1"
            )


def reference_embedding(encoder, finetune_texts=None, description: str | None = None, max_texts: int = 200):
    """The unit centroid of the first `max_texts` finetuning texts' embeddings, else the description's."""
    texts = list(finetune_texts or [])[:max_texts] or ([description] if description else [])
    if not texts:
        raise ValueError("semantic relevance needs finetuning texts or a description to compare tokens with")
    return unit_rows(unit_rows(encoder.encode(texts)).mean(0))


def token_scores(encoder, tokens: list[str], reference: np.ndarray, frequent=(), desc: str | None = None) -> np.ndarray:
    """Cosine of each token's embedding (of its text without surrounding space) to the unit `reference`;
    tokens without a letter or digit score -1, the lowest cosine, so they never count as relevant. A token
    among the data's `frequent` words (as the overlap measure matches them) scores 1, the highest: it is
    the data's own word, whatever an encoder makes of it alone, so every token the overlap measure counts
    counts here too unless the controls' tokens are such words as often. Each distinct text is encoded once,
    in blocks under a progress bar named `desc` (none without)."""
    words = [t.strip() for t in tokens]
    distinct = sorted({w for w in words if _WORDLIKE.search(w)})
    cos = {}
    with tqdm(total=len(distinct), unit="token", desc=desc, disable=desc is None) as bar:
        for start in range(0, len(distinct), 4096):
            block = distinct[start : start + 4096]
            cos.update(zip(block, unit_rows(encoder.encode(block)) @ reference))
            bar.update(len(block))
    frequent = set(frequent)
    return np.array([1.0 if normalise(w) in frequent else cos.get(w, -1.0) for w in words], np.float64)


def p_value(observed: float, null: np.ndarray) -> float:
    """The Monte Carlo p-value: the observed statistic is one more draw, ties count against it."""
    return float((1 + np.sum(np.asarray(null) >= observed)) / (1 + len(null)))


def _quantiles(x: np.ndarray) -> dict[str, float]:
    return {f"q{round(q * 100):02d}": float(np.quantile(x, q)) for q in (0.05, 0.5, 0.95)}


def significance(observed: dict, null: dict, quantile: float = 0.95, alpha: float = 0.05) -> dict:
    """Per position: relevant tokens, null quantiles and p-values, from scores alone.

    `observed[lens]` (k, top): the scores of delta's tokens per position; `null[lens]` (k, N, top): the
    scores of the N controls' tokens read as that position reads them. Thresholds are per lens and position.
    """
    k = len(observed[LENSES[0]])
    rows = []
    for j in range(k):
        row, stat, null_stat = {"position": j}, 0.0, 0.0
        for lens in LENSES:
            obs, nul = np.asarray(observed[lens][j]), np.asarray(null[lens][j])
            threshold = float(np.quantile(nul, quantile))
            share, null_share = float(np.mean(obs > threshold)), np.mean(nul > threshold, axis=-1)
            row[lens] = {
                "relevant": int(np.sum(obs > threshold)),
                "share": share,
                "threshold": threshold,
                "null": _quantiles(null_share),
                "p_value": p_value(share, null_share),
            }
            stat, null_stat = max(stat, share), np.maximum(null_stat, null_share)
        p = p_value(stat, null_stat)
        row.update(statistic=stat, null=_quantiles(null_stat), p_value=p, p_adjusted=min(1.0, k * p))
        rows.append(row)
    significant = [r["position"] for r in rows if r["p_adjusted"] < alpha]
    return {
        "quantile": quantile,
        "alpha": alpha,
        "correction": f"Bonferroni over {k} positions",
        "significant": bool(significant),
        "significant_positions": significant,
        "positions": rows,
    }


def profile_significance(observed: dict, null: dict, layers: list[int], quantile: float = 0.95, alpha: float = 0.05):
    """Whether delta is above chance anywhere in a layer profile, corrected for every layer, position and lens.

    `observed[lens]` (L, k, top): the scores of each stored layer's delta tokens per position; `null[lens]`
    (N, L, k, top): those of N draws, each a random direction in every cell (layer, position) read as that
    cell reads delta. A cell's threshold is its null tokens' `quantile`; its statistic the larger share above
    it of the two lenses. A draw's statistic is its largest over all cells, and every observed statistic is
    compared with those maxima (single-step max-T adjusted p-values): the family-wise error over the whole
    profile stays at `alpha`, with no Bonferroni factor of L x k that would make the profile's own search
    for the best layer unaffordable."""
    thresholds = {
        lens: np.quantile(np.moveaxis(null[lens], 0, -2).reshape(*null[lens].shape[1:3], -1), quantile, -1)
        for lens in LENSES
    }  # (L, k)
    share = {lens: np.mean(observed[lens] > thresholds[lens][..., None], -1) for lens in LENSES}  # (L, k)
    null_share = {lens: np.mean(null[lens] > thresholds[lens][..., None], -1) for lens in LENSES}  # (N, L, k)
    stat = np.maximum(*share.values())
    null_max = np.maximum(*null_share.values()).max(axis=(1, 2))  # (N,)
    rows = []
    for i, layer in enumerate(layers):
        cells = []
        for j in range(stat.shape[1]):
            cell = {"position": j, "statistic": float(stat[i, j]), "p_adjusted": p_value(stat[i, j], null_max)}
            for lens in LENSES:
                cell[lens] = {
                    "relevant": int(np.sum(observed[lens][i, j] > thresholds[lens][i, j])),
                    "threshold": float(thresholds[lens][i, j]),
                }
            cells.append(cell)
        rows.append({"layer": layer, "p_adjusted": min(c["p_adjusted"] for c in cells), "positions": cells})
    best_layer, best_position = np.unravel_index(np.argmax(stat), stat.shape)
    p = p_value(stat.max(), null_max)
    return {
        "draws": len(null_max),
        "quantile": quantile,
        "alpha": alpha,
        "correction": f"max statistic over {len(layers)} layers x {stat.shape[1]} positions x {len(LENSES)} lenses",
        "statistic": float(stat.max()),
        "null": _quantiles(null_max),
        "p_value": p,
        "significant": p < alpha,
        "best": {"layer": layers[best_layer], "position": int(best_position), "statistic": float(stat.max())},
        "significant_layers": [r["layer"] for r in rows if r["p_adjusted"] < alpha],
        "layers": rows,
    }


def random_controls(norms: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """(draws, *norms.shape, D) random directions, each of its cell's norm: `norms` (..., D) holds the vectors
    whose norms the controls take (a delta per position, or per layer and position)."""
    g = np.random.default_rng(seed).standard_normal((draws, *norms.shape), dtype=np.float32)
    return g / np.linalg.norm(g, axis=-1, keepdims=True) * np.linalg.norm(norms, axis=-1, keepdims=True)


def placebo_deltas(runs, hidden_size: int) -> np.ndarray | None:
    """The deltas (P, D) of placebo audits' run directories: the same base finetuned with the same recipe on
    generic text, whose trace shows what finetuning on nothing in particular leaves."""
    deltas = [DiffResult.load(run).delta for run in runs]
    for run, delta in zip(runs, deltas):
        if delta.shape[-1] != hidden_size:
            raise InputError(
                f"placebo run {run}: its delta has {delta.shape[-1]} dimensions, this audit's model {hidden_size}; "
                "give the audit of a placebo finetuned from the same base model"
            )
    return np.concatenate(deltas) if deltas else None


def control_vectors(res: ADLResult, per_position: int, seed: int, placebo=None) -> tuple[list[str], np.ndarray]:
    """(kinds, vectors (N, D)): `per_position` random directions of each position's |delta|, both means at
    every position, and the rows of `placebo` (P, D) when given (placebo organisms' deltas)."""
    d = res.diff.delta.shape[-1]
    random = random_controls(res.diff.delta, per_position, seed).swapaxes(0, 1)  # position-major
    parts = [("random", random.reshape(-1, d)), ("base_mean", res.diff.mean_base), ("ft_mean", res.diff.mean_ft)]
    if placebo is not None and len(placebo):
        parts.append(("placebo", np.asarray(placebo).reshape(-1, d)))
    kinds = [kind for kind, v in parts for _ in range(len(v))]
    return kinds, np.concatenate([np.asarray(v, np.float32) for _, v in parts])


def semantic_relevance(
    ft: Model,
    res: ADLResult,
    encoder,
    *,
    finetune_texts=None,
    description: str | None = None,
    frequent=(),
    placebo=None,
    settings: RelevanceSettings = RelevanceSettings(),
) -> dict:
    """Semantic relevance of delta's lens tokens at every position, with its null and significance; the
    data's `frequent` words (the overlap measure's) score highest (`token_scores`)."""
    s, positions = settings, res.lenses.positions
    reference = reference_embedding(encoder, finetune_texts, description, s.max_texts)
    kinds, controls = control_vectors(res, s.controls_per_position, s.seed, placebo)
    layer, norm = res.diff.meta["layer"], res.diff.ft_norm
    control_ll = [ts.tokens[: s.top] for ts in logit_lens(ft.params, ft.cfg, controls, ft.tokenizer, top=s.top)]
    scales = sorted({p["patchscope_scale"] for p in positions})
    # Every scale's readings of every control in one call: its chunks are larger than one scale's would be.
    reads = patchscope_each(
        ft.params,
        ft.cfg,
        ft.tokenizer,
        np.tile(controls, (len(scales), 1)),
        layer,
        np.repeat(norm * np.asarray(scales), len(controls)),
        top=s.top,
    )
    n = len(controls)
    control_ps = {scale: [ts.tokens[: s.top] for ts in reads[i * n : (i + 1) * n]] for i, scale in enumerate(scales)}
    observed_ll = [p["logit_lens"]["delta"].tokens[: s.top] for p in positions]
    observed_ps = [p["patchscope"][str(p["patchscope_scale"])].tokens[: s.top] for p in positions]
    every = [*observed_ll, *observed_ps, *control_ll, *(t for reads in control_ps.values() for t in reads)]
    flat = [t for tokens in every for t in tokens]
    scored = dict(zip(flat, token_scores(encoder, flat, reference, frequent)))

    def score(token_lists):
        return np.array([[scored[t] for t in tokens] for tokens in token_lists])

    # A zero delta (a model against itself) has no direction to read: its lens tokens are arbitrary, none relevant.
    no_trace = ~np.any(res.diff.delta, axis=-1)[:, None]
    null_ll = score(control_ll)
    result = significance(
        {
            "logit_lens": np.where(no_trace, -1.0, score(observed_ll)),
            "patchscope": np.where(no_trace, -1.0, score(observed_ps)),
        },
        {
            "logit_lens": [null_ll] * len(positions),
            "patchscope": [score(control_ps[p["patchscope_scale"]]) for p in positions],
        },
        s.quantile,
        s.alpha,
    )
    for j, (row, p) in enumerate(zip(result["positions"], positions)):
        row["patchscope_scale"] = p["patchscope_scale"]
        for lens, tokens in (("logit_lens", observed_ll[j]), ("patchscope", observed_ps[j])):
            row[lens]["tokens"] = [[t, round(float(scored[t]), 4)] for t in tokens]
        base_mean = null_ll[kinds.index("base_mean") + j]  # the overlap measure's baseline, read the same way
        row["base_mean"] = {"relevant": int(np.sum(base_mean > row["logit_lens"]["threshold"]))}
    counts = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
    reference_text = f"{min(len(finetune_texts), s.max_texts)} finetuning texts" if finetune_texts else "description"
    return {
        "measure": "semantic similarity to the finetuning data (offline sentence encoder)",
        "encoder": str(getattr(encoder, "path", type(encoder).__name__)),
        "reference": reference_text,
        "controls": counts,
        "top": s.top,
        **result,
    }
