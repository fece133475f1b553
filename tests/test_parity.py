"""Our decoder against the PyTorch reference on tiny random models of every family (f32).

Logits on a left-padded batch for GQA, MQA and MHA; the residual after every layer (until_layer and
capture) against HF hidden states; each intervention mode against a forward hook doing the same edit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from adl_jax.models.transformer import Intervention, forward
from adl_jax.models.weights import load_hf_dir
from conftest import FAMILIES, left_padded_batch, tiny_hf_model

jit_forward = jax.jit(forward, static_argnames=("cfg", "until_layer", "capture"))


def torch_run(model, tokens, valid, positions, hook_layer=None, hook=None):
    handle = model.model.layers[hook_layer].register_forward_hook(hook) if hook else None
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(valid.astype(np.int64)),
            position_ids=torch.tensor(positions),
            output_hidden_states=True,
        )
    if handle:
        handle.remove()
    return out


@pytest.mark.parametrize("kv_heads", [1, 2, 4], ids=["mqa", "gqa", "mha"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_hidden_states_match_torch(family, kv_heads, tmp_path, rng):
    model = tiny_hf_model(family, tmp_path, num_kv_heads=kv_heads)
    cfg, params = load_hf_dir(tmp_path)
    tokens, valid, positions = left_padded_batch(rng, cfg.vocab_size, lengths=(12, 8, 5))
    ref = torch_run(model, tokens, valid, positions)
    out = jit_forward(params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid), capture=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(out.logits)[valid], ref.logits.numpy()[valid], atol=1e-4)
    for layer in range(cfg.num_layers):
        want = ref.hidden_states[layer + 1].numpy()
        if layer < cfg.num_layers - 1:  # HF applies the final norm to its last hidden state
            np.testing.assert_allclose(np.asarray(out.hidden[layer])[valid], want[valid], atol=1e-4)
        if kv_heads != 2:  # stopping early does not depend on the head layout: check it once per family
            continue
        early = jit_forward(
            params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid), until_layer=layer, capture=(layer,)
        )
        assert early.logits is None
        # The same blocks, scanned in other stretches (split at other captured layers): float32 rounding apart.
        np.testing.assert_allclose(np.asarray(early.hidden[layer]), np.asarray(out.hidden[layer]), rtol=1e-5, atol=1e-5)


def _edit_hook(fn):
    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h.copy_(fn(h))
        return output

    return hook


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_interventions_match_torch_hooks(family, tmp_path, rng):
    model = tiny_hf_model(family, tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    tokens, valid, positions = left_padded_batch(rng, cfg.vocab_size, lengths=(10, 7))
    B, T, D = *tokens.shape, cfg.hidden_size
    vec = rng.randn(B, D).astype(np.float32)
    weight = (rng.rand(B, T) > 0.5).astype(np.float32)
    value = rng.randn(B, T).astype(np.float32)
    tv, tw, tval = torch.tensor(vec), torch.tensor(weight), torch.tensor(value)
    unit = tv / tv.norm(dim=-1, keepdim=True)
    cases = {
        "add": (
            Intervention(1, "add", jnp.asarray(vec), jnp.asarray(weight)),
            lambda h: h + tw[..., None] * tv[:, None],
        ),
        "replace": (
            Intervention(1, "replace", jnp.asarray(vec), jnp.asarray(weight)),
            lambda h: torch.where(tw[..., None] > 0, tv[:, None].expand_as(h), h),
        ),
        "component": (
            Intervention(1, "component", jnp.asarray(vec), jnp.asarray(weight), jnp.asarray(value)),
            lambda h: h + tw[..., None] * (tval - (h * unit[:, None]).sum(-1))[..., None] * unit[:, None],
        ),
    }
    for mode, (iv, edit) in cases.items():
        ref = torch_run(model, tokens, valid, positions, hook_layer=1, hook=_edit_hook(edit)).logits.numpy()
        out = forward(params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid), interventions=(iv,))
        np.testing.assert_allclose(np.asarray(out.logits)[valid], ref[valid], atol=1e-4, err_msg=mode)


def test_scanned_layers_equal_unrolled(tmp_path, rng):
    tiny_hf_model("gemma2", tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    tokens, valid, _ = left_padded_batch(rng, cfg.vocab_size)
    iv = (Intervention(1, "add", jnp.ones(cfg.hidden_size)),)
    a = forward(params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid), interventions=iv, capture=(0,))
    b = forward(
        params,
        jnp.asarray(tokens),
        dataclasses.replace(cfg, scan_layers=True),
        valid=jnp.asarray(valid),
        interventions=iv,
        capture=(0,),
    )
    np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b.hidden[0]), np.asarray(a.hidden[0]), atol=1e-5)
