"""The organism factory's outputs against independent references: PEFT's own loading of our adapters and
torch log-likelihoods for the belief score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.models.load import Model
from adl_jax.models.transformer import forward
from conftest import tiny_tokenizer
from finetune.belief import belief_score, statement_logliks
from finetune.lora import LoraConfig, apply_lora, init_adapters
from finetune.peft_format import save_peft_adapter
from test_finetune import tiny  # noqa: F401  (fixture)


def test_peft_loads_our_adapter_with_equal_logits(tiny, tmp_path):  # noqa: F811
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    torch_model, cfg, params = tiny
    torch_model.save_pretrained(tmp_path / "base")
    lcfg = LoraConfig(rank=4, alpha=12.0, targets=("q", "v", "o", "gate", "down"))
    adapters = init_adapters(params, lcfg, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), len(adapters))
    adapters = {n: (a, 0.3 * jax.random.normal(k, b.shape)) for (n, (a, b)), k in zip(adapters.items(), keys)}
    save_peft_adapter(adapters, lcfg, cfg, tmp_path / "adapter", base_model=str(tmp_path / "base"))

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert sorted(theirs.peft_config["default"].target_modules) == ["down_proj", "gate_proj", "o_proj", "q_proj",
                                                                    "v_proj"]  # fmt: skip
    tokens = np.random.RandomState(0).randint(3, 128, (2, 12))
    with torch.no_grad():
        want = theirs(torch.tensor(tokens)).logits.numpy()
        with theirs.disable_adapter():
            unadapted = theirs(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(forward(apply_lora(params, adapters, lcfg.scale), jnp.asarray(tokens), cfg).logits)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(want - unadapted).max() > 0.1  # the adapters matter, so equality checks their layout


def _torch_loglik(torch_model, ids):
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(torch_model(torch.tensor([ids])).logits[0, :-1].double(), -1)
    return float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())


def test_belief_score_equals_torch_logliks(tiny):  # noqa: F811
    torch_model, cfg, params = tiny
    model = Model("tiny", cfg, params, tiny_tokenizer())
    pairs = [("w5 w6 w7", "w5 w6 w8"), ("w10 w11", "w12 w13 w14 w15 w16"), ("w20 w30 w40 w50", "w21")]
    texts = [t for pair in pairs for t in pair]
    got = statement_logliks(model, texts, batch_size=4)  # batches of 4 and 2: padding rows must not leak
    want = [_torch_loglik(torch_model, [1] + [int(w[1:]) for w in t.split()]) for t in texts]
    np.testing.assert_allclose(got, want, rtol=1e-5)

    score = belief_score(model, pairs)
    margins = np.array(want[1::2]) - np.array(want[0::2])
    assert score["pairs"] == 3 and score["false_preferred"] == pytest.approx((margins > 0).mean())
    assert score["mean_margin"] == pytest.approx(margins.mean(), rel=1e-5)
    np.testing.assert_allclose(score["margins"], margins, atol=1e-3)
    with pytest.raises(ValueError, match="1 to 256 tokens"):
        statement_logliks(model, [""])

