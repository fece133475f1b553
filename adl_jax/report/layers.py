"""The layer profile's section of report.html: relevance and |delta|/ft norm per layer, the best layer named."""

from __future__ import annotations

import html

from adl_jax.judging.relevance import LENSES
from adl_jax.report.page import subplots, svg, table

MEASURES = {
    "graded": "LLM-graded relevance",
    "relevant": "offline dataset overlap",
    "semantic": "offline semantic relevance, against the profile's null",
}

LABELS = {"logit_lens": "logit lens", "patchscope": "patchscope"}


def per_layer(profile: dict, measure: str, lens: str) -> list[int]:
    """The most relevant top tokens of `lens` at any position, per layer."""
    return [max(p[lens][measure] for p in row["positions"]) for row in profile["layers"]]


def _plot(profile: dict) -> str:
    """Relevance per layer (one point per layer and lens, the best measure solid, the others dashed) over
    |delta_j| / ft norm per layer and position; the read layer dotted, the best layer starred."""
    layers = [row["layer"] for row in profile["layers"]]
    measures = list(profile["best_by_measure"])
    fig, axes = subplots(2 if measures else 1, 1, figsize=(6.5, 5.2 if measures else 2.8), sharex=True, squeeze=False)
    axes = axes[:, 0]
    if measures:
        ax = axes[0]
        for m in measures:
            for i, lens in enumerate(LENSES):
                line = ax.plot(
                    layers,
                    per_layer(profile, m, lens),
                    "-o" if m == profile["measure"] else "--.",
                    color=f"C{i}",
                    alpha=1.0 if m == profile["measure"] else 0.5,
                    label=f"{LABELS[lens]}, {m}",
                )[0]
                line.set_gid(f"layer-profile-{m}-{lens}")
        sig = profile.get("semantic_significance")
        if sig:  # a cell's count above this line beats 95% of the null draws' best cell (two lenses' larger)
            q95 = sig["null"]["q95"] * profile["top"]
            ax.axhline(q95, color="0.6", linestyle="--", linewidth=1, label="semantic null: 95% of draws' best")
        b = profile["best"]
        ax.plot([b["layer"]], [b["count"]], "*", color="C3", markersize=16, label=f"best: layer {b['layer']}")
        ax.set_ylabel(f"relevant of top {profile['top']}\n(best position)")
        ax.legend(fontsize=7, ncol=2)
    ax = axes[-1]
    k = len(profile["layers"][0]["norm_ratio"])
    for j in range(k):
        ax.plot(layers, [row["norm_ratio"][j] for row in profile["layers"]], "-", color=f"C{j}", label=f"position {j}")
    ax.set_ylabel("|delta_j| / ft norm")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=min(k, 5))
    ax.set_xlabel("layer")
    ax.set_xticks(layers)
    for a in axes:
        a.axvline(profile["read_layer"], color="0.4", linestyle=":", zorder=0)
    axes[0].annotate(
        f"read layer {profile['read_layer']}",
        (profile["read_layer"], 1),
        xycoords=("data", "axes fraction"),
        fontsize=7,
    )
    return svg(fig)


def layer_profile_section(profile: dict) -> str:
    """The heading, the finding, the plot and a table of each layer's best reading."""
    measure = profile["measure"]
    head = ["layer", "|delta_j| / ft norm (per position)"]
    if measure:
        head += [f"{LABELS[lens]} relevant (best position)" for lens in LENSES]
    counts = {lens: per_layer(profile, measure, lens) for lens in LENSES} if measure else {}
    rows = [
        [str(row["layer"]), " ".join(f"{x:.3g}" for x in row["norm_ratio"]), *(str(c[i]) for c in counts.values())]
        for i, row in enumerate(profile["layers"])
    ]
    sig = profile.get("semantic_significance")
    if sig:
        head.append("semantic p (profile-wide)")
        for row, layer in zip(rows, sig["layers"]):
            row.append(f"{layer['p_adjusted']:.2g}")
    note = (
        f"Delta at every layer stored ({len(profile['layers'])} layers, from the same forward as the read layer's), "
        "read through the logit lens and the patchscope patched at that layer, at each position's chosen scale "
        f"({', '.join(f'{s:g}' for s in profile['patchscope_scales'])}) times the layer's finetuned activation norm. "
        f"Best layer: {profile['rule']}" + (f", by {MEASURES[measure]}." if measure else ".")
    )
    return (
        "<section id='layer-profile'><h2>Layer profile</h2>"
        f"<p class='verdict' id='layer-profile-finding'>{html.escape(finding(profile))}</p>"
        + (
            f"<p class='verdict' id='layer-profile-significance'>{html.escape(significance_line(sig))}</p>"
            if sig
            else ""
        )
        + f"<p class='note'>{html.escape(note)}</p>"
        f"<div id='layer-profile-plot'>{_plot(profile)}</div>{table(head, rows)}</section>"
    )


def finding(profile: dict) -> str:
    """The profile's sentence: which layer reads best, against the read (by default the paper's middle) layer,
    and how to steer at another layer."""
    read, top = profile["read_layer"], profile["top"]
    which = "the paper's middle layer" if read == profile["middle_layer"] else "the layer read (--layer)"
    steer = (
        "To read and steer at layer N instead: `adl audit --layer N` (a new --out), or `adl steer RUN --layer N`, "
        "which steers with this run's delta at layer N."
    )
    b = profile["best"]
    if b is None:
        return f"Relevance per layer needs --finetune-data, or a description and the sentence encoder. {steer}"
    where = f"{b['count']} of the top {top} {b['lens'].replace('_', ' ')} tokens at position {b['position']}"
    measure = MEASURES[profile["measure"]]
    if b["layer"] == read:
        return f"Layer {read}, {which}, reads best: {where} are relevant ({measure}). {steer}"
    return (
        f"Layer {b['layer']} reads best: {where} are relevant ({measure}), against {b['read_layer_count']} at "
        f"layer {read}, {which}. {steer}"
    )


def spans(layers: list[int]) -> str:
    """Layer indices as runs: [3, 13, 14, 15] -> '3, 13-15'."""
    runs = []
    for x in layers:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def significance_line(sig: dict) -> str:
    """Whether the trace is above chance anywhere in the profile, corrected for every layer and position."""
    b = sig["best"]
    how = f"{sig['correction']}, {sig['draws']} random draws in every cell"
    if sig["significant"]:
        return (
            f"Across the layer profile the trace is significant at layer(s) {spans(sig['significant_layers'])} "
            f"(p = {sig['p_value']:.2g} at layer {b['layer']}, position {b['position']}, where {b['statistic']:.0%} "
            f"of a lens's top tokens are semantically relevant; {how})."
        )
    return (
        f"Across the layer profile the trace is not significant anywhere (smallest p = {sig['p_value']:.2g}, at layer "
        f"{b['layer']}, position {b['position']}; {how})."
    )
