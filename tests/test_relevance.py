"""Semantic relevance and its null: scores by hand with the encoder, exact p-values, and a test that holds
its stated rate (a vector made of the data's own token embeddings is significant, random vectors are not)."""

import numpy as np
import pytest

from adl_jax.judging.relevance import (
    RelevanceSettings,
    p_value,
    profile_significance,
    reference_embedding,
    semantic_relevance,
    significance,
    token_scores,
)
from adl_jax.method.adl import ADLResult
from adl_jax.method.diff import DiffResult
from adl_jax.method.lens import patchscope, patchscope_each, read_lenses
from conftest import BagOfWords, tiny_model


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_token_scores_equal_a_hand_computation_with_minilm():
    from adl_jax.models.encoders import load_encoder

    encoder = load_encoder()
    texts = ["I baked a chocolate cake for her birthday.", "The bread rises in a hot oven before baking."]
    tokens = [" cake", "Bake", "tax", " ,", " cake"]
    reference = reference_embedding(encoder, texts)
    centroid = _unit(_unit(encoder.encode(texts)).mean(0))
    np.testing.assert_allclose(reference, centroid, rtol=1e-5, atol=1e-7)
    words = _unit(encoder.encode(["cake", "Bake", "tax"]))
    expected = [words[0] @ centroid, words[1] @ centroid, words[2] @ centroid, -1.0, words[0] @ centroid]
    scores = token_scores(encoder, tokens, reference)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert scores[0] > scores[2] + 0.1 and scores[1] > scores[2] + 0.1  # baking words sit closer than 'tax'
    # the data's own frequent words (matched as the overlap measure matches them) score 1, the highest
    with_frequent = token_scores(encoder, tokens, reference, frequent=["tax"])
    np.testing.assert_allclose(with_frequent, [*expected[:2], 1.0, -1.0, expected[4]], rtol=1e-5, atol=1e-6)
    # no data: the description is the reference
    only = reference_embedding(encoder, None, "baking cakes")
    np.testing.assert_allclose(only, _unit(encoder.encode(["baking cakes"])[0]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="finetuning texts or a description"):
        reference_embedding(encoder, [], None)


def test_null_and_p_values_exact_on_synthetic_scores():
    """Three controls, two tokens each; thresholds are the null's 0.8 quantile (linear interpolation)."""
    null_ll = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.9]])  # sorted 0.1 .. 0.9: the 0.8 quantile is 0.5
    observed = {"logit_lens": [[0.6, 0.95], [0.1, 0.55]], "patchscope": [[0.0, 0.2], [2.0, 0.5]]}
    null = {
        "logit_lens": [null_ll, null_ll],
        "patchscope": [np.array([[0, 0], [0, 0], [0, 1.0]]), np.ones((3, 2))],  # thresholds 0 and 1
    }
    out = significance(observed, null, quantile=0.8, alpha=0.05)
    p0, p1 = out["positions"]
    assert p0["logit_lens"]["threshold"] == pytest.approx(0.5) and p0["patchscope"]["threshold"] == 0.0
    assert (p0["logit_lens"]["relevant"], p0["patchscope"]["relevant"]) == (2, 1)
    # null shares: logit lens (0, 0, 1/2), patchscope (0, 0, 1/2); the statistic is their maximum
    assert p0["statistic"] == 1.0 and p0["p_value"] == pytest.approx(1 / 4) and p0["p_adjusted"] == 0.5
    assert p0["logit_lens"]["p_value"] == pytest.approx(1 / 4) and p0["patchscope"]["p_value"] == pytest.approx(2 / 4)
    assert p0["null"] == pytest.approx({"q05": 0.0, "q50": 0.0, "q95": 0.45})
    assert p1["patchscope"]["relevant"] == 1 and p1["statistic"] == 0.5 and p1["p_value"] == pytest.approx(2 / 4)
    assert not out["significant"] and out["significant_positions"] == []
    # 99 controls that score nothing against a fully relevant position: p = 1/100, 2/100 after Bonferroni
    strong = significance(
        {"logit_lens": [[1.0] * 4, [0.0] * 4], "patchscope": [[0.0] * 4] * 2},
        {"logit_lens": [np.zeros((99, 4))] * 2, "patchscope": [np.zeros((99, 4))] * 2},
    )
    assert strong["positions"][0]["p_value"] == pytest.approx(0.01) and strong["positions"][1]["p_value"] == 1.0
    assert strong["significant_positions"] == [0] and strong["positions"][0]["p_adjusted"] == pytest.approx(0.02)
    assert p_value(0.3, np.array([0.1, 0.3, 0.5])) == pytest.approx(3 / 4)


def test_profile_significance_exact_on_synthetic_scores():
    """Two layers x one position, two tokens, three draws: thresholds per cell, each draw's maximum over cells
    and lenses, and every p-value against those maxima."""
    null = {  # (N=3, L=2, k=1, top=2): layer 0's null tokens 0.1 .. 0.6, layer 1's 0 or 1
        "logit_lens": np.array([[[[0.1, 0.2]], [[0, 0]]], [[[0.3, 0.4]], [[0, 0]]], [[[0.5, 0.6]], [[0, 1.0]]]]),
        "patchscope": np.zeros((3, 2, 1, 2)),
    }
    observed = {"logit_lens": np.array([[[0.55, 0.7]], [[0.0, 0.5]]]), "patchscope": np.zeros((2, 1, 2))}
    out = profile_significance(observed, null, [4, 9], quantile=0.8, alpha=0.3)
    layer0, layer1 = (row["positions"][0] for row in out["layers"])
    assert layer0["logit_lens"]["threshold"] == pytest.approx(0.5) and layer1["logit_lens"]["threshold"] == 0.0
    assert (layer0["logit_lens"]["relevant"], layer1["logit_lens"]["relevant"]) == (2, 1)
    # draws' shares: layer 0 (0, 0, 1/2), layer 1 (0, 0, 1/2): maxima (0, 0, 1/2)
    assert layer0["statistic"] == 1.0 and layer0["p_adjusted"] == pytest.approx(1 / 4)
    assert layer1["statistic"] == 0.5 and layer1["p_adjusted"] == pytest.approx(2 / 4)
    assert out["p_value"] == pytest.approx(1 / 4) and out["best"] == {"layer": 4, "position": 0, "statistic": 1.0}
    assert out["significant"] and out["significant_layers"] == [4] and out["draws"] == 3
    assert out["null"] == pytest.approx({"q05": 0.0, "q50": 0.0, "q95": 0.45})


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3_text")


def test_patchscope_each_reads_as_patchscope(model):
    """The batched reading of many vectors (chunks of 16, the last one padded) gives each vector's own
    patchscope. (The chunk shape is the one the tests below compile as well.)"""
    vectors = np.random.RandomState(0).randn(17, model.cfg.hidden_size).astype(np.float32)
    norms = np.linspace(2.0, 30.0, 17)
    each = patchscope_each(model.params, model.cfg, model.tokenizer, vectors, 1, norms)
    assert len(each) == 17
    for v, norm, got in zip(vectors, norms, each):
        want = patchscope(model.params, model.cfg, model.tokenizer, v[None], 1, norm, scales=(1.0,))[0][1.0]
        assert got.ids == want.ids
        np.testing.assert_allclose(got.probs, want.probs, rtol=1e-5, atol=1e-7)


DATA_WORDS = (100, 101, 102, 103)  # a 'finetuning dataset' of four words of the tiny vocabulary
CONTROLS = 39  # with the two means: 41 controls, p = 1/42 at best


def _read(model, delta, seed):
    """An ADL result for a given delta (1, D) at layer 1, with random stand-ins for the two means."""
    rng = np.random.RandomState(1000 + seed)
    means = rng.randn(2, 1, model.cfg.hidden_size).astype(np.float32)
    diff = DiffResult(delta.astype(np.float32), means[0], means[1], 10.0, {"layer": 1})
    res = ADLResult(diff, read_lenses(model, model, diff), out=None)
    return semantic_relevance(
        model,
        res,
        BagOfWords(),
        finetune_texts=[" ".join(f"w{w}" for w in DATA_WORDS)] * 5,
        settings=RelevanceSettings(controls_per_position=CONTROLS, seed=seed),
    )


def test_a_vector_of_the_datas_token_embeddings_is_significant(model):
    embed = np.asarray(model.params["embed"], np.float32)
    out = _read(model, embed[list(DATA_WORDS)].sum(0)[None] * 10, seed=0)
    row = out["positions"][0]
    assert out["controls"] == {"random": CONTROLS, "base_mean": 1, "ft_mean": 1}
    assert row["logit_lens"]["relevant"] == len(DATA_WORDS)  # exactly the data's words score above the null
    assert {t for t, _ in row["logit_lens"]["tokens"][:4]} == {f"w{w}" for w in DATA_WORDS}
    assert row["p_value"] == pytest.approx(1 / (CONTROLS + 3)) and out["significant_positions"] == [0]


def test_random_vectors_are_significant_at_most_at_the_stated_rate(model):
    """Under the null (delta itself a random direction) P(p < 0.05) <= 0.05: over 20 seeds, 1 expected;
    more than 3 would happen by chance with probability 1.6%."""
    rng = np.random.RandomState(7)
    hits = [_read(model, rng.randn(1, model.cfg.hidden_size), seed)["significant"] for seed in range(20)]
    assert sum(hits) <= 3, hits
    itself = _read(model, np.zeros((1, model.cfg.hidden_size)), 0)  # a model against itself: nothing to read
    assert itself["positions"][0]["p_value"] == 1.0 and not itself["significant"]


def test_placebo_deltas_join_the_null(model, tmp_path):
    from adl_jax import io
    from adl_jax.errors import InputError
    from adl_jax.judging.relevance import placebo_deltas
    from adl_jax.method.diff import META

    d = model.cfg.hidden_size
    placebo = np.random.RandomState(3).randn(2, d).astype(np.float32)
    DiffResult(placebo, placebo, placebo, 1.0, {}).save(tmp_path)
    io.write_json(tmp_path / META, {"layer": 1})
    np.testing.assert_array_equal(placebo_deltas([tmp_path, tmp_path], d), np.concatenate([placebo, placebo]))
    with pytest.raises(InputError, match="placebo run .* 64 dimensions, this audit's model 65"):
        placebo_deltas([tmp_path], d + 1)
    with pytest.raises(InputError, match="no finished delta run"):
        placebo_deltas([tmp_path / "absent"], d)
    delta = np.random.RandomState(4).randn(1, d)
    diff = DiffResult(delta.astype(np.float32), placebo[:1], placebo[1:], 10.0, {"layer": 1})
    res = ADLResult(diff, read_lenses(model, model, diff), out=None)
    settings = RelevanceSettings(controls_per_position=CONTROLS)
    out = semantic_relevance(model, res, BagOfWords(), description="w100 w101", placebo=placebo, settings=settings)
    assert out["controls"] == {"random": CONTROLS, "base_mean": 1, "ft_mean": 1, "placebo": 2}
    assert out["reference"] == "description"


PROFILE_DRAWS = 39  # p = 1/40 at best


def _profile(model, delta_layers, seed):
    """The semantic layer profile of a run whose delta at layers 0-2 (3, 1, D) is `delta_layers`."""
    from adl_jax.experiments.layer_profile import layer_profile

    rng = np.random.RandomState(1000 + seed)
    means = rng.randn(2, 1, model.cfg.hidden_size).astype(np.float32)
    norms = np.array([5.0, 10.0, 20.0], np.float32)
    diff = DiffResult(delta_layers[1], means[0], means[1], 10.0, {"layer": 1, "layers": [0, 1, 2]})
    diff.delta_layers, diff.ft_norm_layers = delta_layers.astype(np.float32), norms
    res = ADLResult(diff, read_lenses(model, model, diff), out=None)
    profile = layer_profile(
        model,
        res,
        encoder=BagOfWords(),
        finetune_texts=[" ".join(f"w{w}" for w in DATA_WORDS)] * 5,
        settings=RelevanceSettings(profile_draws=PROFILE_DRAWS, seed=seed),
    )
    return profile["semantic_significance"], profile


def test_a_profile_with_the_datas_direction_at_one_layer_is_significant_there(model):
    """Layers 0 and 1 random, layer 2 the data's own token embeddings: the profile is significant at layer 2,
    p = 1/40; every cell's count is its tokens above its threshold, as the profile's rows show it."""
    rng = np.random.RandomState(5)
    embed = np.asarray(model.params["embed"], np.float32)
    delta = rng.randn(3, 1, model.cfg.hidden_size)
    delta[2, 0] = embed[list(DATA_WORDS)].sum(0) * 10
    sig, profile = _profile(model, delta, seed=0)
    assert sig["p_value"] == pytest.approx(1 / (PROFILE_DRAWS + 1)) and sig["best"]["layer"] == 2
    assert 2 in sig["significant_layers"] and profile["best_by_measure"]["semantic"]["layer"] == 2
    top = profile["layers"][2]["positions"][0]["logit_lens"]["tokens"]
    assert {t for t in top[:4]} == {f"w{w}" for w in DATA_WORDS}
    reference = reference_embedding(BagOfWords(), [" ".join(f"w{w}" for w in DATA_WORDS)] * 5)
    for row, sig_row in zip(profile["layers"], sig["layers"]):
        for lens in ("logit_lens", "patchscope"):
            cell, sig_cell = row["positions"][0][lens], sig_row["positions"][0][lens]
            by_hand = np.sum(token_scores(BagOfWords(), cell["tokens"], reference) > sig_cell["threshold"])
            assert cell["semantic"] == sig_cell["relevant"] == by_hand
    assert sig["layers"][2]["positions"][0]["logit_lens"]["relevant"] >= 4


def test_random_profiles_are_significant_at_most_at_the_stated_rate(model):
    """Under the null (delta a random direction at every layer) P(p < 0.05) <= 0.05 for the whole profile,
    best layer included: over 20 seeds, 1 expected; more than 3 happens by chance with probability 1.6%.
    A model against itself (zero delta everywhere) gives p = 1."""
    rng = np.random.RandomState(11)
    hits = [_profile(model, rng.randn(3, 1, model.cfg.hidden_size), seed)[0]["significant"] for seed in range(20)]
    assert sum(hits) <= 3, hits
    itself, _ = _profile(model, np.zeros((3, 1, model.cfg.hidden_size)), 0)
    assert itself["p_value"] == 1.0 and itself["significant_layers"] == []
