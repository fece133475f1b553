"""The tiled next-token loss against the plain one over full logits (value and gradient, with and without
Gemma 2's final soft-cap, tied and untied heads, tiles that do not divide the tokens), and its memory."""

import tempfile
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adl_jax.models.loss
from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import forward, unembed
from adl_jax.models.weights import load_hf_dir
from conftest import tiny_hf_model
from adl_jax.models.loss import next_token_nll
from finetune.train import TrainConfig, token_nll


def plain_nll(params, cfg, tokens, valid, targets):
    """The loss as the trainer computed it before tiling: optax over every position's full logits."""
    logits = forward(params, tokens, cfg, valid=valid).logits
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.roll(tokens, -1, axis=1))
    mask = jnp.pad(targets[:, 1:], ((0, 0), (0, 1)))
    return jnp.sum(jnp.where(mask, nll, 0.0))


def check_tiled_loss(family: str, path, variant=lambda f: f) -> None:
    """The tiled loss and its gradient, run through `variant` (e.g. jitted), against the full logits'."""
    tiny_hf_model(family, path, tie_word_embeddings=family != "llama")
    cfg, params = load_hf_dir(path)
    assert (cfg.final_softcap is not None) == (family == "gemma2") and cfg.tie_embeddings == (family != "llama")
    rng = np.random.RandomState(0)
    tokens = jnp.asarray(rng.randint(3, cfg.vocab_size, (3, 11)))
    valid = jnp.asarray(np.arange(11)[None] < np.array([[11], [8], [5]]))
    targets = valid & jnp.asarray(rng.rand(3, 11) > 0.3)
    loss = lambda p, *batch: token_nll(p, cfg, TrainConfig(), *batch)[0]
    with mock.patch.object(adl_jax.models.loss, "TILE_BYTES", 3 * 4 * cfg.vocab_size * 3):  # 3 positions x 3 rows
        ours = variant(jax.value_and_grad(loss))(params, tokens, valid, targets)
    want = jax.value_and_grad(lambda p: plain_nll(p, cfg, tokens, valid, targets))(params)
    np.testing.assert_allclose(float(ours[0]), float(want[0]), rtol=1e-5)
    for (path, got), ref in zip(jax.tree_util.tree_leaves_with_path(ours[1]), jax.tree.leaves(want[1])):
        scale = max(float(np.abs(ref).max()), 1e-6)
        np.testing.assert_allclose(got, ref, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied and tied heads, run op by op
def test_tiled_loss_and_gradient_equal_full_logits(family, tmp_path):
    check_tiled_loss(family, tmp_path)


class TestTiledLossTraced(chex.TestCase):
    """Gemma 2's soft-capped tied head, the loss both run op by op and traced under jit (`chex.variants`)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_tiled_loss_and_gradient_equal_full_logits(self):
        with tempfile.TemporaryDirectory() as tmp:
            check_tiled_loss("gemma2", tmp, self.variant)


def test_head_memory_is_a_tile_not_the_logits():
    """Gemma 3's vocabulary, hidden size 640, 8 x 2,048 tokens, abstract shapes: XLA's own peak temporary
    memory for loss + gradient. The plain loss holds at least the full f32 logits; the tiled one an eighth."""
    cfg = ModelConfig(
        family="gemma3_text",
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_layers=1,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        norm_offset=1.0,
        tie_embeddings=True,
        local_layers=(False,),
    )
    B, T, D, V = 8, 2048, cfg.hidden_size, cfg.vocab_size
    shape = jax.ShapeDtypeStruct
    args = (
        {"final_norm": shape((D,), jnp.float32), "embed": shape((V, D), jnp.float32)},
        shape((B, T, D), jnp.float32),
    )
    args += (shape((B, T), jnp.int32), shape((B, T), jnp.bool_))

    def plain(params, h, labels, mask):
        nll = optax.softmax_cross_entropy_with_integer_labels(unembed(params, h, cfg), labels)
        return jnp.sum(jnp.where(mask, nll, 0.0))

    tiled = lambda params, h, labels, mask: next_token_nll(params, h, cfg, labels, mask)
    temp = {
        name: jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes
        for name, f in (("plain", plain), ("tiled", tiled))
    }
    logits = B * T * V * 4
    assert temp["plain"] >= logits and temp["tiled"] <= logits / 8, (temp, logits)


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
def test_mean_nll_of_texts_equals_transformers(family, tmp_path, rng):
    """The judges' score: a batch of texts of mixed lengths after one prompt, each text's mean loss against
    transformers' loss on that prompt + text alone (no padding), the prompt's tokens not counted."""
    import torch

    from adl_jax.method.likelihood import mean_nll
    from conftest import random_texts, tiny_model

    model = tiny_model(family, tmp_path)
    torch_model = __import__("transformers").AutoModelForCausalLM.from_pretrained(tmp_path / family).eval()
    prompt = model.tokenizer("w5 w9 w11")["input_ids"]
    texts = random_texts(rng, 6, words=(1, 40)) + [""]
    got = mean_nll(model, prompt, texts)
    for text, ours in zip(texts, got):
        ids = prompt + model.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(torch_model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][len(prompt) - 1 :]
        want = float(nll.mean()) if len(nll) else 0.0
        np.testing.assert_allclose(ours, want, rtol=2e-5, atol=1e-5)
