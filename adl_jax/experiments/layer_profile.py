"""The layer profile of an audit: how well delta reads at every layer stored (`adl audit --layers`).

The paper reads delta at the middle layer. With delta stored per layer (in the same forward as the read
layer's), each layer's delta goes through the same two lenses the audit reads: the logit lens, and the
patchscope patched at that very layer, at the scale the audit chose for each position (scales are
multiples of the layer's own finetuned activation norm). The top tokens are scored by the measures the
audit has: dataset overlap (`relevant`), LLM-graded relevance (`graded`, with a grader) and semantic
relevance (`semantic`, with an encoder: tokens above their cell's threshold). The best-reading layer is
the one with the most relevant top tokens at any position, of either lens, ties going to the layer
nearest the read layer; it is named next to the read layer, the paper's middle layer by default.

Picking the best of L x k cells would find some relevant tokens by chance alone, so the semantic measure
comes with its own null: `profile_draws` draws of a random direction in every cell (of that cell's
|delta|), read through the same lenses at the same layer and scale. They set each cell's threshold and,
by their largest statistic over all cells, a p-value for the whole profile that needs no further
correction (`judging.relevance.profile_significance`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from adl_jax.judging.relevance import (
    LENSES,
    RelevanceSettings,
    profile_significance,
    random_controls,
    reference_embedding,
    token_scores,
)
from adl_jax.method.adl import ADLResult
from adl_jax.method.lens import logit_lens, patchscope_each
from adl_jax.models.load import Model
from adl_jax.report.layers import MEASURES

PROFILE = "layer_profile.json"
# The measures a profile can hold, the one that names the best layer first: the paper's LLM grading, then
# the data's frequent words, then the sentence encoder.


def layer_profile(
    ft: Model,
    res: ADLResult,
    *,
    score: Callable[[list[str]], dict] | None = None,
    encoder=None,
    finetune_texts=None,
    description: str | None = None,
    frequent=(),
    settings: RelevanceSettings = RelevanceSettings(),
    progress: bool = False,
) -> dict:
    """Per layer stored in `res` (a run with `layers`): |delta_j| / ft_norm and both lenses' top tokens per
    position, scored by `score` (tokens -> {"relevant": ..., ["graded": ...]}, the audit's `score_tokens`) and,
    given a sentence `encoder` and the data or a description, by semantic relevance with its significance
    (the data's `frequent` words scoring highest, as in `judging.relevance.token_scores`; `progress`: a
    progress bar over its null's readings)."""
    d = res.diff
    if d.delta_layers is None:
        raise ValueError(f"{res.out} stores delta at its read layer only: run the audit with --layers")
    layers, read, top = [int(x) for x in d.meta["layers"]], int(d.meta["layer"]), settings.top
    n_layers, k, _ = d.delta_layers.shape
    scales = np.array([p["patchscope_scale"] for p in res.lenses.positions], np.float32)
    tokens = _read(ft, d.delta_layers, layers, d.ft_norm_layers[:, None] * scales[None], top)  # (L, k) each
    significance = None
    if encoder is not None and (finetune_texts or description):
        reference = reference_embedding(encoder, finetune_texts, description, settings.max_texts)
        significance = _semantic(
            ft,
            d,
            layers,
            tokens,
            scales,
            lambda ts: token_scores(encoder, ts, reference, frequent, "layer profile's tokens" if progress else None),
            settings,
            progress,
        )
    rows = []
    for i, layer in enumerate(layers):
        norms = np.linalg.norm(d.delta_layers[i], axis=-1)
        row = {
            "layer": layer,
            "ft_norm": float(d.ft_norm_layers[i]),
            "delta_norm": [float(x) for x in norms],
            "norm_ratio": [float(x) for x in norms / d.ft_norm_layers[i]],
            "positions": [],
        }
        for j in range(k):
            cell = {"position": j}
            for name in LENSES:
                ts = list(tokens[name][i, j])
                cell[name] = {"tokens": ts, **(score(ts) if score else {})}
                if significance is not None:
                    cell[name]["semantic"] = significance["layers"][i]["positions"][j][name]["relevant"]
            row["positions"].append(cell)
        rows.append(row)
    best = {m: _best(rows, m, read) for m in MEASURES if _has(rows, m)}
    measure = next(iter(best), None)
    return {
        "layers": rows,
        "read_layer": read,
        "middle_layer": ft.cfg.middle_layer,
        "top": top,
        "patchscope_scales": scales.tolist(),
        "rule": "the layer with the most relevant top tokens at any position, of either lens; ties: the layer "
        "nearest the read layer",
        "measure": measure,
        "best_by_measure": best,
        "best": best.get(measure),
        "semantic_significance": significance,
    }


def _read(ft: Model, vectors: np.ndarray, layers: list[int], norms: np.ndarray, top: int, desc=None) -> dict:
    """{lens: top tokens of each vector}, shaped as `vectors` (..., L, k, D) without D: the logit lens, and the
    patchscope patched at the vector's own layer at its cell's norm `norms` (L, k), all in one compiled forward.
    With `desc`, a progress bar of that name counts the readings."""
    *shape, dim = vectors.shape
    flat = vectors.reshape(-1, dim)
    at = np.broadcast_to(np.asarray(layers)[:, None], norms.shape)
    with tqdm(total=2 * len(flat), unit="reading", desc=desc, disable=desc is None) as bar:
        lens = logit_lens(ft.params, ft.cfg, flat, ft.tokenizer, top=top, bar=bar)
        patch = patchscope_each(
            ft.params,
            ft.cfg,
            ft.tokenizer,
            flat,
            np.resize(at, len(flat)),
            np.resize(norms, len(flat)),
            top=top,
            bar=bar,
        )
    return {
        name: np.array([ts.tokens[:top] for ts in read], dtype=object).reshape(*shape, -1)
        for name, read in (("logit_lens", lens), ("patchscope", patch))
    }


def _semantic(ft, d, layers, tokens, scales, semantic_scores, s: RelevanceSettings, progress: bool) -> dict:
    """The profile's semantic relevance (`semantic_scores`: tokens -> scores) and its significance against
    `s.profile_draws` random directions in every cell. A zero delta (a model against itself) has no
    direction to read: none of its tokens count."""
    controls = random_controls(d.delta_layers, s.profile_draws, s.seed)  # (N, L, k, D)
    desc = "layer profile's null" if progress else None
    null_tokens = _read(ft, controls, layers, d.ft_norm_layers[:, None] * scales[None], s.top, desc)
    every = [tokens[lens].ravel() for lens in LENSES] + [null_tokens[lens].ravel() for lens in LENSES]
    distinct = sorted({t for part in every for t in part})
    scored = dict(zip(distinct, semantic_scores(distinct)))
    score = np.vectorize(scored.__getitem__, otypes=[np.float64])
    no_trace = ~np.any(d.delta_layers, axis=-1)[..., None]
    return profile_significance(
        {lens: np.where(no_trace, -1.0, score(tokens[lens])) for lens in LENSES},
        {lens: score(null_tokens[lens]) for lens in LENSES},
        layers,
        s.quantile,
        s.alpha,
    )


def _has(rows: list[dict], measure: str) -> bool:
    return measure in rows[0]["positions"][0]["logit_lens"]


def _best(rows: list[dict], measure: str, read: int) -> dict:
    """The best-reading layer by `measure`, with its best position and lens, and the read layer's count."""
    cells = [
        (p[lens][measure], row["layer"], p["position"], lens)
        for row in rows
        for p in row["positions"]
        for lens in LENSES
    ]
    count, layer, position, lens = max(cells, key=lambda c: (c[0], -abs(c[1] - read), -c[1], -c[2]))
    at_read = max((c for c in cells if c[1] == read), key=lambda c: c[0])
    return {
        "layer": layer,
        "position": position,
        "lens": lens,
        "count": count,
        "read_layer_count": at_read[0],
        "read_layer_position": at_read[2],
        "read_layer_lens": at_read[3],
    }
