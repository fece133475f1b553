"""Logit lens and patchscope against PyTorch references (a forward hook that replaces the residual)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from adl_jax.method.lens import (
    PATCHSCOPE_SCALES,
    TokenScores,
    _kth_largest,
    _top_k,
    gradable,
    logit_lens,
    patchscope,
    patchscope_each,
    select_scale,
)
from adl_jax.models.batching import pad_batch
from adl_jax.models.transformer import Intervention, forward
from adl_jax.models.weights import load_hf_dir
from conftest import tiny_hf_model, tiny_model, tiny_tokenizer

PROMPTS = ("w5 w9 w5 w9 w7", "w11 w4 w11 w4 w7 w8", "w20 w21 w7")


def test_scale_grid_is_the_papers():
    """The paper's rule: 0.5 to 2.0 by 0.1, then 3, 4, 5, 10, 20, and 40 to 200 by 20 (30 scales)."""
    fine = [tenths / 10 for tenths in range(5, 21)]
    coarse = [3, 4, 5, 10, 20] + list(range(40, 201, 20))
    assert PATCHSCOPE_SCALES == tuple(float(x) for x in fine + coarse) and len(PATCHSCOPE_SCALES) == 30


def test_logit_lens_matches_torch(tmp_path, rng):
    model = tiny_hf_model("gemma2", tmp_path)  # gemma2: final soft-cap and (1+w) norm
    cfg, params = load_hf_dir(tmp_path)
    vectors = rng.randn(3, cfg.hidden_size).astype(np.float32) * 5
    got = logit_lens(params, cfg, vectors, tiny_tokenizer(), top=10)
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(torch.tensor(vectors)))
        logits = torch.tanh(logits / 3.0) * 3.0
        ref = torch.softmax(logits, -1).numpy()
    for row, scores in zip(ref, got):
        order = np.argsort(-row)[:10]
        assert scores.ids == order.tolist()
        np.testing.assert_allclose(scores.probs, row[order], rtol=1e-5)


def test_patchscope_matches_torch_hook(tmp_path, rng):
    model = tiny_hf_model("gemma3_text", tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    tok = tiny_tokenizer()
    layer, norm, keep, scales = 1, 7.0, 40, (0.5, 2.0, 20.0)
    vector = rng.randn(cfg.hidden_size).astype(np.float32)
    got = patchscope(params, cfg, tok, vector[None], layer, norm, scales=scales, prompts=PROMPTS, keep=keep, top=5)[0]

    for scale in scales:
        patched = torch.tensor(vector / np.linalg.norm(vector) * norm * scale)

        def hook(module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            output[:, -1] = patched
            return output

        handle = model.model.layers[layer].register_forward_hook(hook)
        probs = []
        with torch.no_grad():
            for p in PROMPTS:
                ids = torch.tensor([tok(p)["input_ids"]])
                probs.append(torch.softmax(model(ids).logits[0, -1], -1).numpy())
        handle.remove()
        probs = np.stack(probs)
        in_all = np.all(probs >= np.sort(probs, axis=1)[:, -keep][:, None], axis=0)
        mean = np.where(in_all, probs.mean(0), 0.0)
        order = np.argsort(-mean)[:5]
        assert got[scale].ids == order.tolist(), scale
        np.testing.assert_allclose(got[scale].probs, mean[order], rtol=1e-4)


def _whole_prompt_reading(model, vector, layer, norm, keep, top):
    """The patchscope read by running the whole prompts through `forward`, the patch at each one's last token."""
    tokens, valid = pad_batch([model.tokenizer(p)["input_ids"] for p in PROMPTS])
    patch = np.zeros(tokens.shape, np.float32)
    patch[:, -1] = 1.0
    edit = Intervention(layer, "replace", jnp.asarray(vector / np.linalg.norm(vector) * norm), jnp.asarray(patch))
    logits = forward(model.params, jnp.asarray(tokens), model.cfg, valid=jnp.asarray(valid), interventions=(edit,))
    probs = np.asarray(jax.nn.softmax(logits.logits[:, -1], axis=-1))
    in_all = np.all(probs >= np.sort(probs, axis=1)[:, -keep][:, None], axis=0)
    mean = np.where(in_all, probs.mean(0), 0.0)
    order = np.argsort(-mean)[:top]
    assert mean[order[-1]] > 0  # every top token is in all prompts' top-`keep`: no tie at 0 to order
    return order.tolist(), mean[order]


def _same_reading(got: TokenScores, ids, probs):
    assert got.ids == ids
    np.testing.assert_allclose(got.probs, probs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma3_text"])
def test_patchscope_runs_the_prompts_prefix_once(family, rng):
    """The prompts' tokens before the last run once into a KV cache and only the last token runs per patch:
    the same reading as the whole prompts (of different lengths, longer than the sliding windows) run with the
    patch, for `patchscope` over scales and for `patchscope_each` with each vector at its own layer and norm
    (chunks of 2, the last one padded)."""
    model, keep, top = tiny_model(family), 64, 10
    vectors = rng.randn(5, model.cfg.hidden_size).astype(np.float32)
    params, cfg, tok = model.params, model.cfg, model.tokenizer
    scales = (0.5, 3.0, 20.0)
    read = patchscope(params, cfg, tok, vectors[:2], 1, 4.0, scales=scales, prompts=PROMPTS, keep=keep, top=top)
    for v, by_scale in zip(vectors[:2], read):
        for scale in scales:
            _same_reading(by_scale[scale], *_whole_prompt_reading(model, v, 1, 4.0 * scale, keep, top))
    layers, norms = np.array([0, 2, 1, 0, 1]), np.array([1.0, 5.0, 12.0, 30.0, 80.0])
    each = patchscope_each(params, cfg, tok, vectors, layers, norms, prompts=PROMPTS, keep=keep, top=top, chunk=2)
    for v, layer, norm, got in zip(vectors, layers, norms, each):
        _same_reading(got, *_whole_prompt_reading(model, v, layer, norm, keep, top))


def test_kth_largest_without_sort_equals_top_k(rng):
    """The bisection over float bits gives exactly the k-th largest value: ties, zeros, subnormals, huge
    values, k = 1, k = size and k beyond the size (clamped, as `_top_k` clamps)."""
    x = np.abs(rng.randn(4, 300)).astype(np.float32)
    x[0, :200] = 0.25  # a tie across the k-th place
    x[1, ::2] = 0.0
    x[2, :50] = np.float32(1e-42)  # subnormal
    x[3, :3] = np.float32(3e38)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(rng.randn(3, 1000) * 20), axis=-1))  # many underflow to 0
    for arr in (x, probs):
        for k in (1, 2, 7, 150, 199, 200, 201, arr.shape[-1] - 1, arr.shape[-1], arr.shape[-1] + 5):
            want = np.sort(arr, axis=-1)[:, ::-1][:, min(k, arr.shape[-1]) - 1 :][:, :1]
            got = np.asarray(jax.jit(_kth_largest, static_argnums=1)(jnp.asarray(arr), k))
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got, np.asarray(_top_k(jnp.asarray(arr), k)[0][:, -1:]))


def test_gradable_and_scale_rule(tmp_path):
    tiny_hf_model("llama", tmp_path)
    _, params = load_hf_dir(tmp_path)
    ts = TokenScores([1, 2, 3, 4], ["->", " ...", "cake", "=>x"], [0.4, 0.3, 0.2, 0.1])
    assert gradable(ts) == [2]
    # A set of one repeated embedding is perfectly coherent; it must win over random tokens.
    coherent = TokenScores([5, 5, 5], ["a", "b", "c"], [0.3, 0.3, 0.3])
    scattered = TokenScores([7, 50, 90], ["d", "e", "f"], [0.3, 0.3, 0.3])
    assert select_scale(params, {1.0: scattered, 2.0: coherent}) == 2.0


def test_adl_diff_with_a_vocabulary_smaller_than_every_top_k(tmp_path, rng):
    """40 tokens: fewer than the logit lens's top 100 and the patchscope's top-16384 intersection, so every
    top-k is cut to the vocabulary (it used to stop with "k argument to top_k must be no larger than size")."""
    from adl_jax import api
    from adl_jax.cli import main
    from conftest import random_texts

    vocab = 40
    for seed, name in enumerate(("base", "ft")):
        tiny_hf_model("qwen3", tmp_path / name, seed=seed, vocab_size=vocab)
        tiny_tokenizer(vocab).save_pretrained(tmp_path / name)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_texts(rng, 40, vocab_size=vocab)) + "\n")
    out = tmp_path / "run"
    models = ["--base", str(tmp_path / "base"), "--finetuned", str(tmp_path / "ft")]
    assert main(["diff", *models, "--corpus", str(corpus), "--samples", "32", "--n", "8", "--out", str(out)]) == 0
    pos = api.load(out).lenses.positions[1]
    lens = pos["logit_lens"]["delta"]
    assert sorted(lens.ids) == list(range(vocab))  # the whole vocabulary, most likely first
    assert lens.probs == sorted(lens.probs, reverse=True) and abs(sum(lens.probs) - 1) < 1e-4
    assert all(len(s.ids) == 20 for s in pos["patchscope"].values())
