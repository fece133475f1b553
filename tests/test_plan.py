"""`adl plan` against what our loader and trainer really allocate on 8 simulated devices, and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.experiments import plan as pl
from adl_jax.cli import main
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import Rules, batch_sharding, make_mesh
from conftest import tiny_hf_model
from finetune.lora import LoraConfig
from finetune.train import TrainConfig, _initial_state, make_optimizer, train_step

MESHES = ("data=8", "data=2,fsdp=2,model=2", "fsdp=4,model=2", "model=8")


def per_device(tree) -> set[int]:
    """The bytes each device holds of a pytree of global arrays (one value when the layout is balanced)."""
    held = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return set(held.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    tiny_hf_model("qwen3", path, num_kv_heads=4, vocab_size=256)
    return path


@pytest.mark.parametrize("mesh", MESHES)
def test_weights_are_what_the_loader_allocates(tiny, mesh):
    mesh = make_mesh(mesh)
    cfg, params = load_hf_dir(tiny, dtype=jnp.bfloat16, mesh=mesh)
    (held,) = per_device(params)
    assert pl.weight_bytes(cfg, mesh.shape, 2) == held  # exact: the planner splits by the loader's specs


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainer_state_is_what_the_plan_says(tiny, mode):
    mesh = make_mesh("data=2,fsdp=2,model=2")
    cfg, params = load_hf_dir(tiny, dtype=jnp.bfloat16, mesh=mesh)
    tc = TrainConfig(mode=mode, lora=LoraConfig(rank=4), batch_size=8, seq_len=32)
    trainable, opt_state = _initial_state(params, cfg, tc, make_optimizer(tc), mesh, Rules())
    rows = pl.plan(cfg, "v5e-8", "data=2,fsdp=2,model=2", pl.Run("finetune", train=tc)).rows
    assert per_device(trainable) == {rows["trainable (f32)"][0]}
    (moments,) = per_device(opt_state)
    assert 0 <= moments - rows["optimizer (2 Adam moments, f32)"][0] <= 16  # + Adam's and the clip's step counters

    # The estimated rows (gradients, merged weights, activations) against XLA's own count of the step's temporaries.
    tokens = jax.device_put(np.zeros((8, 32), np.int32), batch_sharding(mesh))
    valid = jax.device_put(np.ones((8, 32), bool), batch_sharding(mesh))
    temp = train_step.lower(trainable, opt_state, params, (tokens, valid, valid), 0, cfg=cfg, tc=tc).compile()
    estimate = sum(b for b, how in rows.values() if how.startswith("estimate"))
    assert 0.6 < estimate / temp.memory_analysis().temp_size_in_bytes < 1.5  # 0.71 full, 0.82 LoRA when written


def test_refuses_qwen3_32b_full_finetune_on_v5e_4_and_names_a_slice_that_fits(capsys):
    cfg = pl.model_config("Qwen/Qwen3-32B")  # the shipped config, by hub id
    run = pl.Run.of("finetune", "bf16", "full")
    p = pl.plan(cfg, "v5e-4", run=run)
    assert not p.fits and p.rows["weights (base)"][0] == pl.weight_bytes(cfg, p.sizes, 2)
    better = pl.suggest(cfg, "v5e", run)
    assert better.fits and better.n_devices > 4
    fits_on = rf"it fits on v5e-{better.n_devices} with --mesh {better.mesh}"
    with pytest.raises(ValueError, match=rf"does not fit: .* {fits_on}"):
        pl.check(p, cfg)
    assert main(["plan", "--model", "qwen3-32b", "--devices", "v5e-4", "--task", "finetune", "--mode", "full"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(["plan", "--model", "Qwen3-32B", "--devices", "v6e-8", "--mesh", "fsdp=8"]) == 0
    out = capsys.readouterr().out
    assert "\nfits\naudit time, estimated: delta" in out


def test_devices_and_model_specs():
    assert pl.parse_devices("v4-32")[2] == 16  # v4 and v5p slices are named by TensorCores, 2 per chip
    assert pl.parse_devices("v5litepod-16")[:1] == ("v5e",) and pl.parse_devices("h100-8")[2] == 8
    for bad in ("v5e-3", "tpu-8"):
        with pytest.raises(ValueError):
            pl.parse_devices(bad)
    shipped = sorted(pl.CONFIGS.glob("*.json"))
    assert len(shipped) == 7 and all(pl.model_config(p.stem.upper()).num_layers for p in shipped)
    with pytest.raises(ValueError, match="does not split"):
        pl.check(pl.plan(pl.model_config("gemma-3-1b-it"), "v5e-64", "fsdp=64"), pl.model_config("gemma-3-1b-it"))
    assert pl.Run.of(batch_size=64).batch == 64
