"""The layer profile of an audit: how well delta reads at every layer stored (`adl audit --layers`).

The paper reads delta at the middle layer. With delta stored per layer (in the same forward as the read
layer's), each layer's delta goes through the same two lenses the audit reads: the logit lens, and the
patchscope patched at that very layer, at the scale the audit chose for each position (scales are
multiples of the layer's own finetuned activation norm). The top tokens are scored by the measures the
audit has: dataset overlap (`relevant`), LLM-graded relevance (`graded`, with a grader) and semantic
relevance (`semantic`, with an encoder: tokens above the threshold of the audit's null of control
vectors at the read layer, so no new controls are read per layer). The best-reading layer is the one
with the most relevant top tokens at any position, of either lens, ties going to the layer nearest the
read layer; it is named next to the read layer, the paper's middle layer by default.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from adl_jax.judging.relevance import LENSES, reference_embedding, token_scores
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
    semantic: dict | None = None,
    encoder=None,
    finetune_texts=None,
    description: str | None = None,
    top: int = 20,
) -> dict:
    """Per layer stored in `res` (a run with `layers`): |delta_j| / ft_norm and both lenses' top tokens per
    position, scored by `score` (tokens -> {"relevant": ..., ["graded": ...]}, the audit's `score_tokens`) and,
    given the audit's semantic-relevance stage and its `encoder`, by the count above that stage's thresholds."""
    d = res.diff
    if d.delta_layers is None:
        raise ValueError(f"{res.out} stores delta at its read layer only: run the audit with --layers")
    layers, read = [int(x) for x in d.meta["layers"]], int(d.meta["layer"])
    n_layers, k, dim = d.delta_layers.shape
    scales = np.array([p["patchscope_scale"] for p in res.lenses.positions], np.float32)
    lens = logit_lens(ft.params, ft.cfg, d.delta_layers.reshape(-1, dim), ft.tokenizer, top=top)
    patch = patchscope_each(  # every layer's vectors, each patched at its own layer, in one compiled forward
        ft.params,
        ft.cfg,
        ft.tokenizer,
        d.delta_layers.reshape(-1, dim),
        np.repeat(layers, k),
        (d.ft_norm_layers[:, None] * scales[None]).reshape(-1),
        top=top,
    )
    tokens = {
        "logit_lens": [[lens[i * k + j].tokens for j in range(k)] for i in range(n_layers)],
        "patchscope": [[patch[i * k + j].tokens for j in range(k)] for i in range(n_layers)],
    }
    semantic_counts = _semantic_counts(tokens, d.delta_layers, semantic, encoder, finetune_texts, description)
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
                ts = tokens[name][i][j]
                cell[name] = {"tokens": ts, **(score(ts) if score else {})}
                if semantic_counts is not None:
                    cell[name]["semantic"] = semantic_counts[name][i][j]
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
    }


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


def _semantic_counts(tokens, deltas, semantic, encoder, finetune_texts, description):
    """{lens: (layers x positions) counts of tokens above the semantic stage's threshold of that position and
    lens}, or None without that stage or its encoder. A zero delta has no direction: none relevant."""
    if semantic is None or encoder is None:
        return None
    reference = reference_embedding(encoder, finetune_texts, description)
    flat = sorted({t for by_layer in tokens.values() for row in by_layer for ts in row for t in ts})
    scored = dict(zip(flat, token_scores(encoder, flat, reference)))
    thresholds = {r["position"]: r for r in semantic["positions"]}
    top = semantic["top"]
    return {
        lens: [
            [
                int(np.sum([scored[t] > thresholds[j][lens]["threshold"] for t in ts[:top]]))
                if np.any(deltas[i, j])
                else 0
                for j, ts in enumerate(row)
            ]
            for i, row in enumerate(by_layer)
        ]
        for lens, by_layer in tokens.items()
    }
