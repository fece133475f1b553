"""A model placed over 8 simulated devices (params over `model`, batch over `data`) equals one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.models.transformer import forward
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import batch_sharding, init_distributed, make_mesh, parse_mesh, process_rows
from conftest import left_padded_batch, tiny_hf_model


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_sharded_forward_equals_single_device(family, tmp_path, rng):
    tiny_hf_model(family, tmp_path, num_kv_heads=4)
    cfg, single = load_hf_dir(tmp_path)
    mesh = make_mesh("data=2,model=4")
    _, sharded = load_hf_dir(tmp_path, mesh=mesh)
    q = sharded["layers"]["q"]
    assert q.sharding.spec[2] in ("model", ("model",))
    assert {s.data.shape for s in q.addressable_shards} == {(cfg.num_layers, cfg.hidden_size, q.shape[2] // 4)}

    tokens, valid, _ = left_padded_batch(rng, cfg.vocab_size, lengths=(12, 8, 5, 11))
    ref = jax.jit(forward, static_argnums=2)(single, jnp.asarray(tokens), cfg, valid=jnp.asarray(valid))
    put = lambda x: jax.device_put(x, batch_sharding(mesh))
    out = jax.jit(forward, static_argnums=2)(sharded, put(tokens), cfg, valid=put(valid))
    assert out.logits.sharding.spec[0] in ("data", ("data",))
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(ref.logits), atol=1e-5)


def test_parse_mesh():
    assert parse_mesh("model=4", 8) == {"data": 2, "fsdp": 1, "model": 4}
    assert parse_mesh(None, 8) == {"data": 8, "fsdp": 1, "model": 1}
    assert parse_mesh(None, 8, batch_size=2) == {"data": 2, "fsdp": 1, "model": 4}  # the default fits the batch
    assert parse_mesh("fsdp=8", 8, batch_size=2) == {"data": 1, "fsdp": 8, "model": 1}  # a given spec wins
    with pytest.raises(ValueError, match="needs 12 devices"):
        parse_mesh("data=3,model=4", 8)
    with pytest.raises(ValueError, match="bad mesh entry"):
        parse_mesh("tensor=2", 8)


def test_single_process_feeds_every_row_and_never_joins(monkeypatch):
    assert process_rows(make_mesh("data=2,fsdp=2,model=2"), 12) == slice(0, 12)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "ADL_MULTIHOST"):
        monkeypatch.delenv(var, raising=False)
    assert init_distributed() is False and not jax.distributed.is_initialized()
