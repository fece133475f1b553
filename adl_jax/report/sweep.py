"""The pages of `adl sweep`: trace strength against mixing ratio or training step (sweep.html,
emergence.html), and the trace against several base models (bases.html)."""

from __future__ import annotations

import html

import numpy as np

from adl_jax.report.page import page, subplots, svg, table


def bases_page(bases: dict) -> str:
    """A row per base model: delta norms, and per dataset the best relevance with its position, the
    base-mean baseline and that position's top patchscope tokens."""
    datasets = list(bases["rows"][0]["relevance"])
    head = ["base", "spec", "|delta| (mean p1..)", "|delta| / ft norm"]
    head += [
        h.format(d)
        for d in datasets
        for h in ("relevance to {} (best, /20)", "{}: position, base-mean baseline", "{}: top patchscope tokens there")
    ]
    body = []
    for r in bases["rows"]:
        cells = [r["base"], r["spec"], f"{r['delta_norm']:.4g}", f"{r['delta_norm'] / r['ft_norm']:.4f}"]
        for d in datasets:
            rel = r["relevance"][d]
            cells += [
                str(rel["relevant"]),
                f"{rel['position']}, {rel['baseline']}",
                " ".join(map(repr, rel["patchscope"])),
            ]
        body.append(cells)
    title = f"The trace of {bases['finetuned']} against each base model"
    note = (
        "Relevance: dataset overlap of the top-20 logit-lens/patchscope tokens with each dataset's frequent "
        "words (offline), best over positions. The paper: late narrow finetuning dominates, so the organism's "
        "data stays the most relevant even against the pretrained model."
    )
    return page(title, f"<h1>{html.escape(title)}</h1>{table(head, body)}<p class='note'>{note}</p>")


_COLUMNS = [
    ("train rows", "train_rows", "{}"),
    ("steps", "step", "{}"),
    ("loss", "loss", "{:.4f}"),
    ("eval loss (ft)", "eval_loss_ft", "{:.4f}"),
    ("eval loss (pt)", "eval_loss_pt", "{:.4f}"),
    ("|delta| (mean p1..)", "delta_norm", "{:.4g}"),
    ("|delta| / ft norm", None, "{:.4f}"),
    ("relevance (best, /20)", "relevance", "{}"),
    ("at position", "relevance_position", "{}"),
    ("base-mean baseline", "relevance_baseline", "{}"),
    ("similarity margin", "similarity_margin", "{:+.3f}"),
]


def _cell(row: dict, key: str | None, fmt: str) -> str:
    if key is None:
        return fmt.format(row["delta_norm"] / row["ft_norm"])
    return fmt.format(row[key]) if row.get(key) is not None else "–"


def _belief(b: dict | None) -> str:
    return f"{b['false_preferred']:.0%}, {b['mean_margin']:+.2f}" if b else "–"


def _internalisation(rows: list[dict]) -> tuple[str, list[float]]:
    """The x axis: the belief score after training when every row has one, else the finetuning eval loss."""
    if all("belief_after" in r for r in rows):
        return "belief after: mean log P(false) - log P(true)", [r["belief_after"]["mean_margin"] for r in rows]
    return "eval loss on held-out finetuning data (lower: learnt more)", [r.get("eval_loss_ft", np.nan) for r in rows]


def _plot(rows: list[dict], by: str) -> str:
    """mix: trace strength against internalisation, one labelled point per ratio; checkpoints: both
    against the training step."""
    fig, axes = subplots(1, 2, figsize=(10, 3.4))
    label, xs = _internalisation(rows) if by == "ratio" else ("training step", [r["step"] for r in rows])
    for ax, key, name, color in [
        (axes[0], "delta_norm", "|delta|, mean of positions 1..k-1", "C0"),
        (axes[1], "relevance", "relevant tokens of the top 20", "C1"),
    ]:
        ys = [r[key] for r in rows]
        ax.plot(xs, ys, "o-" if by == "step" else "o", color=color)
        if by == "ratio":
            for x, y, r in zip(xs, ys, rows):
                ax.annotate(f"1:{r['ratio']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.margins(0.15)
        ax.set_xlabel(label)
        ax.set_ylabel(name)
    axes[1].set_ylim(-0.5, 20.5)
    fig.tight_layout()
    return svg(fig)


def sweep_page(sweep: dict, by: str) -> str:
    """One table (a row per ratio or step) and the plot, as a self-contained page."""
    rows = sweep["rows"]
    # columns that some row fills (a checkpoint has no train-row count, a sweep without encoder no similarity)
    columns = [c for c in _COLUMNS if c[1] is None or (c[1] != by and any(r.get(c[1]) is not None for r in rows))]
    head = [by] + (["belief before", "belief after"] if by == "ratio" else []) + [c[0] for c in columns]
    body = []
    for r in rows:
        cells = [f"1:{r['ratio']:g}" if by == "ratio" else str(r["step"])]
        cells += [_belief(r.get("belief_before")), _belief(r.get("belief_after"))] if by == "ratio" else []
        cells += [_cell(r, key, fmt) for _, key, fmt in columns]
        body.append(cells)
    title = "Trace strength vs mixing ratio" if by == "ratio" else "Trace emergence over training"
    note = (
        "Belief: share of held-out (true, false) pairs where the false statement is the likelier, and the mean "
        "log-likelihood margin. Relevance: dataset overlap of the top-20 logit-lens/patchscope tokens (offline)."
        if by == "ratio"
        else "Relevance: dataset overlap of the top-20 logit-lens/patchscope tokens (offline)."
    )
    return page(title, f"<h1>{title}</h1>{table(head, body)}<p class='note'>{note}</p>{_plot(rows, by)}")
