"""`adl plan` against what our loader and trainer really allocate on 8 simulated devices, and its refusals."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.experiments import plan as pl
from adl_jax.cli import _mesh, main
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import MEMORY_ENV, Rules, batch_sharding, layouts, make_mesh
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
    # The estimate models layers unrolled (0.71 full, 0.82 LoRA when written). Scanned, as the trainer now runs
    # by default, this tiny model's step holds 1.9x those temporaries: not yet modelled (see issue #17's note).
    unrolled = dataclasses.replace(cfg, scan_layers=False)
    temp = train_step.lower(trainable, opt_state, params, (tokens, valid, valid), 0, cfg=unrolled, tc=tc).compile()
    estimate = sum(b for b, how in rows.values() if how.startswith("estimate"))
    assert 0.6 < estimate / temp.memory_analysis().temp_size_in_bytes < 1.5


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


def test_default_mesh_fits_qwen3_32b_on_v5e_16():
    """Without --mesh the plan takes the first layout that fits, in the order of most data parallelism: none
    before it fits, so data=16 (weights replicated) is not what the plan refuses any more."""
    cfg = pl.model_config("Qwen3-32B")
    p = pl.plan(cfg, "v5e-16")
    assert p.chosen and p.fits and p.sizes["data"] < 16
    order = layouts(16, p.run.batch)
    earlier = order[: order.index(p.sizes)]
    assert earlier[0] == {"data": 16, "fsdp": 1, "model": 1}
    assert not any(pl.plan(cfg, "v5e-16", ",".join(f"{a}={n}" for a, n in s.items())).fits for s in earlier)


def test_commands_without_mesh_shard_a_model_too_large_to_replicate(tiny, monkeypatch):
    """On the 8 simulated devices with a per-device budget that the replicated layout exceeds, a command's
    default mesh (`cli._mesh`, as `adl diff` makes it) splits the weights, and it is the first layout that fits."""
    run = pl.Run.of("audit", "bfloat16", batch_size=8)
    cfg = pl.model_config(str(tiny))
    total = {tuple(s.values()): sum(b for b, _ in pl.plan_rows(cfg, s, run).values()) for s in layouts(8, 8)}
    budget = total[(8, 1, 1)] / 2  # replicated weights, batch on data: twice what fits
    monkeypatch.setenv(MEMORY_ENV, str(budget / pl.USABLE / pl.GIB))
    mesh = _mesh(type("Args", (), {"mesh": None, "base": str(tiny)}), 8, run)
    chosen = tuple(mesh.shape.values())
    assert next(s for s, t in total.items() if t <= budget) == chosen != (8, 1, 1)
    _, params = load_hf_dir(tiny, dtype=jnp.bfloat16, mesh=mesh)
    (held,) = per_device(params)
    assert held < pl.weight_bytes(cfg, {"data": 8, "fsdp": 1, "model": 1}, 2)  # sharded, not replicated


def check_shipped_configs():
    """Every model of the configs' README table (file, hub id, parameter count) is shipped and read right: its
    architecture numbers are those transformers reads from the config.json (its text decoder's, with
    transformers' defaults for the fields a multimodal Gemma 3 config leaves out), and the parameters the loader
    would place add up to the count the table gives (to its two decimals)."""
    import transformers

    listed = re.findall(
        r"^\| `(.+?)\.json` \| (\S+) \| ([\d.]+) B \|$", pl.CONFIGS.joinpath("README.md").read_text(), re.M
    )
    shipped = {Path(p.name).stem for p in pl.CONFIGS.iterdir() if p.name.endswith(".json")}
    assert len(listed) == 10 and {name for name, _, _ in listed} == shipped
    one_device = {axis: 1 for axis in ("data", "fsdp", "model")}
    for name, hub_id, billions in listed:
        raw = json.loads(pl.CONFIGS.joinpath(f"{name}.json").read_text())
        hf = transformers.AutoConfig.for_model(**raw).get_text_config()
        cfg = pl.model_config(name.upper())
        assert pl.model_config(hub_id) == cfg
        got = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads)
        keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads")
        assert got == (*(getattr(hf, k) for k in keys), hf.num_key_value_heads or hf.num_attention_heads), name
        assert cfg.head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads), name
        if any(cfg.local_layers):
            assert cfg.sliding_window == hf.sliding_window, name
        if hasattr(hf, "query_pre_attn_scalar"):  # Gemma: 168 for 27B, the head dimension for the others
            assert cfg.attn_scale == hf.query_pre_attn_scalar**-0.5, name
        assert f"{pl.weight_bytes(cfg, one_device, 1) / 1e9:.2f}" == billions, name


def test_devices_and_model_specs():
    assert pl.parse_devices("v4-32")[2] == 16  # v4 and v5p slices are named by TensorCores, 2 per chip
    assert pl.parse_devices("v5litepod-16")[:1] == ("v5e",) and pl.parse_devices("h100-8")[2] == 8
    for bad in ("v5e-3", "tpu-8"):
        with pytest.raises(ValueError):
            pl.parse_devices(bad)
    check_shipped_configs()
    with pytest.raises(ValueError, match="does not split"):
        pl.check(pl.plan(pl.model_config("gemma-3-1b-it"), "v5e-64", "fsdp=64"), pl.model_config("gemma-3-1b-it"))
    assert pl.Run.of(batch_size=64).batch == 64


def test_an_installed_wheel_plans_with_its_shipped_configs(tmp_path):
    """`pip install .`, then from another directory `adl plan --model Qwen3-32B` finds the config: the configs
    are package data. Built from a copy of the sources (no build files left in the checkout) and run with
    `python -S`, so only the installed package and the venv's dependencies are importable (no editable
    install, no checkout on the path)."""
    root, src = Path(__file__).parents[1], tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("adl_jax", "finetune"):
        shutil.copytree(root / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True)
    (wheel,) = (tmp_path / "dist").glob("adl_jax-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import sys, adl_jax.experiments.plan as p; from adl_jax.cli import main; "
        "assert p.__file__.startswith(sys.argv[1]), p.__file__; "
        "plan = ['plan', '--model', 'Qwen3-32B', '--devices', 'v5e-16']; "
        "print('rc', main(plan), main(plan + ['--mesh', 'fsdp=2,model=8']), main(plan + ['--mesh', 'data=16']))"
    )
    path = f"{tmp_path / 'site'}:{sysconfig.get_paths()['purelib']}"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(tmp_path / "site")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.endswith("rc 0 0 2\n"), done.stderr[-3000:]  # the default mesh fits; data=16 is refused ...
    assert "it fits on v5e-16 with --mesh" in done.stderr  # ... with a mesh that fits
    assert done.stdout.count("Qwen3-32B: audit in bfloat16 on v5e-16") == 3 and "\nfits\n" in done.stdout
    assert "(no --mesh: the fitting mesh with the most data parallelism)" in done.stdout


def test_n_organisms_hold_n_models_or_their_share_of_n_adapters(tiny, capsys):
    """An audit of N organisms holds the base and N full copies per device, or the base and the adapters its
    `data` group audits (N / data where data divides N, else all N); `max_organisms` is the largest count
    that fits, as the command says."""
    mesh = make_mesh("data=2,fsdp=2,model=2")
    cfg, params = load_hf_dir(tiny, dtype=jnp.bfloat16, mesh=mesh)
    (one,) = per_device(params)  # what the loader allocates for one model
    full = pl.plan(cfg, "v5e-8", "data=2,fsdp=2,model=2", pl.Run.of(organisms=5))
    assert full.rows["weights (base + 5 finetuned)"][0] == 6 * one
    single = pl.plan(cfg, "v5e-8", "data=2,fsdp=2,model=2", pl.Run.of(adapter_rank=4)).rows
    adapter = single["PEFT adapter (rank 4, f32)"][0]
    for n, held in ((8, 4), (3, 3)):  # 8 organisms: 4 per data group; 3 do not split over data=2
        rows = pl.plan(cfg, "v5e-8", "data=2,fsdp=2,model=2", pl.Run.of(adapter_rank=4, organisms=n)).rows
        assert rows[f"PEFT adapters ({held} of {n}) (rank 4, f32)"][0] == held * adapter
        assert rows["weights (base, shared by the adapter)"][0] == one

    big = pl.model_config("gemma-3-1b-it")
    for rank, step in ((0, 1), (16, 8)):
        p = pl.plan(big, "v5e-8", "data=8", pl.Run.of(adapter_rank=rank))
        most = pl.max_organisms(big, p)
        fits = lambda n: pl.plan(big, "v5e-8", "data=8", pl.Run.of(adapter_rank=rank, organisms=n)).fits
        assert most % step == 0 and fits(most) and not fits(most + step)
    # by hand: (1 + 6) x 1.86 GiB of bf16 weights + 0.33 KV cache + 0.70 activations = 14.1 <= 14.4 GiB usable;
    # a seventh finetune makes 15.9
    assert pl.max_organisms(big, pl.plan(big, "v5e-8", "data=8", pl.Run.of())) == 6
    assert main(["plan", "--model", "gemma-3-1b-it", "--devices", "v5e-8", "--mesh", "data=8", "--organisms", "4"]) == 0
    assert "weights (base + 4 finetuned)" in capsys.readouterr().out
