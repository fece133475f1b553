"""The offline corpus: deterministic, cached, and resumable after a torn write."""

import pytest

import adl_jax.method.samples as samples
from conftest import tiny_model


def test_samples_are_cached_and_resume_identically(tmp_path, monkeypatch):
    model = tiny_model("qwen3", tmp_path)
    kw = dict(seed=3, max_new_tokens=6, chunk=4, progress=False)
    whole = samples.sample_texts(model, 10, tmp_path / "a", **kw)
    assert len(whole) == 10 and len(set(whole)) > 5 and all(t.startswith("w") for t in whole)

    # A crash after one chunk and half a line: the resumed run gives the same texts.
    partial = next((tmp_path / "a").glob("*.partial.jsonl"))
    lines = partial.read_text().splitlines()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / partial.name).write_text("\n".join(lines[:5]) + '\n{"te')
    assert samples.sample_texts(model, 10, tmp_path / "b", **kw) == whole

    monkeypatch.setattr(samples, "generate", lambda *a, **k: pytest.fail("cached samples were regenerated"))
    assert samples.sample_texts(model, 10, tmp_path / "a", **kw) == whole
    assert samples.sample_texts(model, 8, tmp_path / "a", **kw) == whole[:8]


def test_chunks_drawn_together_are_the_chunks_drawn_alone(tmp_path, monkeypatch):
    """Several chunks to a call, each keyed by its index: the texts of one call per chunk (the tiny model's
    rows round alike in any batch), so the layout of calls is no part of the corpus."""
    model = tiny_model("qwen3", tmp_path)
    kw = dict(seed=5, max_new_tokens=6, chunk=4, progress=False)
    together = samples.sample_texts(model, 14, tmp_path / "a", **kw)
    monkeypatch.setattr(samples, "ROWS_PER_CALL", 4)
    alone = samples.sample_texts(model, 14, tmp_path / "b", **kw)
    assert together == alone and len(set(alone)) > 7
