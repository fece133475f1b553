"""The causal ablation's results as text (`adl ablate` prints it) and as a page (ablation.html)."""

from __future__ import annotations

import html

from adl_jax.report.page import page, subplots, svg


def ablation_table(result: dict, subset: str = "all") -> str:
    """Plain-text table: % CE change per position and dataset, with the control range beside it."""
    lines = [
        f"% change in CE when delta_p is ablated at layer {result['layer']} ({result['mode']}; "
        f"tokens: {subset}); control ranges are min..max over random / activation-difference directions"
    ]
    for name, d in result["datasets"].items():
        lines.append(f"{name} (CE {d['ce']:.3f} over {d['texts']} texts)")
        for p in result["positions"]:
            r, a = d["random"][str(p)][subset], d["activation_diff"][str(p)][subset]
            v = d["delta"][str(p)][subset]
            lines.append(
                f"  p={p}: {v:+7.2f}%   random {min(r):+6.2f}..{max(r):+6.2f} ({_side(v, r)})   "
                f"act-diff {min(a):+6.2f}..{max(a):+6.2f} ({_side(v, a)})"
            )
    return "\n".join(lines)


def _side(value: float, controls: list[float]) -> str:
    return "above" if value > max(controls) else "below" if value < min(controls) else "inside"


def ablation_page(result: dict, subset: str = "all") -> str:
    """A small self-contained page: one panel per dataset, % CE change per position against the controls."""
    names = list(result["datasets"])
    fig, axes = subplots(1, len(names), figsize=(4.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        d, ps = result["datasets"][name], result["positions"]
        for family, color in (("random", "0.75"), ("activation_diff", "0.5")):
            lo = [min(d[family][str(p)][subset]) for p in ps]
            hi = [max(d[family][str(p)][subset]) for p in ps]
            ax.fill_between(ps, lo, hi, color=color, alpha=0.5, label=f"{family.replace('_', ' ')} controls")
        ax.bar(ps, [d["delta"][str(p)][subset] for p in ps], color="C3", width=0.6, label="delta_p ablated")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=f"{name} (CE {d['ce']:.2f})", xlabel="position p of delta_p", ylabel="% change in CE")
    axes[0][0].legend(fontsize=7)
    body = (
        f"<h1>Causal ablation of delta</h1><p>{html.escape(result.get('finetuned', ''))} vs its base "
        f"{html.escape(result.get('base', ''))}, layer {result['layer']}, mode {result['mode']}: the component "
        "of the finetuned model's residual along delta_p is set to the base model's (or removed) at every "
        "position. Grey bands: the same edit along control directions.</p>"
        f"{svg(fig)}<pre>{html.escape(ablation_table(result, subset))}</pre>"
    )
    return page("ADL ablation", body)
