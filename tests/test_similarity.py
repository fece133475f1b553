"""Set similarity against a hand computation, and the report's layout on a stand-in encoder."""

from __future__ import annotations

import numpy as np
import pytest

from adl_jax.judging.similarity import set_similarity, similarity_report, versus

A = np.array([[3.0, 4.0], [1.0, 0.0]])  # unit rows (.6, .8), (1, 0): centroid (.8, .4)
B = np.array([[0.0, 2.0], [1.0, 1.0]])  # unit rows (0, 1), (.7071, .7071): centroid (.35355, .85355)


def test_set_similarity_by_hand():
    r = np.sqrt(0.5)
    expected = 0.8 * r / 2 + 0.4 * (1 + r) / 2
    assert set_similarity(A, B) == pytest.approx(expected, abs=1e-12)
    assert set_similarity(A, A) == pytest.approx(0.8**2 + 0.4**2)
    per_sample = [0.6 * r / 2 + 0.8 * (1 + r) / 2, r / 2]  # each row of A against B's centroid
    assert versus(A, B) == pytest.approx({"similarity": expected, "std": np.std(per_sample), "n": 2})


class TableEncoder:
    """Stands in for a sentence encoder: each text's embedding is looked up."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], np.float32)


def test_report_layout_and_values():
    table = {"s1": A[0], "s2": A[1], "u1": [1.0, -1.0], "f1": B[0], "f2": B[1], "f3": [5.0, 5.0], "f4": [1.0, 0.0]}
    enc = TableEncoder(table)
    reps = similarity_report(enc, {"1": ["s1", "s2"], "2": ["s2"]}, ["u1"], ["f1", "f2", "f3", "f4"], max_finetune=3)
    assert enc.calls == [["u1", "f1", "f2", "f3", "s1", "s2", "s2"]]  # one encode call; the cap keeps the first texts
    rep = reps["1"]
    f = np.array([table[t] for t in ("f1", "f2", "f3")])
    assert rep["steered_vs_finetune"]["similarity"] == pytest.approx(set_similarity(A, f), abs=1e-6)
    assert rep["unsteered_vs_finetune"] == pytest.approx(
        {"similarity": set_similarity([[1.0, -1.0]], f), "std": 0.0, "n": 1}, abs=1e-6
    )
    assert rep["finetune_self"] == pytest.approx(versus(f[:1], f[1:]), abs=1e-6)
    assert rep["margin"] == pytest.approx(
        rep["steered_vs_finetune"]["similarity"] - rep["unsteered_vs_finetune"]["similarity"]
    )
    assert rep["finetune_texts"] == 3
    assert reps["2"]["steered_vs_finetune"]["similarity"] == pytest.approx(set_similarity(A[1:], f), abs=1e-6)


def test_report_refuses_empty_sets():
    with pytest.raises(ValueError, match="at least two finetuning texts"):
        similarity_report(TableEncoder({}), {"1": ["s"]}, ["u"], ["f"])
