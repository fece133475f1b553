"""Steering: alpha 0 is unsteered generation, the search's batched lookahead walks the right tree."""

import jax
import numpy as np
import pytest

import adl_jax.judging.alpha_search as alpha_search
import adl_jax.judging.verdicts as verdicts
import adl_jax.method.steer as steer
from adl_jax.models.generate import generate
from conftest import tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model("gemma3_text", tmp_path_factory.mktemp("m"))


def test_alpha_zero_is_unsteered_and_alphas_differ(model, rng):
    ids = model.tokenizer("w5 w6 w7")["input_ids"]
    vector = steer.steering_vector(rng.randn(model.cfg.hidden_size), 30.0)
    assert np.isclose(np.linalg.norm(vector), 30.0)
    key = jax.random.key(7)
    texts = steer.steered_samples(
        model, ids, vector, [0.0, 5.0], layer=1, samples=3, new_tokens=10, temperature=1.2, key=key
    )
    plain = generate(model.params, model.cfg, [ids] * 6, max_new_tokens=10, key=key, temperature=1.2)
    decoded = [
        model.tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(plain.tokens.tolist(), plain.lengths.tolist())
    ]
    assert texts[0] == decoded[:3]
    assert texts[1] != decoded[3:]


def test_lookahead_alphas_are_the_next_three_levels():
    assert alpha_search._lookahead_alphas(0, 100, 3) == [50, 25, 75, 12.5, 37.5, 62.5, 87.5]


def test_search_finds_the_coherence_edge_with_batched_lookahead(model, monkeypatch):
    calls = []

    def fake_batch(model, requests, *, samples, **kw):
        calls.append([list(r.alphas) for r in requests])
        return [[[f"alpha {a}"] * samples for a in r.alphas] for r in requests]

    edge = 37.3
    judge = lambda prompts, texts: [
        verdicts.COHERENT if float(t.split()[1]) <= edge else verdicts.INCOHERENT for t in texts
    ]
    monkeypatch.setattr(alpha_search, "steered_batch", fake_batch)
    settings = alpha_search.SteeringSettings()
    res = alpha_search.find_alpha(
        model, np.ones(model.cfg.hidden_size), judge, settings, layer=1, key=jax.random.key(0)
    )
    first = res.thresholds[steer.STEERING_PROMPTS[0]]
    assert first <= edge < first + 100 / 2**12
    assert [[len(r) for r in c] for c in calls[:4]] == [[7]] * 4  # 12 steps = 4 batched calls of 7 alphas
    # 6 steps for each other prompt, bounded by 2x the first: both prompts' searches in each of 2 calls
    assert [[len(r) for r in c] for c in calls[4:]] == [[7, 7]] * 2 and max(
        max(map(max, c)) for c in calls[4:]
    ) < 2 * first
    assert np.isclose(res.alpha, np.mean(list(res.thresholds.values())))
    assert len(res.paths[steer.STEERING_PROMPTS[1]]) == 6


def test_pass_rule_ignores_unknown():
    C, I, U = verdicts.COHERENT, verdicts.INCOHERENT, verdicts.UNKNOWN
    assert verdicts.passes([C, C, C, I, U, U], 0.75)
    assert not verdicts.passes([C, C, I, I], 0.75)
    assert not verdicts.passes([U, U], 0.75)


def test_alpha_search_shows_a_bar_of_its_steps(model, monkeypatch, capsys):
    """The search takes minutes per step on a CPU: a bar counts the steps of every prompt (12 + 6 + 6)."""
    fake = lambda model, requests, *, samples, **kw: [[[f"alpha {a}"] * samples for a in r.alphas] for r in requests]
    monkeypatch.setattr(alpha_search, "steered_batch", fake)
    judge = lambda prompts, texts: [verdicts.COHERENT] * len(texts)
    settings = alpha_search.SteeringSettings()
    search = dict(layer=1, key=jax.random.key(0))
    alpha_search.find_alpha(model, np.ones(model.cfg.hidden_size), judge, settings, progress=True, **search)
    err = capsys.readouterr().err
    assert "alpha search" in err and "24/24" in err
    alpha_search.find_alpha(model, np.ones(model.cfg.hidden_size), judge, settings, **search)
    assert capsys.readouterr().err == ""  # quiet unless asked


def test_searches_in_lockstep_are_the_searches_alone(model, rng):
    """Two vectors' searches over three prompts share their batches and judge calls, yet each walks the tree
    it walks alone: the same alphas, texts and verdicts (the tiny model's rows round alike in any batch)."""
    words = lambda t: sum(int(w[1:]) for w in t.split() if w[1:].isdigit())
    judge = lambda prompts, texts: [verdicts.COHERENT if words(t) % 3 == 0 else verdicts.INCOHERENT for t in texts]
    settings = alpha_search.SteeringSettings(
        high=8.0, first_steps=4, other_steps=3, samples=2, new_tokens=8, pass_rate=0.5
    )
    vectors = [steer.steering_vector(rng.randn(model.cfg.hidden_size), 30.0) for _ in range(2)]
    keys = jax.random.split(jax.random.key(4), 2)
    search = dict(layer=1, prompts=("w5 w6", "w9 w10 w11", "w40"))
    together = alpha_search.find_alphas(model, vectors, judge, settings, keys=keys, **search)
    alone = [alpha_search.find_alpha(model, v, judge, settings, key=k, **search) for v, k in zip(vectors, keys)]
    assert [t.to_json() for t in together] == [a.to_json() for a in alone]
    assert together[0].to_json() != together[1].to_json()
    steps = [s for t in together for path in t.paths.values() for s in path]
    assert {s.passed for s in steps} == {True, False}  # the judge both passed and failed alphas
