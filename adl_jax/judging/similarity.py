"""Steering similarity (the paper's set similarity): are steered generations closer to the finetuning data?

Set similarity of two sets of texts = the dot product of their centroids, each the mean of the L2-normalised
embeddings of a set. The mean over samples of one sample's cosine to the other set's centroid is exactly that
number, so its standard deviation is the spread we report beside it.
"""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def set_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of the centroids of the normalised rows of `a` (n, d) and `b` (m, d)."""
    return float(unit_rows(a).mean(0) @ unit_rows(b).mean(0))


def versus(samples: np.ndarray, reference: np.ndarray) -> dict:
    """Set similarity of `samples` to `reference`, with the std over samples of each one's cosine to its centroid."""
    per_sample = unit_rows(samples) @ unit_rows(reference).mean(0)
    return {"similarity": set_similarity(samples, reference), "std": float(per_sample.std()), "n": len(per_sample)}


def similarity_report(
    encoder, steered: dict[str, list[str]], unsteered: list[str], finetune_texts: list[str], max_finetune: int = 500
) -> dict[str, dict]:
    """Per steered position: steered and unsteered generations vs the first `max_finetune` finetuning texts
    (the paper uses 500), with the finetuning data's self-similarity (first half vs second half) as the
    ceiling to read them against. `steered` maps a position to its samples; all texts are encoded in one
    call, so the finetuning texts are embedded once however many positions there are."""
    finetune = list(finetune_texts)[:max_finetune]
    if not steered or not all(steered.values()) or not unsteered or len(finetune) < 2:
        raise ValueError("similarity needs steered and unsteered samples and at least two finetuning texts")
    groups = [list(unsteered), finetune, *map(list, steered.values())]
    emb = np.split(encoder.encode([t for g in groups for t in g]), np.cumsum([len(g) for g in groups])[:-1])
    u, f = emb[0], emb[1]
    common = {
        "unsteered_vs_finetune": versus(u, f),
        "finetune_self": versus(f[: len(f) // 2], f[len(f) // 2 :]),
        "finetune_texts": len(f),
    }
    reports = {}
    for position, s in zip(steered, emb[2:]):
        report = {"steered_vs_finetune": versus(s, f), **common}
        report["margin"] = report["steered_vs_finetune"]["similarity"] - common["unsteered_vs_finetune"]["similarity"]
        reports[position] = report
    return reports
