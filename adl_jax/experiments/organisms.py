"""Across organisms: one table of every organism audited against one base (organisms.json, organisms.html).

Each organism's run directory is `OUT/<name>/`, the same files a single audit writes; this reads whatever
stages have finished there, so the table can be rebuilt at any time (after `adl agent`, say).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adl_jax import io
from adl_jax.errors import InputError
from adl_jax.experiments.layer_profile import PROFILE
from adl_jax.method.diff import DiffResult

TABLE, PAGE = "organisms.json", "organisms.html"


def _best_relevance(relevance: dict | None) -> dict | None:
    if not relevance:
        return None
    best = relevance["best"]
    lens = max(("logit_lens", "patchscope"), key=lambda name: best[name]["relevant"])
    return {"relevant": best[lens]["relevant"], "lens": lens, "position": best["position"]}


def _semantic(semantic: dict | None) -> dict | None:
    """Semantic relevance at the position with the smallest p-value, and where the trace is significant."""
    if not semantic:
        return None
    best = min(semantic["positions"], key=lambda r: (r["p_value"], -r["statistic"]))
    lens = max(("logit_lens", "patchscope"), key=lambda name: best[name]["relevant"])
    return {
        "relevant": best[lens]["relevant"],
        "lens": lens,
        "position": best["position"],
        "p_value": best["p_value"],
        "p_adjusted": best["p_adjusted"],
        "significant_positions": semantic["significant_positions"],
    }


def _best_layer(profile: dict | None) -> dict | None:
    """The layer profile's best-reading layer, with the read layer to compare (None without a profile)."""
    if not profile or profile["best"] is None:
        return None
    best, sig = profile["best"], profile.get("semantic_significance")
    return {
        "layer": best["layer"],
        "count": best["count"],
        "measure": profile["measure"],
        "read_layer": profile["read_layer"],
        "read_layer_count": best["read_layer_count"],
        **({"p_value": sig["p_value"], "significant_layers": sig["significant_layers"]} if sig else {}),
    }


def _agent_grade(agent: dict | None) -> float | None:
    """The ADL agent's mean grade at its largest budget (the paper's headline setting)."""
    table = [r for r in (agent or {}).get("table", []) if r["agent"] == "adl"]
    return max(table, key=lambda r: r["budget"])["mean_grade"] if table else None


def organism_row(name: str, run: Path) -> dict:
    """What the table says about one organism, from the files in its run directory."""
    diff = DiffResult.load(run)
    optional = lambda f: io.read_json(run / f) if (run / f).exists() else None
    summary = optional("summary.json") or {}
    norms = np.linalg.norm(diff.delta, axis=-1)
    similarity = summary.get("similarity")
    return {
        "name": name,
        "finetuned": diff.meta["finetuned"],
        "delta_norm": float(norms[1:].mean() if len(norms) > 1 else norms[0]),
        "ft_norm": diff.ft_norm,
        "relevance": _best_relevance(summary.get("relevance") or optional("relevance.json")),
        "semantic": _semantic(summary.get("semantic_relevance") or optional("semantic_relevance.json")),
        "alphas": summary.get("alphas"),
        "similarity_margin": max(
            s["steered_vs_finetune"]["similarity"] - s["unsteered_vs_finetune"]["similarity"]
            for s in similarity.values()
        )
        if similarity
        else None,
        "agent_grade": _agent_grade(optional("agent.json")),
        "best_layer": _best_layer(summary.get("layer_profile") or optional(PROFILE)),
    }


def trace_cosines(deltas: list[np.ndarray]) -> dict[str, list[list[float]]]:
    """Per position j, the (organisms x organisms) cosine similarity of the deltas' rows j."""
    stacked = np.stack(deltas).astype(np.float64)  # (organisms, k, D)
    unit = stacked / np.maximum(np.linalg.norm(stacked, axis=-1, keepdims=True), 1e-30)
    return {str(j): (unit[:, j] @ unit[:, j].T).round(6).tolist() for j in range(stacked.shape[1])}


def cross_organism(out: str | Path, names: list[str]) -> dict:
    """Write OUT/organisms.json and organisms.html for the organisms `names` (run directories OUT/<name>/)."""
    from adl_jax.report.organisms import organisms_page

    out = Path(out)
    missing = [n for n in names if not (out / n).is_dir()]
    if missing:
        raise InputError(f"{out} has no run directory for {', '.join(missing)}: audit those organisms first")
    diffs = {n: DiffResult.load(out / n) for n in names}
    bases = {d.meta["base"] for d in diffs.values()}
    if len(bases) != 1:
        raise InputError(f"the organisms in {out} were audited against different base models ({sorted(bases)})")
    table = {
        "base": bases.pop(),
        "organisms": [organism_row(n, out / n) for n in names],
        "cosine": trace_cosines([diffs[n].delta for n in names]),
    }
    io.write_json(out / TABLE, table)
    io.write_text(out / PAGE, organisms_page(table))
    return table
