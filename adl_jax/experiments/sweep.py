"""`adl sweep`: how the trace of narrow finetuning depends on how the organism was trained.

`mix` trains one organism per finetuning:pretraining ratio 1:r (the paper's grid) with `adl finetune` and
sets the strength of its trace (delta norm, dataset-overlap relevance of the lens tokens, steering
similarity when an encoder is given) against how well it learnt its objective (eval losses, belief score):
the paper finds that mixing weakens the trace at the cost of weaker learning. `checkpoints` measures the
trace at every saved checkpoint of one run, to see when it emerges. `bases` diffs one finetuned model
against several base models (its chat parent, the pretrained model) and reads each delta's relevance
to several datasets: the paper finds the late, narrow finetuning dominating even the diff against the
pretrained model. `mix` and `checkpoints` read all their models' deltas in one pass over the corpus (the
base forward shared, see `compute_deltas`). Every run and every measurement is staged on disk and reused,
so a sweep resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from adl_jax import io
from adl_jax.experiments.audit import AuditSettings, audit, measure, relevance
from adl_jax.experiments.audits import deltas
from adl_jax.report.sweep import bases_page, sweep_page
from adl_jax.models.load import Model

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
    base: Model,
    ft: Model,
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


def _deltas(base: Model, models: dict, dirs: dict, texts, settings: AuditSettings, progress: bool) -> None:
    """Every model's delta (key -> model, its run directory `dirs[key]`) in one pass, the base forward shared,
    so that each model's `trace` finds its delta finished; a NaN model is refused after the others are written."""
    names = {key: f"{key:g}" if isinstance(key, float) else str(key) for key in models}
    organisms = {names[key]: model for key, model in models.items()}
    _say(progress, f"the deltas of {len(organisms)} models in one pass")
    failures = deltas(
        base, organisms, {names[key]: d for key, d in dirs.items()}, texts=texts, settings=settings, progress=progress
    )
    if failures:
        raise FloatingPointError("; ".join(failures.values()))


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
    base: Model,
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
    from finetune.metrics import write_scalars
    from finetune.run import finished, load_examples, run

    ratios = check_mix(spec, ratios)
    _check_k(settings)
    out = Path(out)
    ft_texts = finetune_texts(load_examples(spec)[0])
    sweep = {
        "settings": {k: v for k, v in spec.flat().items() if k not in ("out", "mix_ratio")},
        "audit": io.plain(dataclasses.asdict(settings)),
        "rows": [],
    }
    runs = {}
    for i, ratio in enumerate(ratios, 1):
        one = dataclasses.replace(
            spec, out=str(ratio_dir(out, ratio)), train=dataclasses.replace(spec.train, mix_ratio=ratio)
        )
        metrics = finished(one)
        _say(progress, f"1:{ratio:g} ({i}/{len(ratios)}): " + ("trained before, reused" if metrics else "training"))
        runs[ratio] = one, metrics or run(one, resume=True, progress=progress)
    mesh = base.params["embed"].sharding.mesh
    models = {
        ratio: load_model(Path(one.out) / "final", dtype=jnp.dtype(spec.dtype), mesh=mesh)
        for ratio, (one, _) in runs.items()
    }
    _deltas(base, models, {r: Path(one.out) / "audit" for r, (one, _) in runs.items()}, texts, settings, progress)
    for ratio, (one, metrics) in runs.items():
        _say(progress, f"1:{ratio:g}: measuring the trace")
        row = trace(
            base,
            models[ratio],
            Path(one.out) / "audit",
            texts=texts,
            settings=settings,
            ft_texts=ft_texts,
            encoder=encoder,
            progress=progress,
        )
        sweep["rows"].append({"ratio": ratio, **_learning(metrics), **row})
        strength = {f"trace/{k}": row[k] for k in ("delta_norm", "relevance", "similarity_margin") if k in row}
        write_scalars(one.out, "trace", {metrics["step"]: strength})  # beside the organism's training curves
        io.write_json(out / "sweep.json", sweep)
        _say(
            progress,
            f"1:{ratio:g}: |delta| {row['delta_norm']:.3g}, relevance {row['relevance']}/20, "
            f"eval loss {metrics.get('eval_loss_ft', float('nan')):.4f}",
        )
    io.write_text(out / "sweep.html", sweep_page(sweep, "ratio"))
    return sweep


def sweep_published(
    variants: dict[float, tuple[str, str]],
    out: str | Path,
    *,
    base: Model,
    texts: list[str],
    ft_texts: list[str],
    settings: AuditSettings = AuditSettings.quick(),
    encoder=None,
    progress: bool = True,
) -> dict:
    """A mixing sweep of organisms already trained (the toolkit's `mix1-*` variants): ratio -> (variant, model
    spec), each loaded on `base` (an adapter shares its arrays) and measured like `sweep_mix`'s runs, in
    `out/ratio_<r>/audit/`; no training, so no losses or belief. Writes `out/sweep.json` and `out/sweep.html`."""
    from adl_jax.models.load import load_model

    _check_k(settings)
    out = Path(out)
    sweep = {"settings": {"base": str(base.spec)}, "audit": io.plain(dataclasses.asdict(settings)), "rows": []}
    mesh = base.params["embed"].sharding.mesh
    models = {
        ratio: load_model(spec, dtype=base.params["embed"].dtype, mesh=mesh, base=base)
        for ratio, (_, spec) in variants.items()
    }
    _deltas(base, models, {ratio: ratio_dir(out, ratio) / "audit" for ratio in variants}, texts, settings, progress)
    for i, (ratio, (variant, spec)) in enumerate(variants.items(), 1):
        _say(progress, f"1:{ratio:g} ({i}/{len(variants)}): {variant} = {spec}, measuring the trace")
        row = trace(
            base,
            models[ratio],
            ratio_dir(out, ratio) / "audit",
            texts=texts,
            settings=settings,
            ft_texts=ft_texts,
            encoder=encoder,
            progress=progress,
        )
        sweep["rows"].append({"ratio": ratio, "variant": variant, "finetuned": spec, **row})
        io.write_json(out / "sweep.json", sweep)
        _say(progress, f"1:{ratio:g}: |delta| {row['delta_norm']:.3g}, relevance {row['relevance']}/20")
    io.write_text(out / "sweep.html", sweep_page(sweep, "ratio"))
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
    base: Model,
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
    emergence = {"run": str(run_dir), "audit": io.plain(dataclasses.asdict(settings)), "rows": []}
    mesh = base.params["embed"].sharding.mesh
    models = {
        step: dataclasses.replace(
            base,
            spec=f"{run_dir} at step {step}",
            params=checkpoint_params(base.params, base.cfg, spec.train, run_dir, step, mesh=mesh),
        )
        for step in steps
    }
    _deltas(base, models, {step: out / f"step_{step}" for step in steps}, texts, settings, progress)
    for i, step in enumerate(steps, 1):
        _say(progress, f"step {step} ({i}/{len(steps)}): measuring the trace")
        row = trace(
            base,
            models[step],
            out / f"step_{step}",
            texts=texts,
            settings=settings,
            ft_texts=ft_texts,
            progress=progress,
        )
        losses = {k: v for k, v in logged.get(step, {}).items() if k in ("loss", "eval_loss_ft", "eval_loss_pt")}
        emergence["rows"].append({"step": step, **losses, **row})
        io.write_json(out / "emergence.json", emergence)
    io.write_text(out / "emergence.html", sweep_page(emergence, "step"))
    return emergence


def check_bases(bases: dict, datasets: dict[str, list[str]]) -> None:
    """Refuse a bases sweep without a base model or a dataset, or with a dataset that holds no text."""
    if not bases or not datasets:
        raise ValueError("give at least one base model (--base NAME=SPEC) and one dataset (--data NAME=FILE)")
    empty = [name for name, texts in datasets.items() if not any(t.strip() for t in texts)]
    if empty:
        raise ValueError(f"dataset(s) {', '.join(empty)} hold no text; give files of texts or chats")


def sweep_bases(
    ft: Model,
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
    table = {"finetuned": str(ft.spec), "audit": io.plain(dataclasses.asdict(settings)), "rows": []}
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
    io.write_text(out / "bases.html", bases_page(table))
    return table
