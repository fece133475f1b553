"""`audit` end to end on a tiny pair: every stage's file, resumable stages, and a report that renders."""

import numpy as np
import pytest

from adl_jax import io
from adl_jax.audit import AuditSettings, audit
from adl_jax.steer import SteeringSettings
from conftest import random_texts
from test_diff import tiny_pair

TINY = AuditSettings(
    samples=48, n=8, batch_size=16, steer_positions=(1,), final_prompts=("w5 w6", "w7 w8"),
    steering=SteeringSettings(first_steps=3, other_steps=3, samples=2, new_tokens=6, final_samples=2, final_tokens=6),
)  # fmt: skip


def test_audit_writes_every_stage_and_resumes(tmp_path, rng, monkeypatch):
    (base, ft), _ = tiny_pair(tmp_path)
    texts = random_texts(rng, 100, vocab_size=100)  # words w3..w99
    ft_texts = ["w110 w111 w112 w110 w111"] * 20  # a 'narrow' dataset of words the corpus never uses
    summary = audit(base, ft, tmp_path / "run", texts=texts, settings=TINY, finetune_texts=ft_texts, progress=False)
    run = tmp_path / "run"
    for name in ("delta.safetensors", "lens.json", "steering_references.json", "generations_unsteered.json",
                 "steering_pos1.json", "relevance.json", "summary.json", "report.html"):  # fmt: skip
        assert (run / name).exists(), name
    assert summary["judges"] == "offline" and set(summary["alphas"]) == {"1"}
    rel = io.read_json(run / "relevance.json")
    assert set(rel["frequent_tokens"]) == {"w110", "w111", "w112"}
    assert len(rel["positions"]) == 5
    steer = io.read_json(run / "steering_pos1.json")
    assert len(steer["search"]["paths"]) == 3 and set(steer["steered"]) == set(TINY.final_prompts)
    page = (run / "report.html").read_text()
    assert page.count("<svg") >= 2 and "Position 4" in page and "steered" in page

    # Finished stages are reused: a second audit does no steering at all.
    import adl_jax.audit as audit_mod

    monkeypatch.setattr(audit_mod, "find_alpha", lambda *a, **k: pytest.fail("steering stage was recomputed"))
    again = audit(base, ft, run, texts=texts, settings=TINY, finetune_texts=ft_texts, progress=False)
    assert again["alphas"] == summary["alphas"]
