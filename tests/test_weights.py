"""Export to HF and back, dtypes, sharded checkpoints, and clear errors for bad checkpoints."""

import json

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import forward
from adl_jax.models.weights import load_hf_dir, save_hf_dir
from conftest import FAMILIES, left_padded_batch, tiny_hf_config, tiny_hf_model


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_and_round_trips(family, tmp_path, rng):
    tiny_hf_model(family, tmp_path / "src")
    cfg, params = load_hf_dir(tmp_path / "src")
    save_hf_dir(params, cfg, tmp_path / "out")
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokens, valid, positions = left_padded_batch(rng, cfg.vocab_size)
    with torch.no_grad():
        ref = model.eval()(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(valid.astype(np.int64)),
            position_ids=torch.tensor(positions),
        ).logits.numpy()
    ours = np.asarray(forward(params, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid)).logits)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4)
    cfg2, params2 = load_hf_dir(tmp_path / "out")
    assert cfg2 == cfg
    chex.assert_trees_all_equal(params, params2)


def test_bf16_and_sharded_index(tmp_path):
    model = tiny_hf_model("qwen3", tmp_path / "one")
    model.save_pretrained(tmp_path / "many", max_shard_size="20KB")
    assert (tmp_path / "many" / "model.safetensors.index.json").exists()
    _, one = load_hf_dir(tmp_path / "one")
    _, many = load_hf_dir(tmp_path / "many")
    np.testing.assert_array_equal(np.asarray(one["layers"]["down"]), np.asarray(many["layers"]["down"]))
    cfg, half = load_hf_dir(tmp_path / "one", dtype=jnp.bfloat16)
    assert half["layers"]["q"].dtype == jnp.bfloat16
    save_hf_dir(half, cfg, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_hf_dir(tmp_path / "bf16")[1]["embed"].dtype == jnp.float32  # loads in the dtype asked for


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unsupported architecture model_type='mamba'"):
        ModelConfig.from_hf({"model_type": "mamba"})
    cfg = tiny_hf_config("llama").to_dict()
    with pytest.raises(ValueError, match=r"\['new_switch'\] are not understood"):
        ModelConfig.from_hf({**cfg, "new_switch": 3})
    assert ModelConfig.from_hf({**cfg, "new_switch": 3}, ignore_keys=("new_switch",)).family == "llama"

    model = tiny_hf_model("llama", tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_dir(tmp_path)
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="may be truncated"):
        load_hf_dir(tmp_path / "m")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        load_hf_dir(tmp_path / "m")

    wide = tiny_hf_config("llama", intermediate_size=96).to_dict()
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(wide))
    with pytest.raises(ValueError, match=r"mlp.gate_proj.weight has shape \(128, 64\), config implies \(96, 64\)"):
        load_hf_dir(tmp_path / "m")
