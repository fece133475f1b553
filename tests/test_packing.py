"""Packed rows: attention and positions stay within each document (every family, sliding windows included),
packing keeps every target token, and the packed loss equals the loss of one padded example a row."""

import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.models.transformer import forward
from adl_jax.models.weights import load_hf_dir
from conftest import FAMILIES, random_texts, tiny_hf_model, tiny_tokenizer
from finetune.data import build_splits, pack_rows, pieces
from finetune.train import TrainConfig, token_nll


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_equal_each_document_alone(family, tmp_path):
    tiny_hf_model(family, tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    rng = np.random.RandomState(0)
    lengths = (9, 7, 6)  # longer than Gemma's 5-token window; 2 padding tokens end the row
    docs = [rng.randint(3, cfg.vocab_size, n) for n in lengths]
    tokens = np.concatenate([*docs, [0, 0]])[None]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [[0, 0]])[None]
    packed = np.asarray(forward(params, jnp.asarray(tokens), cfg, segments=jnp.asarray(segments)).logits[0])
    start = 0
    for doc in docs:
        alone = np.asarray(forward(params, jnp.asarray(doc[None]), cfg).logits[0])
        np.testing.assert_allclose(packed[start : start + len(doc)], alone, atol=1e-5 * np.abs(alone).max())
        start += len(doc)


def test_pack_rows_keeps_every_target_once():
    rng = np.random.RandomState(3)
    encoded = []
    for n in rng.randint(2, 30, 40):
        ids = list(rng.randint(3, 100, n))
        encoded.append((ids, [False] + list(rng.rand(n - 1) > 0.2)))
    encoded.append(([5, 6, 7], [False, False, False]))  # no target: dropped
    with pytest.warns(UserWarning, match=r"(\d+) of 41 examples longer than 12 tokens split into pieces; 1 pieces"):
        rows = pack_rows(encoded, 12, 0)
    long = sum(len(ids) > 12 for ids, _ in encoded)
    assert long > 0

    def scored(ids, tgt):  # (token before, token) of every target, the pairs the loss sees
        return [(ids[t - 1], ids[t]) for t in range(1, len(ids)) if tgt[t]]

    want = sorted(p for ids, tgt in encoded for p in scored(ids, tgt))
    got = []
    for tok, tgt, seg in zip(rows.tokens, rows.targets, rows.segments):
        for s in set(seg[seg > 0]):
            got += scored(list(tok[seg == s]), list(tgt[seg == s]))
            assert np.all(np.diff(np.flatnonzero(seg == s)) == 1)  # a segment is contiguous
        assert not tgt[seg == 0].any()
    assert sorted(got) == want
    assert np.array_equal(rows.valid, rows.segments > 0)
    total = sum(len(ids) for ids, tgt in encoded[:-1]) + sum(len(pieces(i, t, 12)) - 1 for i, t in encoded[:-1])
    assert rows.valid.sum() == total  # each split adds one overlapping context token, nothing else
    assert (rows.valid.sum(axis=1) > 6).sum() >= len(rows) - 1  # first fit: at most one row half empty or less


def test_packed_loss_equals_padded_loss(tmp_path):
    tiny_hf_model("gemma3_text", tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    texts = random_texts(np.random.RandomState(1), 12, words=(3, 12))
    docs = [{"text": t} for t in texts]
    tok = tiny_tokenizer()
    padded = build_splits(docs, tok, 16, eval_fraction=0.0).train
    packed = build_splits(docs, tok, 16, eval_fraction=0.0, pack=True).train
    assert len(packed) < len(padded) and packed.segments.max() > 1
    tc = TrainConfig()
    loss = lambda rows: token_nll(
        params, cfg, tc, *(jnp.asarray(a) for a in (rows.tokens, rows.segments, rows.targets))
    )
    (s_pad, n_pad), (s_pack, n_pack) = loss(padded), loss(packed)
    assert int(n_pad) == int(n_pack) == sum(len(t.split()) + 1 for t in texts)  # every word and the EOS
    np.testing.assert_allclose(float(s_pack), float(s_pad), rtol=1e-5)
