"""The parameter table is the one declaration of every weight; bad logical axes and capture layers are refused;
docstrings keep reasons, not timings that go stale."""

import ast
import io
import re
import tokenize
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.models.config import ModelConfig
from adl_jax.models.params import PARAMS, hf_tensor_names, param_shapes
from adl_jax.models.transformer import forward
from adl_jax.sharding import Rules
from conftest import FAMILIES, tiny_hf_config, tiny_hf_model

ROOT = Path(__file__).resolve().parent.parent


def test_each_checkpoint_name_is_written_once_in_the_package():
    """Adding a parameter is one edit: each HF and GGUF name string appears in exactly one place in adl_jax/."""
    sources = {p: p.read_text() for p in (ROOT / "adl_jax").rglob("*.py")}
    names = {n for p in PARAMS.values() for n in (p.hf, p.hf_sandwich, p.gguf) if n}
    for name in names:
        found = [
            (str(p.relative_to(ROOT)), text.count(f'"{name}"')) for p, text in sources.items() if f'"{name}"' in text
        ]
        assert found == [("adl_jax/models/params.py", 1)], name


@pytest.mark.parametrize("family", FAMILIES)
def test_table_matches_transformers_state_dict(family, tmp_path):
    """Names, shapes and orientation derived from the table are those of transformers' own model."""
    model = tiny_hf_model(family, tmp_path, tie_word_embeddings=False)
    cfg = ModelConfig.from_json(tmp_path)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = param_shapes(cfg)
    for ours, names in hf_tensor_names(cfg).items():
        p = PARAMS[ours]
        full = shapes["layers"][ours] if p.per_layer else shapes[ours]
        per_tensor = full[1:] if p.per_layer else full
        assert len(names) == (cfg.num_layers if p.per_layer else 1)
        for n in names:
            assert state.pop(n) == (per_tensor[::-1] if p.transposed else per_tensor), n
    assert [k for k in state if not k.endswith("rotary_emb.inv_freq")] == []


def test_rules_refuse_an_unknown_logical_axis():
    sizes = {"data": 1, "fsdp": 2, "model": 4}
    assert Rules().spec(("layers", "embed", "heads"), (3, 8, 16), sizes) == jax.sharding.PartitionSpec(
        None, ("fsdp",), ("model",)
    )
    assert Rules().spec(("norm",), (8,), sizes) == jax.sharding.PartitionSpec(None)
    with pytest.raises(ValueError, match=r"unknown logical axis 'embd'.*'embed'"):
        Rules().spec(("embd", "heads"), (8, 16), sizes)


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig.from_hf(tiny_hf_config("llama").to_dict())
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))
    params = jax.tree.map(
        lambda s: 0.1 * jax.random.normal(next(keys), s), param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)
    )
    return cfg, params


def test_capture_outside_the_layers_run_is_refused(tiny):
    cfg, params = tiny
    tokens = jnp.asarray(np.arange(10).reshape(2, 5) % cfg.vocab_size)
    last = cfg.num_layers - 1
    with pytest.raises(ValueError, match=rf"capture of layer -1 is outside 0\.\.{last}"):
        forward(params, tokens, cfg, capture=(-1,))
    with pytest.raises(ValueError, match=rf"capture of layer {cfg.num_layers} is outside 0\.\.{last}"):
        forward(params, tokens, cfg, capture=(cfg.num_layers,))
    with pytest.raises(ValueError, match=r"capture of layer 1 is outside 0\.\.0"):
        forward(params, tokens, cfg, capture=(0, 1), until_layer=0)
    # within range: every asked layer comes back, the last equal to a run stopped there
    full = forward(params, tokens, cfg, capture=(0, last))
    stopped = forward(params, tokens, cfg, capture=(0,), until_layer=0)
    assert sorted(full.hidden) == [0, last]
    np.testing.assert_array_equal(np.asarray(full.hidden[0]), np.asarray(stopped.hidden[0]))


# A number with a unit of time or throughput, or a speed-up factor: a measurement, which goes stale.
_TIMING = re.compile(r"\d[\d.,]*\s*k?\s*(ms|µs|us|s|sec|seconds|minutes|tokens/s|tok/s|it/s)\b|\d(\.\d+)?x\b")


@pytest.mark.parametrize("path", ["adl_jax/models/generate.py", "adl_jax/models/transformer.py", "finetune/train.py"])
def test_docstrings_and_comments_state_no_timings(path):
    source = (ROOT / path).read_text()
    texts = [
        ast.get_docstring(node) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    texts += [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    assert [m.group(0) for text in texts for m in _TIMING.finditer(text)] == []
