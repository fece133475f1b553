"""Generation against transformers (greedy, EOS stops, a steering hook, the top-p warper) and cached
decoding against the decoder's own full forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from adl_jax.models.generate import PROPOSALS, _sample_full, generate, nucleus_sample, top_p_filter
from adl_jax.models.transformer import Intervention, KVCache, forward
from adl_jax.models.weights import load_hf_dir
from conftest import FAMILIES, left_padded_batch, tiny_hf_model

NEW = 20
jit_forward = jax.jit(forward, static_argnames="cfg")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (torch model, cfg, params), each built once for the whole module."""
    built = {}

    def get(family):
        if family not in built:
            path = tmp_path_factory.mktemp(family)
            built[family] = (tiny_hf_model(family, path), *load_hf_dir(path))
        return built[family]

    return get


def prompts_of(rng, lengths=(9, 4, 6)):
    return [rng.randint(3, 128, n).tolist() for n in lengths]


def left_pad(prompts):
    """Token ids and attention mask, left-padded with 0, built independently of adl_jax."""
    lengths = np.array([len(p) for p in prompts])
    width = lengths.max()
    ids = np.array([[0] * (width - len(p)) + p for p in prompts])
    return ids, (np.arange(width) >= width - lengths[:, None]).astype(np.int64)


def hf_generate(model, prompts, **kw):
    """transformers' greedy generate on the left-padded prompts; new tokens padded with 0 to NEW columns."""
    ids, mask = map(torch.tensor, left_pad(prompts))
    with torch.no_grad():
        new = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=0, **kw)
    new = new[:, ids.shape[1] :].numpy()
    return np.pad(new, ((0, 0), (0, NEW - new.shape[1])))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers(tiny, family, rng):
    model, cfg, params = tiny(family)
    prompts = prompts_of(rng)
    got = generate(params, cfg, prompts, max_new_tokens=NEW)
    np.testing.assert_array_equal(got.tokens, hf_generate(model, prompts))


def test_eos_stops_and_masks_like_transformers(tiny, rng):
    model, cfg, params = tiny("qwen3")
    prompts = prompts_of(rng)
    free = np.asarray(generate(params, cfg, prompts, max_new_tokens=NEW, eos_ids=()).tokens)
    eos = sorted({int(free[0, 3]), int(free[1, 5]), int(free[2, 7])})  # every row stops by step 7
    ids, mask = left_pad(prompts)  # the (tokens, valid) form of the same prompts
    got = generate(params, cfg, (ids, mask), max_new_tokens=NEW, eos_ids=eos)
    np.testing.assert_array_equal(got.tokens, hf_generate(model, prompts, eos_token_id=eos))
    hits = np.isin(free, eos)
    lengths = hits.argmax(1) + 1
    np.testing.assert_array_equal(got.lengths, lengths)
    np.testing.assert_array_equal(got.mask, np.arange(NEW) < lengths[:, None])
    assert (np.asarray(got.tokens)[~np.asarray(got.mask)] == cfg.pad_token_id).all()


@pytest.mark.parametrize("family,scan", [(f, False) for f in FAMILIES] + [("gemma3_text", True)])
def test_cached_decode_matches_full_forward(tiny, family, scan, rng):
    _, cfg, params = tiny(family)
    cfg = dataclasses.replace(cfg, scan_layers=scan)
    tokens, valid, _ = left_padded_batch(rng, cfg.vocab_size)  # (3, 12), rows of 12, 8, 5 valid tokens
    more = rng.randint(3, cfg.vocab_size, (3, 8))
    whole, whole_valid = np.concatenate([tokens, more], 1), np.pad(valid, ((0, 0), (0, 8)), constant_values=True)
    full = jit_forward(params, whole, cfg, valid=whole_valid)
    step = jit_forward(params, tokens, cfg, valid=valid, cache=KVCache.empty(cfg, 3, 20))
    cached = [step.logits[:, -1]]
    for t in range(8):
        step = jit_forward(params, more[:, t : t + 1], cfg, cache=step.cache)
        cached.append(step.logits[:, 0])
    np.testing.assert_allclose(np.stack(cached, 1), full.logits[:, 11:], atol=1e-4)


def test_per_row_steering_matches_torch_hook(tiny, rng):
    model, cfg, params = tiny("gemma2")
    prompts, layer = prompts_of(rng), 1
    direction = rng.randn(cfg.hidden_size).astype(np.float32)
    vectors = np.array([0.0, 3.0, 12.0], np.float32)[:, None] * direction / np.linalg.norm(direction)
    steer = Intervention(layer=layer, mode="add", vector=jnp.asarray(vectors))
    got = generate(params, cfg, prompts, max_new_tokens=NEW, interventions=(steer,))

    def hook(module, args, output):  # adds each row's vector at every position of every forward call
        hidden = output[0] if isinstance(output, tuple) else output
        hidden += torch.tensor(vectors)[:, None, :]
        return output

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        ref = hf_generate(model, prompts)
    finally:
        handle.remove()
    np.testing.assert_array_equal(got.tokens, ref)
    unsteered = generate(params, cfg, prompts, max_new_tokens=NEW).tokens
    np.testing.assert_array_equal(got.tokens[0], unsteered[0])
    assert (got.tokens[2] != unsteered[2]).any()  # the hook comparison is sensitive to steering


def test_sampling_is_reproducible_and_zero_steering_exact(tiny, rng):
    _, cfg, params = tiny("llama")
    prompts = prompts_of(rng)

    def sample(seed, temperature=1.0, **kw):
        key = jax.random.key(seed)
        return np.asarray(generate(params, cfg, prompts, max_new_tokens=NEW, key=key, temperature=temperature, **kw)[0])

    first = sample(1)
    np.testing.assert_array_equal(sample(1), first)
    assert (sample(2) != first).mean() > 0.5
    zero = Intervention(layer=1, mode="add", vector=jnp.zeros((3, cfg.hidden_size)))
    np.testing.assert_array_equal(sample(1, interventions=(zero,)), first)
    greedy = generate(params, cfg, prompts, max_new_tokens=NEW).tokens
    np.testing.assert_array_equal(sample(1, top_p=1e-6), greedy)
    # Near-uniform sampling: fresh noise every step gives ~19 distinct tokens of 20; reused noise gives 1.
    assert min(len(set(row)) for row in sample(1, temperature=1e4)) > 12


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_groups_sample_as_their_own_calls(tiny, rng, top_p):
    """Two calls' prompts in one batch, each group with its own key, give token for token the two calls'."""
    _, cfg, params = tiny("llama")
    first, second = prompts_of(rng), prompts_of(rng, (5, 11))
    keys = jax.random.split(jax.random.key(3), 2)
    kw = dict(max_new_tokens=NEW, temperature=1.3, top_p=top_p)
    alone = [np.asarray(generate(params, cfg, p, key=k, **kw).tokens) for p, k in zip((first, second), keys)]
    together = np.asarray(generate(params, cfg, first + second, key=keys, groups=(3, 2), **kw).tokens)
    np.testing.assert_array_equal(together, np.concatenate(alone))
    assert (alone[0][:2] != alone[1]).mean() > 0.5  # the groups' streams differ
    with pytest.raises(ValueError, match="one per key"):
        generate(params, cfg, first + second, key=keys, groups=(4, 2), **kw)


@pytest.mark.parametrize("top_p", [0.9, 0.2])
def test_nucleus_groups_fall_back_alone(top_p, rng):
    """A group of flat rows takes the rejection sampler (and at top_p 0.2 the bisection) by itself: the
    peaked group next to it samples the tokens it samples alone, and so does the flat group."""
    vocab, prefilter, rows = 1300, 32, 8
    flat = np.repeat((rng.randn(1, vocab) * 0.3).astype(np.float32), rows, 0)
    peaked = np.repeat((rng.randn(1, vocab) * 6.0).astype(np.float32), rows, 0)
    u = jnp.asarray(rng.uniform(1e-6, 1, (2 * rows, 1 + PROPOSALS)), jnp.float32)
    sample = jax.jit(nucleus_sample, static_argnames=("prefilter", "groups"))
    both = np.asarray(sample(jnp.asarray(np.concatenate([flat, peaked])), top_p, u, prefilter, (rows, rows)))
    alone = [
        sample(jnp.asarray(x), top_p, u[i * rows : (i + 1) * rows], prefilter) for i, x in enumerate((flat, peaked))
    ]
    np.testing.assert_array_equal(both, np.concatenate(alone))
    if top_p == 0.9:  # (at 0.2 the peaked nucleus is one token: any sampler gives it)
        one_group = np.asarray(sample(jnp.asarray(np.concatenate([flat, peaked])), top_p, u, prefilter))
        assert (one_group[rows:] != both[rows:]).any()  # as one group, the peaked rows would be rejection-sampled


def test_samples_follow_tempered_nucleus(tiny):
    """The first sampled token over many rows is distributed as transformers' softmax(top_p(logits / T))."""
    model, cfg, params = tiny("llama")
    prompt, n, temperature, top_p = [5, 9, 17, 40], 4000, 0.25, 0.8
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1] / temperature
    probs = torch.softmax(TopPLogitsWarper(top_p)(None, logits), -1)[0].numpy()
    key = jax.random.key(0)
    got = generate(params, cfg, [prompt] * n, max_new_tokens=1, key=key, temperature=temperature, top_p=top_p)
    freq = np.bincount(np.asarray(got.tokens[:, 0]), minlength=cfg.vocab_size) / n
    assert freq[probs == 0].sum() == 0
    assert 0.5 * np.abs(freq - probs).sum() < 0.08  # sampling noise ~0.03; T inverted or top-p ignored >= 0.2


@pytest.mark.parametrize("top_p", [0.2, 0.7, 0.95, 1.0])
def test_top_p_filter_matches_transformers_warper(top_p, rng):
    logits = rng.randn(4, 5000).astype(np.float32) * 3
    ref = TopPLogitsWarper(top_p)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(np.asarray(top_p_filter(jnp.asarray(logits), top_p)), ref)


def test_nucleus_sample_with_the_prefilter_is_the_full_vocabulary_nucleus(rng):
    """Quantiles on an even grid land on each token in proportion to its probability (to 1/n), so the
    sampler's distribution is checked exactly against transformers' temperature + top-p warpers, with the
    32-token prefilter holding the nucleus (a vocabulary of 1300: not whole blocks of 512)."""
    n, vocab, temperature, top_p, prefilter = 4000, 1300, 1.2, 0.95, 32
    logits = (rng.randn(vocab) * 6.0).astype(np.float32)
    probs, full = _warped(logits, temperature, top_p)
    top = np.sort(full)[::-1][:prefilter]
    assert top[top > top[-1]].sum() >= top_p  # the regime the case claims
    u = np.repeat((np.arange(n) + 0.5)[:, None] / n, 1 + PROPOSALS, axis=1)
    scaled = jnp.asarray(np.repeat(logits[None] / temperature, n, 0))

    @jax.jit
    def draws(x, u):  # the sampler, and the same quantiles of the whole-vocabulary nucleus without the prefilter
        return nucleus_sample(x, top_p, u, prefilter), _sample_full(top_p_filter(x, top_p), u[:, :1])[:, 0]

    tokens, whole = map(np.asarray, draws(scaled, jnp.asarray(u)))
    freq = np.bincount(tokens, minlength=vocab) / n
    assert freq[probs == 0].sum() == 0
    np.testing.assert_allclose(freq, probs, atol=1 / n + 1e-6)
    assert (tokens == whole).mean() > 0.999


def _warped(logits, temperature, top_p):
    """transformers' nucleus distribution of softmax(logits / T) (float64), and the uncut one."""
    tempered = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits[None]))
    cut = torch.softmax(TopPLogitsWarper(top_p)(None, tempered), -1)[0].double().numpy()
    return cut, torch.softmax(tempered, -1)[0].double().numpy()


def _quantile_token(probs, u):
    """The token at quantile u of `probs` in vocabulary order (float64)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, u * cdf[-1]), np.flatnonzero(probs > 0)[-1]))


@pytest.mark.parametrize("top_p", [0.9, 0.2])  # at 0.2 most rows reject every draw: the bisection's turn
def test_nucleus_sample_of_flat_rows_is_the_nucleus_by_rejection(top_p, rng):
    """Flat rows, where the 32-token prefilter cannot hold the nucleus. Each row's token is the first of
    its whole-distribution draws (at u[:, :PROPOSALS]) that transformers' warper keeps, else (when any row
    has none) the nucleus at u[:, PROPOSALS]: checked draw by draw against that float64 reference. Then the
    frequencies over many rows against the nucleus distribution (sampling noise ~0.02; the uncut
    distribution would be 1 - top_p away)."""
    vocab, temperature, prefilter = 1300, 1.2, 32
    logits = (rng.randn(vocab) * 0.3).astype(np.float32)
    probs, full = _warped(logits, temperature, top_p)
    top = np.sort(full)[::-1][:prefilter]
    assert top[top > top[-1]].sum() < top_p  # the prefilter cannot hold it
    sample = jax.jit(lambda x, u: nucleus_sample(x, top_p, u, prefilter))

    rows = 64
    u = rng.uniform(1e-6, 1, (rows, 1 + PROPOSALS))
    got = np.asarray(sample(jnp.asarray(np.repeat(logits[None] / temperature, rows, 0)), jnp.asarray(u, jnp.float32)))
    drawn = [[_quantile_token(full, x) for x in row[:PROPOSALS]] for row in u]
    kept = [next((t for t in row if probs[t] > 0), None) for row in drawn]
    if None in kept:  # some row rejected every draw: the whole batch takes the nucleus at the unused uniform
        want = [_quantile_token(probs, row[PROPOSALS]) for row in u]
    else:
        want = kept
    assert (top_p == 0.2) == (None in kept)  # both branches are exercised
    assert (got == np.array(want)).mean() > 0.95  # float32 vs float64 at a quantile's boundary

    n = 100_000
    keys = jax.random.split(jax.random.key(0), 10)
    scaled = jnp.asarray(np.repeat(logits[None] / temperature, n // 10, 0))
    tokens = np.concatenate([np.asarray(sample(scaled, jax.random.uniform(k, (n // 10, 1 + PROPOSALS)))) for k in keys])
    freq = np.bincount(tokens, minlength=vocab) / n
    assert freq[probs == 0].sum() == 0
    assert 0.5 * np.abs(freq - probs).sum() < 0.05


def test_sampling_without_a_nucleus_is_the_whole_distribution(rng):
    """top_p 1, the steering search's setting: the whole-vocabulary sampler, exact on a quantile grid."""
    n, vocab = 4000, 1300
    logits = (rng.randn(vocab) * 0.3).astype(np.float32)
    probs = _warped(logits, 1.0, 1.0)[1]
    u = jnp.asarray((np.arange(n) + 0.5)[:, None] / n)
    tokens = np.asarray(jax.jit(_sample_full)(jnp.asarray(np.repeat(logits[None], n, 0)), u))[:, 0]
    np.testing.assert_allclose(np.bincount(tokens, minlength=vocab) / n, probs, atol=1 / n + 1e-6)


def test_refuses_bad_input(tiny):
    _, cfg, params = tiny("llama")
    per_position = Intervention(layer=1, mode="add", vector=jnp.zeros((1, 4, cfg.hidden_size)))
    with pytest.raises(ValueError, match="per-position arrays"):
        generate(params, cfg, [[5, 6, 7, 8]], max_new_tokens=3, interventions=(per_position,))
    with pytest.raises(ValueError, match="left-padded"):
        generate(params, cfg, (np.array([[5, 6, 0]]), np.array([[True, True, False]])), max_new_tokens=3)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        generate(params, cfg, [[5, 6]], max_new_tokens=3, temperature=1.0)
