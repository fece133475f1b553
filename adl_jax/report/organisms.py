"""The cross-organism page (organisms.html): one row per organism audited over one base, and the cosine
similarity of their deltas per position, to see whether different finetunes leave distinct traces."""

from __future__ import annotations

import html

import numpy as np

from adl_jax.report.layers import spans
from adl_jax.report.page import page, subplots, svg, table


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _significance(sem: dict) -> str:
    where = ", ".join(map(str, sem["significant_positions"]))
    return f"{sem['p_value']:.2g} ({sem['p_adjusted']:.2g} adjusted); " + (
        f"significant at {where}" if where else "not significant"
    )


def _layer(layer: dict) -> str:
    """The best layer with its count against the read layer's, and the profile-wide p when it has one."""
    text = f"{layer['layer']} ({layer['count']}; read layer {layer['read_layer']}: {layer['read_layer_count']})"
    if "p_value" not in layer:
        return text
    where = spans(layer["significant_layers"])
    return f"{text}; profile p {layer['p_value']:.2g}, " + (f"significant at {where}" if where else "not significant")


def _row(r: dict) -> list[str]:
    rel = r.get("relevance")
    alphas = r.get("alphas") or {}
    sim = r.get("similarity_margin")
    layer = r.get("best_layer")
    sem = r.get("semantic")
    return [
        r["name"],
        r["finetuned"],
        f"{r['delta_norm']:.4g}",
        f"{r['delta_norm'] / r['ft_norm']:.4f}",
        f"{rel['relevant']} ({rel['lens']}, position {rel['position']})" if rel else "–",
        f"{sem['relevant']} ({sem['lens']}, position {sem['position']})" if sem else "–",
        _significance(sem) if sem else "–",
        ", ".join(f"p{j}: {a:.2f}" for j, a in alphas.items()) or "–",
        _fmt(sim, "+.3f"),
        _fmt(r.get("agent_grade"), ".2f"),
        _layer(layer) if layer else "–",
    ]


def _similarity_plot(names: list[str], cosine: dict[str, list[list[float]]]) -> str:
    """One heat map per position: cosine similarity of every pair of organisms' delta."""
    positions = list(cosine)
    fig, axes = subplots(1, len(positions), figsize=(2.2 + 2.4 * len(positions), 2.6 + 0.15 * len(names)))
    axes = np.atleast_1d(axes)
    for ax, j in zip(axes, positions):
        im = ax.imshow(np.asarray(cosine[j]), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"position {j}")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [], fontsize=7)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="cosine of delta")
    return svg(fig)


def organisms_page(data: dict) -> str:
    rows = data["organisms"]
    head = [
        "organism",
        "finetuned model",
        "|delta| (mean p1..)",
        "|delta| / ft norm",
        "relevance (best, /20)",
        "semantic relevance (/20)",
        "p-value (smallest)",
        "steering alpha",
        "steered similarity margin",
        "agent grade",
        "best layer (relevant)",
    ]
    title = f"{len(rows)} organisms of {data['base']}"
    parts = [f"<h1>{html.escape(title)}</h1>", table(head, [_row(r) for r in rows])]
    parts.append(
        "<p class='note'>Relevance: dataset overlap of the top-20 logit-lens or patchscope tokens with the "
        "organism's frequent finetuning words, at its best position (offline). Semantic relevance: the top-20 tokens "
        "above the control vectors' 95% quantile of similarity to the finetuning data, at the position with the "
        "smallest p-value (the share of controls reading at least as relevant; adjusted by Bonferroni over "
        "positions, significant below the audit's alpha, 0.05 by default). Similarity margin: steered minus "
        "unsteered similarity to the finetuning data at the best steered position. A dash: that stage has not "
        "run for this organism (the agent grade appears once <code>adl agent</code> has run; the best layer once "
        "<code>adl audit --layers all</code> has profiled them, its count of relevant top tokens next to the "
        "read layer's, and the semantic p-value over the whole profile, corrected for every layer and position).</p>"
    )
    if len(rows) > 1:
        parts.append("<h2>How alike are the traces?</h2>" + _similarity_plot([r["name"] for r in rows], data["cosine"]))
        parts.append(
            "<p class='note'>Cosine similarity of the organisms' delta vectors at each position (position 0 "
            "holds the same BOS token in every text). Near 1: the two finetunes moved the model the same way; "
            "near 0: their traces are distinct.</p>"
        )
    return page(title, "".join(parts))
