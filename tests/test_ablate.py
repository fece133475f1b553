"""Causal ablation against a PyTorch forward-hook reference, and its bookkeeping by hand."""

import numpy as np
import pytest
import torch

from adl_jax.experiments.ablate import (
    AblationSettings,
    ablate,
    percent_change,
    subset_masks,
    token_losses,
)
from adl_jax.report.ablation import ablation_table
from conftest import random_texts
from finetune.data import encode_document, pad_rows
from conftest import tiny_pair

LAYER = 1


def rows_of(texts, tok, seq_len=28):
    return pad_rows([encode_document(t, tok) for t in texts], seq_len, tok.pad_token_id)


def torch_ablated_nll(tb, tf, rows, unit, mode):
    """Per-token loss of the torch finetuned model with a hook editing block LAYER's output."""
    tokens = torch.tensor(rows.tokens, dtype=torch.long)
    mask = torch.tensor(rows.valid, dtype=torch.long)
    u = torch.tensor(unit, dtype=torch.float32)
    with torch.no_grad():
        hb = tb(tokens, attention_mask=mask, output_hidden_states=True).hidden_states[LAYER + 1]
        target = (hb @ u) if mode == "base" else torch.zeros(hb.shape[:2])

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h + (target - h @ u)[..., None] * u
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = tf.model.layers[LAYER].register_forward_hook(hook)
        try:
            logits = tf(tokens, attention_mask=mask).logits[:, :-1]
        finally:
            handle.remove()
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").numpy()


@pytest.mark.parametrize("mode", ["base", "project"])
def test_ablated_losses_equal_torch_hook(tmp_path, rng, mode):
    (base, ft), (tb, tf) = tiny_pair(tmp_path)
    rows = rows_of(random_texts(rng, 5, vocab_size=100), base.tokenizer)
    units = rng.standard_normal((3, base.cfg.hidden_size)).astype(np.float32)
    units /= np.linalg.norm(units, axis=-1, keepdims=True)
    settings = AblationSettings(mode=mode, rows_per_call=2)  # 1 text x 2 directions a call: padding exercised
    plain, ablated = token_losses(base, ft, rows, units, LAYER, settings, progress=False)
    scored = rows.valid[:, 1:]
    with torch.no_grad():
        ref_plain = torch.nn.functional.cross_entropy(
            tf(torch.tensor(rows.tokens, dtype=torch.long), attention_mask=torch.tensor(rows.valid, dtype=torch.long))
            .logits[:, :-1]
            .transpose(1, 2),
            torch.tensor(rows.tokens[:, 1:], dtype=torch.long),
            reduction="none",
        ).numpy()
    np.testing.assert_allclose(plain[scored], ref_plain[scored], atol=1e-4)
    for m, unit in enumerate(units):
        ref = torch_ablated_nll(tb, tf, rows, unit, mode)
        np.testing.assert_allclose(ablated[m][scored], ref[scored], atol=1e-4)
    assert np.abs(ablated[0] - plain)[scored].max() > 1e-3  # the edit does something


def test_subsets_and_percent_change_by_hand():
    from finetune.data import Rows

    valid = np.array([[1, 1, 1, 1, 0]], bool)
    rows = Rows(np.zeros((1, 5), np.int32), valid, valid.copy())
    masks = subset_masks(rows, p=1)
    np.testing.assert_array_equal(masks["all"], [[1, 1, 1, 0]])  # tokens 1..3 predicted, 4 is padding
    np.testing.assert_array_equal(masks["all_but_next"], [[1, 0, 1, 0]])  # token at position p+1 = 2 left out
    assert "after_20" not in masks  # no token past position 20
    plain = np.array([[1.0, 2.0, 3.0, np.nan]])
    ablated = np.array([[[2.0, 2.0, 2.0, np.nan]], [[1.0, 1.0, 1.0, np.nan]]])
    np.testing.assert_allclose(percent_change(plain, ablated, masks["all"]), [0.0, -50.0])
    np.testing.assert_allclose(percent_change(plain, ablated, masks["all_but_next"]), [0.0, -50.0])


def test_ablate_reports_delta_and_controls(tmp_path, rng):
    (base, ft), _ = tiny_pair(tmp_path)
    datasets = {
        "finetune": rows_of(["w110 w111 w112 w110 w111"] * 4, base.tokenizer),
        "pretrain": rows_of(random_texts(rng, 6, vocab_size=100), base.tokenizer),
    }
    delta = rng.standard_normal((3, base.cfg.hidden_size)).astype(np.float32)
    settings = AblationSettings(positions=(0, 2), random_controls=3, activation_controls=2, rows_per_call=8)
    out = ablate(base, ft, delta, LAYER, datasets, settings, progress=False)
    d = out["datasets"]["pretrain"]
    assert set(d["delta"]) == {"0", "2"} and len(d["random"]["2"]["all"]) == 3
    assert len(d["activation_diff"]["0"]["all_but_next"]) == 2 and "after_20" in d["delta"]["0"]
    # The delta entry equals a direct computation with that one direction.
    plain, ablated = token_losses(
        base, ft, datasets["pretrain"], delta[2:3] / np.linalg.norm(delta[2]), LAYER, settings, progress=False
    )
    mask = subset_masks(datasets["pretrain"], 2)["all"]
    assert d["delta"]["2"]["all"] == pytest.approx(float(percent_change(plain, ablated[0], mask)), abs=1e-4)
    assert "p=2" in ablation_table(out)
    # each control family gets its own verdict: above / below / inside its min..max
    fake = {
        "layer": 3,
        "mode": "base",
        "positions": [1],
        "datasets": {
            "ft": {
                "ce": 1.0,
                "texts": 2,
                "delta": {"1": {"all": 5.0}},
                "random": {"1": {"all": [-1.0, 1.0]}},
                "activation_diff": {"1": {"all": [0.0, 9.0]}},
            }
        },
    }
    assert "random  -1.00.. +1.00 (above)   act-diff  +0.00.. +9.00 (inside)" in ablation_table(fake)
    with pytest.raises(ValueError, match="k >= 4"):
        ablate(base, ft, delta, LAYER, datasets, AblationSettings(positions=(3,)), progress=False)
