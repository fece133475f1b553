"""A self-contained `report.html` from a run directory's files (plots inlined as SVG).

Built only from what the run wrote (summary.json, lens.json, steering_*.json, ...), so `adl report DIR`
can rebuild it at any time.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from pathlib import Path

from adl_jax import io
from adl_jax.method.lens import LENS, LensResult
from adl_jax.method.tokens import PROMOTED
from adl_jax.report.page import page, subplots, svg, table

_JUDGES = {
    "offline": " (no LLM grader configured: coherence from the model's own loss, relevance as overlap "
    "with the finetuning data's frequent tokens)"
}


def _tokens(tokens, hits=frozenset()) -> str:
    return " ".join(
        f'<span class="tok{" hit" if t.strip().lower() in hits else ""}">{html.escape(repr(t)[1:-1])}</span>'
        for t in tokens
    )


def _relevance_plot(rel: dict) -> str:
    rows = rel["positions"]
    xs = [r["position"] for r in rows]
    fig, ax = subplots(figsize=(6, 2.8))
    for i, (name, label) in enumerate(
        [
            ("logit_lens", "logit lens of delta"),
            ("patchscope", "patchscope of delta"),
            ("base_mean", "baseline: base mean"),
        ]
    ):
        ax.bar([x + (i - 1) * 0.27 for x in xs], [r[name]["relevant"] for r in rows], 0.27, label=label)
    ax.set_xlabel("position")
    ax.set_ylabel("finetuning-data tokens in top 20")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    return svg(fig)


def _semantic_section(sem: dict) -> str:
    """Semantic relevance per position and lens, the null band of the controls, and the p-values."""
    rows, top = sem["positions"], sem["top"]
    xs = [r["position"] for r in rows]
    fig, ax = subplots(figsize=(6, 2.8))
    for x, r in zip(xs, rows):
        band = [top * r["null"]["q05"], top * r["null"]["q95"]]
        ax.fill_between(
            [x - 0.45, x + 0.45], *band, color="0.85", zorder=0, label="null, 5-95%" if x == xs[0] else None
        )
    for i, (name, label) in enumerate([("logit_lens", "logit lens of delta"), ("patchscope", "patchscope of delta")]):
        ax.bar([x + (i - 0.5) * 0.35 for x in xs], [r[name]["relevant"] for r in rows], 0.35, label=label)
    for x, r in zip(xs, rows):
        if r["p_adjusted"] < sem["alpha"]:
            ax.annotate("*", (x, max(r[n]["relevant"] for n in ("logit_lens", "patchscope"))), ha="center")
    ax.set_xlabel("position (*: significant)")
    ax.set_ylabel(f"semantically relevant of top {top}")
    ax.set_xticks(xs)
    ax.set_ylim(0, top)
    ax.legend(fontsize=8, loc="upper right")
    controls = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sem["controls"].items())
    p_values = table(
        ["position", "logit lens", "patchscope", "null 95%", "p", "p adjusted"],
        [
            [
                str(r["position"]),
                f"{r['logit_lens']['relevant']}/{top}",
                f"{r['patchscope']['relevant']}/{top}",
                f"{top * r['null']['q95']:.0f}/{top}",
                f"{r['p_value']:.3g}",
                f"{r['p_adjusted']:.3g}",
            ]
            for r in rows
        ],
    )
    encoder = "/".join(Path(sem["encoder"]).parts[-2:])
    return (
        "<h2>Semantic relevance against a null</h2>"
        f"<p>Each lens token is scored by its embedding's similarity to the {html.escape(sem['reference'])} "
        f"({html.escape(encoder)}); it counts as relevant above the {sem['quantile']:.0%} quantile of the "
        f"tokens that control vectors give through the same lenses ({html.escape(controls)}). The grey band is "
        f"the controls' 5-95% range of the position's statistic (the larger count of the two lenses); p is the "
        f"share of controls at least as relevant, adjusted by {html.escape(sem['correction'])}. Unlike the overlap "
        "measure above, synonyms and related words count (and the data's own frequent words count as the most "
        "similar).</p>" + svg(fig) + p_values
    )


def _significance_line(sem: dict) -> str:
    """The finding's sentence on whether the trace is above chance, and where."""
    rows = {r["position"]: r for r in sem["positions"]}
    controls = sum(sem["controls"].values())
    if sem["significant"]:
        where = ", ".join(f"{j} (p = {rows[j]['p_value']:.2g})" for j in sem["significant_positions"])
        b = max((rows[j] for j in sem["significant_positions"]), key=lambda r: r["statistic"])
        return (
            f"The trace is significant against {controls} control vectors at position(s) {where} "
            f"(after {sem['correction']}); at position {b['position']}, {b['logit_lens']['relevant']} logit-lens and "
            f"{b['patchscope']['relevant']} patchscope tokens of {sem['top']} are semantically relevant, where "
            f"the controls' 95% quantile is {sem['top'] * b['null']['q95']:.0f}."
        )
    best = min(rows.values(), key=lambda r: r["p_value"])
    return (
        f"The trace is not significant against {controls} control vectors at any position (smallest p = "
        f"{best['p_value']:.2g} at position {best['position']}, adjusted {best['p_adjusted']:.2g})."
    )


def _similarity_plot(sim: dict) -> str:
    fig, ax = subplots(figsize=(6, 2.8))
    labels, means, errs = [], [], []
    for pos, rep in sim.items():
        for key, label in [("steered_vs_finetune", f"steered p{pos}"), ("unsteered_vs_finetune", f"unsteered p{pos}")]:
            labels.append(label)
            means.append(rep[key]["similarity"])
            errs.append(rep[key].get("std", 0.0))
    ax.bar(range(len(labels)), means, yerr=errs, color=["C3" if "un" not in l else "C7" for l in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    ax.set_ylabel("similarity to finetuning data")
    return svg(fig)


def _alpha_plot(paths: dict) -> str:
    fig, ax = subplots(figsize=(6, 2.6))
    for i, (prompt, path) in enumerate(paths.items()):
        steps = range(1, len(path) + 1)
        ax.plot(steps, [s["alpha"] for s in path], "-", color=f"C{i}", label=prompt[:30])
        ax.scatter(steps, [s["alpha"] for s in path], c=["g" if s["passed"] else "r" for s in path], s=14, zorder=3)
    ax.set_xlabel("search step (green: coherent, red: not)")
    ax.set_ylabel("alpha")
    ax.legend(fontsize=7)
    return svg(fig)


def write_report(run: str | Path) -> Path:
    run = Path(run)
    summary = io.read_json(run / "summary.json")
    lenses = LensResult.from_json(io.read_json(run / LENS))
    rel, sim = summary.get("relevance"), summary.get("similarity")
    hits = set(rel["frequent_tokens"]) if rel else set()
    parts = [
        "<h1>What was this model finetuned on?</h1>",
        f"<p>Finetuned model <b>{html.escape(summary['finetuned'])}</b> compared with its base "
        f"<b>{html.escape(summary['base'])}</b> at layer {summary['layer']}, over {summary['samples']} texts.</p>",
    ]
    parts.append(_verdict(summary, lenses, rel, sim))
    parts.append(
        "<h2>How to read this</h2><p>Narrow finetuning shifts the model's internal activations by a nearly "
        "constant vector, even on text unrelated to the finetuning. We average the difference between the "
        "finetuned and the base model's activations (<i>delta</i>) at the first few token positions of ordinary "
        "text, then turn it into words: the <i>logit lens</i> shows which tokens delta pushes the model to "
        "predict, the <i>patchscope</i> inserts delta into a prompt that makes the model say what a vector "
        "means, and <i>steering</i> adds delta while the model writes. Tokens highlighted in green are among the "
        "most frequent words of the finetuning data.</p>"
        f"<p class='note'>Judges: {html.escape(summary['judges'])}{_JUDGES.get(summary['judges'], '')}.</p>"
    )
    if rel:
        parts.append("<h2>Relevance per position</h2>" + _relevance_plot(rel))
    else:
        parts.append(
            "<p class='note'>No description or finetuning data was given, so token relevance and steering "
            "similarity were skipped.</p>"
        )
    if summary.get("semantic_relevance"):
        parts.append(_semantic_section(summary["semantic_relevance"]))
    if sim:
        parts.append("<h2>Steered text vs finetuning data</h2>" + _similarity_plot(sim))
    parts.append("<h2>Tokens per position</h2>")
    for p in lenses.positions:
        s = p["patchscope_scale"]
        parts.append(
            f"<h3>Position {p['position']} (|delta| = {p['delta_norm']:.1f}, patchscope scale {s})</h3><table>"
        )
        rows = [
            ("logit lens of delta", p["logit_lens"]["delta"]),
            ("logit lens of -delta", p["logit_lens"]["neg_delta"]),
        ]
        rows += [
            (f"patchscope @ {k}" + (" (chosen)" if k == str(s) else ""), p["patchscope"][k])
            for k in _neighbours(list(p["patchscope"]), str(s))
        ]
        rows.append(("baseline: base mean", p["logit_lens"]["base_mean"]))
        for label, ts in rows:
            parts.append(f"<tr><th>{label}</th><td>{_tokens(ts.tokens[:20], hits)}</td></tr>")
        parts.append("</table>")
    if summary.get("layer_profile"):
        from adl_jax.report.layers import layer_profile_section

        parts.append(layer_profile_section(summary["layer_profile"]))
    parts.append(_promoted_section(run, rel, hits))
    unsteered = (
        io.read_json(run / "generations_unsteered.json") if (run / "generations_unsteered.json").exists() else {}
    )
    for f in sorted(run.glob("steering_pos*.json")):
        st = io.read_json(f)
        who = "base" if summary.get("steer_model") == "base" else "finetuned"
        parts.append(
            f"<h2>Steering the {who} model with delta at position {st['position']} "
            f"(alpha = {st['search']['alpha']:.2f})</h2>"
        )
        parts.append(_alpha_plot(st["search"]["paths"]))
        for prompt, texts in st["steered"].items():
            parts.append(
                f"<p><b>{html.escape(prompt)}</b></p><div class='pair'><div><i>steered</i>"
                + "".join(f"<div class='sample'>{html.escape(t)}</div>" for t in texts)
                + "</div><div><i>unsteered</i>"
                + "".join(f"<div class='sample'>{html.escape(t)}</div>" for t in unsteered.get(prompt, []))
                + "</div></div>"
            )
    io.write_text(run / "report.html", page("ADL report", "".join(parts)))
    return run / "report.html"


def _promoted_section(run: Path, rel, hits) -> str:
    """The per-token lens next to ADL: the tokens the finetune most often promotes on the corpus."""
    if not (run / PROMOTED).exists() or not (pr := io.read_json(run / PROMOTED))["texts"]:
        return ""
    note = (
        f"Read from the models' outputs instead of their activations: over {pr['texts']} corpus texts "
        f"({pr['positions']} tokens; mean KL(finetuned || base) of the next-token distributions "
        f"{pr['mean_kl']:.4f} nats), the tokens most often among a position's top {pr['top_per_position']} "
        "risers in log-probability."
    )
    if rel and "relevance" in pr:
        b = rel["best"]
        lens = max(b["logit_lens"]["relevant"], b["patchscope"]["relevant"])
        note += (
            f" {pr['relevance']['relevant']} of the top 20 are frequent words of the finetuning data, against "
            f"{lens} of the top 20 ADL lens tokens (position {b['position']})."
        )
    tokens = [t["token"] for t in pr["tokens"][:20]]
    return f"<h2>Per-token differences: a second lens</h2><p>{html.escape(note)}</p><p>{_tokens(tokens, hits)}</p>"


def _neighbours(scales: list[str], chosen: str) -> list[str]:
    """The chosen patchscope scale with the one below and above it (scales sorted numerically)."""
    ordered = sorted(scales, key=float)
    i = ordered.index(chosen)
    return ordered[max(i - 1, 0) : i + 2]


def _verdict(summary, lenses: LensResult, rel, sim) -> str:
    lines = []
    if rel:
        b = rel["best"]
        lines.append(
            f"At position {b['position']}, {max(b['logit_lens']['relevant'], b['patchscope']['relevant'])} of "
            f"the top 20 lens tokens are frequent words of the finetuning data, against "
            f"{b['base_mean']['relevant']} for the base model's own mean activation."
        )
    if summary.get("semantic_relevance"):
        lines.append(_significance_line(summary["semantic_relevance"]))
    if (summary.get("layer_profile") or {}).get("semantic_significance"):
        from adl_jax.report.layers import significance_line

        lines.append(significance_line(summary["layer_profile"]["semantic_significance"]))
    if sim:
        best = max(sim, key=lambda p: sim[p]["steered_vs_finetune"]["similarity"])
        s, u = sim[best]["steered_vs_finetune"], sim[best]["unsteered_vs_finetune"]
        closer = "more" if s["similarity"] > u["similarity"] else "no more"
        lines.append(
            f"Steered with delta (position {best}), the model writes text {closer} like the finetuning data: "
            f"similarity {s['similarity']:.3f} ± {s.get('std', 0):.3f} vs {u['similarity']:.3f} ± "
            f"{u.get('std', 0):.3f} unsteered."
        )
    # The position to quote: the most relevant one; without relevance the largest delta past position 0,
    # whose tokens (BOS) are generic.
    by_position = {p["position"]: p for p in lenses.positions}
    if rel:
        top = by_position[b["position"]]
        lens = "logit_lens" if b["logit_lens"]["relevant"] > b["patchscope"]["relevant"] else "patchscope"
    else:
        top, lens = max(lenses.positions[1:] or lenses.positions, key=lambda p: p["delta_norm"]), "patchscope"
    scores = top["logit_lens"]["delta"] if lens == "logit_lens" else top["patchscope"][str(top["patchscope_scale"])]
    words = ", ".join(t.strip() for t in scores.tokens[:10])
    name = "Logit-lens" if lens == "logit_lens" else "Patchscope"
    lines.append(f"{name} tokens at position {top['position']}: {html.escape(words)}.")
    return "<div class='verdict'><b>Finding.</b> " + " ".join(lines) + "</div>"


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def screenshot(page: str | Path, png: str | Path, *, width: int = 1200, height: int = 4000) -> Path:
    """A PNG of `page` as headless Chromium renders it: the way to look at a report on a machine without a
    display (`adl report DIR --screenshot report.png`)."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise FileNotFoundError("no Chromium found for the screenshot: install it (e.g. `apt-get install chromium`)")
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory() as profile:  # a throwaway profile: nothing read from or left in $HOME
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            Path(page).resolve().as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"Chromium could not render {page}: {done.stderr[-2000:]}")
    return png
