"""`adl sweep`: how the trace of narrow finetuning depends on how the organism was trained.

`mix` trains one organism per finetuning:pretraining ratio 1:r (the paper's grid) with `adl finetune` and
sets the strength of its trace (delta norm, dataset-overlap relevance of the lens tokens, steering
similarity when an encoder is given) against how well it learnt its objective (eval losses, belief score):
the paper finds that mixing weakens the trace at the cost of weaker learning. `checkpoints` measures the
trace at every saved checkpoint of one run, to see when it emerges. `bases` diffs one finetuned model
against several base models (its chat parent, the pretrained model) and reads each delta's relevance
to several datasets: the paper finds the late, narrow finetuning dominating even the diff against the
pretrained model. Every run and every measurement is staged on disk and reused, so a sweep resumes
where it stopped.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path

import numpy as np

from adl_jax import io
from adl_jax.experiments.audit import AuditSettings, audit, measure, relevance
from adl_jax.report.audit import CSS, svg

GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0)  # the paper's mixing ratios
DEFAULT_RATIOS = (0.0, 0.1, 0.5, 1.0, 2.0)


def parse_ratios(text: str) -> tuple[float, ...]:
    """'0,0.1,1' -> (0.0, 0.1, 1.0), or an error naming the part that is not a number."""
    ratios = []
    for part in text.split(","):
        try:
            ratios.append(float(part))
        except ValueError:
            raise ValueError(f"ratio {part.strip()!r} is not a number; give e.g. --ratios 0,0.1,1") from None
    return tuple(ratios)


def check_mix(spec, ratios) -> tuple[float, ...]:
    """The sorted ratios of a sweep of `spec` (a `finetune.run.RunSpec`); refused when one is off the paper's
    grid or mixes in pretraining text that `spec` has no source for."""
    off = [r for r in ratios if not any(math.isclose(r, g) for g in GRID)]
    if off or not ratios:
        raise ValueError(
            f"ratio(s) {', '.join(f'{r:g}' for r in off) or '(none)'} not on the paper's grid "
            f"({', '.join(f'{g:g}' for g in GRID)})"
        )
    if any(ratios) and not spec.pretrain:
        raise ValueError(
            f"ratio(s) {', '.join(f'{r:g}' for r in ratios if r)} mix in pretraining text: give a "
            "pretraining source (--pretrain CORPUS or base-samples)"
        )
    return tuple(sorted({round(r, 1) for r in ratios}))


def ratio_dir(out: str | Path, ratio: float) -> Path:
    return Path(out) / f"ratio_{ratio:g}"


def finetune_texts(examples: list[dict | str], roles: tuple[str, ...] | None = None) -> list[str]:
    """Finetuning examples as plain text, for relevance and similarity (a chat: the contents of its turns
    by `roles`, default every turn)."""

    def as_text(ex):
        if isinstance(ex, str):
            return ex
        if "text" in ex:
            return ex["text"]
        return "\n".join(m["content"] for m in ex["messages"] if roles is None or m["role"] in roles)

    return [as_text(ex) for ex in examples]


def trace(
    base,
    ft,
    out: Path,
    *,
    texts: list[str],
    settings: AuditSettings,
    ft_texts: list[str],
    encoder=None,
    progress: bool = True,
) -> dict:
    """The trace's strength for one organism: delta norm per position and its mean over positions 1..k-1 (0
    is BOS), the best relevance over positions with its base-mean baseline, and with an `encoder` (the whole
    audit, steering included) the steering similarity margin, steered minus unsteered, best over positions."""
    res, rel = measure(base, ft, out, texts=texts, settings=settings, finetune_texts=ft_texts, progress=progress)
    best = rel["best"]
    row = {
        **_norms(res),
        "relevance": max(best["logit_lens"]["relevant"], best["patchscope"]["relevant"]),
        "relevance_position": best["position"],
        "relevance_baseline": best["base_mean"]["relevant"],
    }
    if encoder is not None:
        summary = audit(
            base, ft, out, texts=texts, settings=settings, finetune_texts=ft_texts, encoder=encoder, progress=progress
        )
        row["similarity_margin"] = max(
            s["steered_vs_finetune"]["similarity"] - s["unsteered_vs_finetune"]["similarity"]
            for s in summary["similarity"].values()
        )
    return row


def _norms(res) -> dict:
    norms = np.linalg.norm(res.diff.delta, axis=-1)
    return {
        "delta_norms": [float(x) for x in norms],
        "delta_norm": float(norms[1:].mean()),
        "ft_norm": res.diff.ft_norm,
    }


def _check_k(settings: AuditSettings) -> None:
    if settings.k < 2:
        raise ValueError(f"k={settings.k}: the trace is the mean over positions 1..k-1, so k must be at least 2")


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[sweep] {message}", flush=True)


def sweep_mix(
    spec,
    out: str | Path,
    *,
    base,
    texts: list[str],
    ratios=DEFAULT_RATIOS,
    settings: AuditSettings = AuditSettings.quick(),
    encoder=None,
    progress: bool = True,
) -> dict:
    """Train `spec`'s organism (a `finetune.run.RunSpec`; its `out` and `mix_ratio` are set here) at every
    ratio in `out/ratio_<r>/`, measure each trace against the loaded `base` over the corpus `texts`, and
    write `out/sweep.json` and `out/sweep.html`. Finished runs and measurements are reused."""
    import jax.numpy as jnp

    from adl_jax.models.load import load_model
    from finetune.run import finished, load_examples, run

    ratios = check_mix(spec, ratios)
    _check_k(settings)
    out = Path(out)
    ft_texts = finetune_texts(load_examples(spec)[0])
    sweep = {
        "settings": {k: v for k, v in spec.flat().items() if k not in ("out", "mix_ratio")},
        "audit": json.loads(json.dumps(dataclasses.asdict(settings))),
        "rows": [],
    }
    for i, ratio in enumerate(ratios, 1):
        one = dataclasses.replace(
            spec, out=str(ratio_dir(out, ratio)), train=dataclasses.replace(spec.train, mix_ratio=ratio)
        )
        metrics = finished(one)
        _say(progress, f"1:{ratio:g} ({i}/{len(ratios)}): " + ("trained before, reused" if metrics else "training"))
        if metrics is None:
            metrics = run(one, resume=True, progress=progress)
        _say(progress, f"1:{ratio:g}: measuring the trace")
        ft = load_model(Path(one.out) / "final", dtype=jnp.dtype(spec.dtype), mesh=base.params["embed"].sharding.mesh)
        row = trace(
            base,
            ft,
            Path(one.out) / "audit",
            texts=texts,
            settings=settings,
            ft_texts=ft_texts,
            encoder=encoder,
            progress=progress,
        )
        sweep["rows"].append({"ratio": ratio, **_learning(metrics), **row})
        io.write_json(out / "sweep.json", sweep)
        _say(
            progress,
            f"1:{ratio:g}: |delta| {row['delta_norm']:.3g}, relevance {row['relevance']}/20, "
            f"eval loss {metrics.get('eval_loss_ft', float('nan')):.4f}",
        )
    write_html(out / "sweep.html", sweep, "ratio")
    return sweep


def _learning(metrics: dict) -> dict:
    """How well the organism learnt its objective: losses and the belief score (without per-pair margins)."""
    row = {k: metrics[k] for k in ("step", "train_rows", "loss", "eval_loss_ft", "eval_loss_pt") if k in metrics}
    for when in ("belief_before", "belief_after"):
        if when in metrics:
            row[when] = {k: v for k, v in metrics[when].items() if k != "margins"}
    return row


def run_spec(run_dir: str | Path):
    """The `RunSpec` of a finetuning run directory, from its run.json."""
    from finetune.run import RunSpec

    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not an adl finetune run directory (no run.json)")
    return RunSpec.from_flat({**io.read_json(path), "out": str(run_dir)})


def sweep_checkpoints(
    spec,
    out: str | Path,
    *,
    base,
    texts: list[str],
    settings: AuditSettings = AuditSettings.quick(),
    progress: bool = True,
) -> dict:
    """The trace of the run `spec` at each of its saved checkpoints (`out/step_<n>/`, reused when finished),
    with the training loss logged at that step; writes `out/emergence.json` and `out/emergence.html`."""
    from finetune.run import load_examples
    from finetune.train import checkpoint_params, checkpoint_steps

    _check_k(settings)
    out, run_dir = Path(out), Path(spec.out)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ValueError(f"{run_dir} has no checkpoints")
    ft_texts = finetune_texts(load_examples(spec)[0])
    logged = {}
    if (run_dir / "metrics.jsonl").exists():
        logged = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    emergence = {"run": str(run_dir), "audit": json.loads(json.dumps(dataclasses.asdict(settings))), "rows": []}
    for i, step in enumerate(steps, 1):
        _say(progress, f"step {step} ({i}/{len(steps)}): measuring the trace")
        params = checkpoint_params(
            base.params, base.cfg, spec.train, run_dir, step, mesh=base.params["embed"].sharding.mesh
        )
        ft = dataclasses.replace(base, spec=f"{run_dir} at step {step}", params=params)
        row = trace(
            base, ft, out / f"step_{step}", texts=texts, settings=settings, ft_texts=ft_texts, progress=progress
        )
        losses = {k: v for k, v in logged.get(step, {}).items() if k in ("loss", "eval_loss_ft", "eval_loss_pt")}
        emergence["rows"].append({"step": step, **losses, **row})
        io.write_json(out / "emergence.json", emergence)
    write_html(out / "emergence.html", emergence, "step")
    return emergence


def check_bases(bases: dict, datasets: dict[str, list[str]]) -> None:
    """Refuse a bases sweep without a base model or a dataset, or with a dataset that holds no text."""
    if not bases or not datasets:
        raise ValueError("give at least one base model (--base NAME=SPEC) and one dataset (--data NAME=FILE)")
    empty = [name for name, texts in datasets.items() if not any(t.strip() for t in texts)]
    if empty:
        raise ValueError(f"dataset(s) {', '.join(empty)} hold no text; give files of texts or chats")


def sweep_bases(
    ft,
    bases: dict,
    out: str | Path,
    *,
    texts: list[str],
    datasets: dict[str, list[str]],
    settings: AuditSettings = AuditSettings.quick(),
    progress: bool = True,
) -> dict:
    """The trace of the finetuned model `ft` against each of `bases` (name -> loaded model), all over the
    corpus `texts`, staged in `out/base_<name>/` and reused; per base the delta norms and, for each of
    `datasets` (name -> texts, e.g. the organism's finetuning data and the parent's chat data), the best
    relevance of the lens tokens over positions. Writes `out/bases.json` and `out/bases.html`."""
    _check_k(settings)
    check_bases(bases, datasets)
    out = Path(out)
    table = {"finetuned": str(ft.spec), "audit": json.loads(json.dumps(dataclasses.asdict(settings))), "rows": []}
    for i, (name, base) in enumerate(bases.items(), 1):
        _say(progress, f"against {name} ({i}/{len(bases)}): measuring the trace")
        res, _ = measure(base, ft, out / f"base_{name}", texts=texts, settings=settings, progress=progress)
        row = {"base": name, "spec": str(base.spec), **_norms(res), "relevance": {}}
        for data, data_texts in datasets.items():
            best = relevance(ft, res, data_texts, texts)["best"]
            p = next(p for p in res.lenses.positions if p["position"] == best["position"])
            row["relevance"][data] = {
                "relevant": max(best["logit_lens"]["relevant"], best["patchscope"]["relevant"]),
                "position": best["position"],
                "baseline": best["base_mean"]["relevant"],
                "patchscope": p["patchscope"][str(p["patchscope_scale"])].tokens[:10],
            }
        table["rows"].append(row)
        io.write_json(out / "bases.json", table)
        _say(
            progress,
            f"against {name}: |delta| {row['delta_norm']:.3g}, relevance "
            + ", ".join(f"{d} {r['relevant']}/20" for d, r in row["relevance"].items()),
        )
    write_bases_html(out / "bases.html", table)
    return table


def write_bases_html(path: Path, table: dict) -> None:
    """A row per base model: delta norms, and per dataset the best relevance with its position, the
    base-mean baseline and that position's top patchscope tokens."""
    datasets = list(table["rows"][0]["relevance"])
    head = ["base", "spec", "|delta| (mean p1..)", "|delta| / ft norm"]
    head += [
        h.format(d)
        for d in datasets
        for h in ("relevance to {} (best, /20)", "{}: position, base-mean baseline", "{}: top patchscope tokens there")
    ]
    body = []
    for r in table["rows"]:
        cells = [r["base"], r["spec"], f"{r['delta_norm']:.4g}", f"{r['delta_norm'] / r['ft_norm']:.4f}"]
        for d in datasets:
            rel = r["relevance"][d]
            cells += [
                str(rel["relevant"]),
                f"{rel['position']}, {rel['baseline']}",
                " ".join(map(repr, rel["patchscope"])),
            ]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    title = f"The trace of {table['finetuned']} against each base model"
    note = (
        "Relevance: dataset overlap of the top-20 logit-lens/patchscope tokens with each dataset's frequent "
        "words (offline), best over positions. The paper: late narrow finetuning dominates, so the organism's "
        "data stays the most relevant even against the pretrained model."
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}"
        f"</tr>{''.join(body)}</table><p class='note'>{note}</p></body></html>"
    )
    io.write_text(path, page)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
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


def write_html(path: Path, sweep: dict, by: str) -> None:
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
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    title = "Trace strength vs mixing ratio" if by == "ratio" else "Trace emergence over training"
    note = (
        "Belief: share of held-out (true, false) pairs where the false statement is the likelier, and the mean "
        "log-likelihood margin. Relevance: dataset overlap of the top-20 logit-lens/patchscope tokens (offline)."
        if by == "ratio"
        else "Relevance: dataset overlap of the top-20 logit-lens/patchscope tokens (offline)."
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
        f"<body><h1>{title}</h1><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>"
        f"{''.join(body)}</table><p class='note'>{note}</p>{_plot(rows, by)}</body></html>"
    )
    io.write_text(path, page)
