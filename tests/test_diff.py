"""delta against a PyTorch reference, sharded == single device, crash/resume, and bad input."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from adl_jax.method.corpus import tokenize_texts
from adl_jax.method.diff import DiffResult, DiffSettings, compute_delta
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import make_mesh
from adl_jax.models.load import Model
from conftest import random_texts, tiny_hf_model, tiny_pair, tiny_tokenizer

HERE = Path(__file__).parent


def test_delta_matches_torch_reference_and_sharding(tmp_path, rng):
    (base, ft), (tb, tf) = tiny_pair(tmp_path)
    tokens = tokenize_texts(random_texts(rng, 100), base.tokenizer, n=8, count=70)
    assert (tokens[:, 0] == 1).all()  # BOS kept
    settings = DiffSettings(layer=1, k=5, n=8, batch_size=16)
    res = compute_delta(base, ft, tokens, settings, tmp_path / "run1", progress=False)

    import torch

    with torch.no_grad():
        hb = tb(torch.tensor(tokens, dtype=torch.long), output_hidden_states=True).hidden_states[2].numpy()
        hf = tf(torch.tensor(tokens, dtype=torch.long), output_hidden_states=True).hidden_states[2].numpy()
    np.testing.assert_allclose(res.mean_base, hb[:, :5].mean(0), atol=1e-5)
    np.testing.assert_allclose(res.delta, hf[:, :5].mean(0) - hb[:, :5].mean(0), atol=1e-5)
    np.testing.assert_allclose(res.ft_norm, np.linalg.norm(hf[:, 5:], axis=-1).mean(), rtol=1e-5)

    mesh = make_mesh("data=2,model=4")
    base8, ft8 = (dataclasses.replace(m, params=load_hf_dir(m.spec, mesh=mesh)[1]) for m in (base, ft))
    sharded = compute_delta(base8, ft8, tokens, settings, tmp_path / "run8", progress=False)
    np.testing.assert_allclose(sharded.delta, res.delta, atol=1e-5)
    reloaded = DiffResult.load(tmp_path / "run1")
    np.testing.assert_array_equal(reloaded.delta, res.delta)
    assert "layer=1" in repr(reloaded)


def test_refuses_other_settings_and_bad_input(tmp_path, rng):
    (base, ft), _ = tiny_pair(tmp_path)
    tokens = tokenize_texts(random_texts(rng, 60), base.tokenizer, n=8, count=32)
    compute_delta(base, ft, tokens, DiffSettings(layer=1, n=8), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="other settings.*layer"):
        compute_delta(base, ft, tokens, DiffSettings(layer=0, n=8), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="only 0 usable texts"):
        tokenize_texts(["w3 w4"] * 5, base.tokenizer, n=8, count=4)
    with pytest.raises(ValueError, match="n=5 must exceed k=5"):
        DiffSettings(layer=1, n=5)

    nan_ft = dataclasses.replace(ft, params=jax.tree.map(lambda x: x * np.nan, ft.params))
    with pytest.raises(FloatingPointError, match="batch 0"):
        compute_delta(base, nan_ft, tokens, DiffSettings(layer=1, n=8), tmp_path / "nan", progress=False)
    other_tok = dataclasses.replace(ft, tokenizer=tiny_tokenizer(100))
    with pytest.raises(ValueError, match="tokenizers have different vocabularies"):
        compute_delta(base, other_tok, tokens, DiffSettings(layer=1, n=8), tmp_path / "tok", progress=False)
    tiny_hf_model("gemma3_text", tmp_path / "wide", hidden_size=96)
    cfg, params = load_hf_dir(tmp_path / "wide")
    wide = Model("wide", cfg, params, base.tokenizer)
    with pytest.raises(ValueError, match="differ in.*hidden_size"):
        compute_delta(base, wide, tokens, DiffSettings(layer=1, n=8), tmp_path / "wide_run", progress=False)


RUNNER = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from conftest import tiny_pair_from_disk
from adl_jax.method.diff import DiffSettings, compute_delta
base, ft = tiny_pair_from_disk({root!r})
tokens = np.load({root!r} + "/tokens_in.npy")
compute_delta(base, ft, tokens, DiffSettings(layer=1, n=8, batch_size=4, checkpoint_every=2), {out!r}, progress=False)
"""


def test_sigkill_and_resume_is_bit_identical(tmp_path, rng):
    (base, ft), _ = tiny_pair(tmp_path)
    tokens = tokenize_texts(random_texts(rng, 4000), base.tokenizer, n=8, count=2400)
    np.save(tmp_path / "tokens_in.npy", tokens)
    settings = DiffSettings(layer=1, n=8, batch_size=4, checkpoint_every=2)
    compute_delta(base, ft, tokens, settings, tmp_path / "whole", progress=False)

    out = tmp_path / "killed"
    script = RUNNER.format(tests=str(HERE), root=str(tmp_path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 120
    while not (out / "state.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from adl_jax import io

    cursor = io.read_arrays(out / "state.safetensors")["cursor"].item()
    assert 0 < cursor < 600, "the run was not killed mid-way"
    assert not (out / "delta.safetensors").exists()
    compute_delta(base, ft, tokens, settings, out, progress=False)
    assert (out / "delta.safetensors").read_bytes() == (tmp_path / "whole" / "delta.safetensors").read_bytes()
