"""The cross-organism table and page, from run directories in the single-audit layout."""

import numpy as np
import pytest
from matplotlib.pyplot import imread

from adl_jax import io
from adl_jax.errors import InputError
from adl_jax.experiments.organisms import PAGE, TABLE, cross_organism
from adl_jax.method.diff import DiffResult
from adl_jax.report.audit import screenshot


def _run(root, name, delta, base="base-model", summary=None):
    run = root / name
    zero = np.zeros_like(delta)
    DiffResult(delta, zero, delta, 10.0, {}).save(run)
    io.write_json(run / "meta.json", {"base": base, "finetuned": f"org/{name}", "layer": 1})
    if summary:
        io.write_json(run / "summary.json", summary)
    return run


def test_table_cosines_and_page(tmp_path):
    rng = np.random.default_rng(0)
    deltas = {n: rng.normal(size=(3, 8)).astype(np.float32) for n in ("a", "b", "c")}
    deltas["c"][1] = -2 * deltas["a"][1]  # opposite directions at position 1: cosine -1
    rel = {"best": {"position": 2, "logit_lens": {"relevant": 3}, "patchscope": {"relevant": 7}}}
    sim = {"1": {"steered_vs_finetune": {"similarity": 0.3}, "unsteered_vs_finetune": {"similarity": 0.1}}}
    semantic = {
        "significant_positions": [1],
        "positions": [
            {"position": j, "p_value": p, "p_adjusted": round(min(1, 3 * p), 6), "statistic": stat, **lenses}
            for j, (p, stat, lenses) in enumerate(
                [
                    (0.5, 0.1, {"logit_lens": {"relevant": 2}, "patchscope": {"relevant": 1}}),
                    (0.009, 0.45, {"logit_lens": {"relevant": 4}, "patchscope": {"relevant": 9}}),
                    (0.009, 0.3, {"logit_lens": {"relevant": 6}, "patchscope": {"relevant": 0}}),
                ]
            )
        ],
    }
    profile = {
        "best": {"layer": 5, "count": 12, "read_layer_count": 4},
        "measure": "relevant",
        "read_layer": 1,
        "semantic_significance": {"p_value": 0.005, "significant_layers": [2, 4, 5, 6]},
    }
    summary = {
        "relevance": rel,
        "semantic_relevance": semantic,
        "alphas": {"1": 0.5},
        "similarity": sim,
        "layer_profile": profile,
    }
    _run(tmp_path, "a", deltas["a"], summary=summary)
    for n in ("b", "c"):
        _run(tmp_path, n, deltas[n])
    io.write_json(
        tmp_path / "a" / "agent.json",
        {"table": [{"agent": "adl", "budget": 0, "mean_grade": 2.0}, {"agent": "adl", "budget": 5, "mean_grade": 3.5}]},
    )
    table = cross_organism(tmp_path, ["a", "b", "c"])

    for j in range(3):
        for x, y in [("a", "b"), ("b", "c"), ("a", "c")]:
            u, v = deltas[x][j], deltas[y][j]
            want = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
            i, k = "abc".index(x), "abc".index(y)
            assert table["cosine"][str(j)][i][k] == pytest.approx(want, abs=1e-5)
    assert table["cosine"]["1"][0][2] == pytest.approx(-1, abs=1e-6)
    a, b = table["organisms"][:2]
    assert a["relevance"] == {"relevant": 7, "lens": "patchscope", "position": 2}
    assert a["similarity_margin"] == pytest.approx(0.2) and a["agent_grade"] == 3.5
    assert a["delta_norm"] == pytest.approx(np.linalg.norm(deltas["a"][1:], axis=-1).mean(), rel=1e-6)
    # Semantic relevance where p is smallest, the larger statistic breaking the tie
    assert a["semantic"] == {
        "relevant": 9,
        "lens": "patchscope",
        "position": 1,
        "p_value": 0.009,
        "p_adjusted": 0.027,
        "significant_positions": [1],
    }
    assert a["best_layer"]["p_value"] == 0.005 and a["best_layer"]["significant_layers"] == [2, 4, 5, 6]
    assert b["relevance"] is None and b["semantic"] is None and b["agent_grade"] is None
    text = (tmp_path / PAGE).read_text()
    assert "<td>0.009 (0.027 adjusted); significant at 1</td>" in text
    assert "<td>5 (12; read layer 1: 4); profile p 0.005, significant at 2, 4-6</td>" in text
    assert io.read_json(tmp_path / TABLE)["organisms"][2]["finetuned"] == "org/c"

    png = imread(screenshot(tmp_path / PAGE, tmp_path / "organisms.png", height=1200))
    assert png.std() > 0.01  # the page drew something: a table and heat maps, not a blank or error page


def test_refuses_mixed_bases_and_missing_runs(tmp_path):
    _run(tmp_path, "a", np.ones((2, 4), np.float32))
    _run(tmp_path, "b", np.ones((2, 4), np.float32), base="another-base")
    with pytest.raises(InputError, match="different base models"):
        cross_organism(tmp_path, ["a", "b"])
    with pytest.raises(InputError, match="no run directory for z"):
        cross_organism(tmp_path, ["a", "z"])
