"""Many organisms and every layer in one delta pass: each organism equals its own single-pair run, every
layer equals PyTorch's hidden states, sharded equals one device, a kill resumes bit-identical, and a NaN
organism loses none of the others."""

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import torch

import adl_jax.method.diff as diff
from adl_jax import api
from adl_jax.method.corpus import corpus_texts, tokenize_texts
from adl_jax.method.diff import DiffResult, DiffSettings, OrganismsFailed, compute_delta, compute_deltas
from adl_jax.models.load import load_model
from adl_jax.sharding import make_mesh
from conftest import random_texts, tiny_hf_model, tiny_tokenizer
from test_adapters import ALL, save_adapter

SETTINGS = DiffSettings(layer=1, n=8, batch_size=8, checkpoint_every=2, layers="all")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny base, two PEFT LoRAs of it (ranks 4 and 2, different targets) and a full finetune, with torch twins,
    and their multi-organism delta at every layer."""
    root = tmp_path_factory.mktemp("organisms")
    torch_base = tiny_hf_model("gemma3_text", root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    peft_a = save_adapter(root / "base", root / "lora_a", seed=1, r=4, lora_alpha=8, target_modules=ALL)
    save_adapter(root / "base", root / "lora_b", seed=2, r=2, lora_alpha=2, target_modules=["q_proj", "down_proj"])
    torch_full = tiny_hf_model("gemma3_text", root / "full", seed=3)
    tiny_tokenizer().save_pretrained(root / "full")
    base = load_model(str(root / "base"))
    organisms = {
        "a": load_model(str(root / "lora_a"), base=base),
        "b": load_model(str(root / "lora_b"), base=base),
        "full": load_model(str(root / "full")),
    }
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(random_texts(np.random.RandomState(0), 100)) + "\n")
    tokens = tokenize_texts(corpus_texts(str(corpus)), base.tokenizer, n=8, count=40)
    multi = compute_deltas(base, organisms, tokens, SETTINGS, root / "multi", progress=False)
    torch_models = dict(a=peft_a, full=torch_full)
    return SimpleNamespace(
        root=root, base=base, organisms=organisms, tokens=tokens, multi=multi, torch_base=torch_base, torch=torch_models
    )


def test_each_organism_equals_its_single_pair_run_and_torch_at_every_layer(family):
    assert set(family.multi) == {"a", "b", "full"}
    for name in ("a", "full"):
        single = compute_delta(
            family.base,
            family.organisms[name],
            family.tokens,
            DiffSettings(layer=1, n=8),
            family.root / name,
            progress=False,
        )
        np.testing.assert_allclose(family.multi[name].delta, single.delta, atol=1e-5)
        np.testing.assert_allclose(family.multi[name].ft_norm, single.ft_norm, rtol=1e-5)

    with torch.no_grad():
        ids = torch.tensor(family.tokens, dtype=torch.long)
        base_hidden = _residuals(family.torch_base, ids)
        for name, model in family.torch.items():
            ft_hidden = _residuals(model, ids)
            res = family.multi[name]
            assert res.meta["layers"] == [0, 1, 2] and res.delta_layers.shape == (3, 5, 64)
            for layer in range(3):
                hb, hf = base_hidden[layer], ft_hidden[layer]
                want = hf[:, :5].mean(0) - hb[:, :5].mean(0)
                np.testing.assert_allclose(res.delta_layers[layer], want, atol=1e-5)
                norm = np.linalg.norm(hf[:, 5:], axis=-1).mean()
                np.testing.assert_allclose(res.ft_norm_layers[layer], norm, rtol=1e-5)
            np.testing.assert_array_equal(res.delta, res.delta_layers[1])  # the read layer
    reloaded = DiffResult.load(family.root / "multi" / "b")
    np.testing.assert_array_equal(reloaded.delta_layers, family.multi["b"].delta_layers)
    assert np.abs(family.multi["b"].delta).max() > 1e-3


def _residuals(model, ids) -> list[np.ndarray]:
    """The residual after each decoder layer: transformers' hidden states, except the last, which it returns
    after the final norm, so that one is taken from the last decoder layer's output by a hook."""
    layers = model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers
    last = []
    hook = layers[-1].register_forward_hook(
        lambda mod, args, out: last.append(out[0] if isinstance(out, tuple) else out)
    )
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    hook.remove()
    return [h.numpy() for h in hidden[1:-1]] + [last[0].numpy()]


def test_kill_between_organisms_resumes_bit_identical_and_nan_loses_no_other(family, monkeypatch):
    out = family.root / "killed"
    saved, calls = diff._save_state, []

    def killed(path, state):  # dies at the second checkpoint, after the first organism's state only
        saved(path, state)
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(diff, "_save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        compute_deltas(family.base, family.organisms, family.tokens, SETTINGS, out, progress=False)
    monkeypatch.setattr(diff, "_save_state", saved)
    cursors = {name: diff._load_state(out / name, (3, 5, 64))["cursor"] for name in family.organisms}
    assert cursors == {"a": 4, "b": 2, "full": 2}
    compute_deltas(family.base, family.organisms, family.tokens, SETTINGS, out, progress=False)
    for name in family.organisms:
        want = (family.root / "multi" / name / "delta.safetensors").read_bytes()
        assert (out / name / "delta.safetensors").read_bytes() == want

    broken = dataclasses.replace(
        family.organisms["full"], params=jax.tree.map(lambda x: x * np.nan, family.organisms["full"].params)
    )
    organisms = {**family.organisms, "full": broken}
    with pytest.raises(OrganismsFailed, match=r"organism 'full' .* in batch 0\.\.1 \(texts 0\.\.15\)") as failed:
        compute_deltas(family.base, organisms, family.tokens, SETTINGS, family.root / "nan", progress=False)
    assert set(failed.value.results) == {"a", "b"} and not (family.root / "nan" / "full" / "delta.safetensors").exists()
    for name in ("a", "b"):
        want = (family.root / "multi" / name / "delta.safetensors").read_bytes()
        assert (family.root / "nan" / name / "delta.safetensors").read_bytes() == want


def test_bad_organism_names_and_layers_are_refused(family):
    with pytest.raises(ValueError, match="organism name 'a/b'"):
        compute_deltas(family.base, {"a/b": family.organisms["a"]}, family.tokens, SETTINGS, family.root / "x")
    with pytest.raises(ValueError, match="--layers 7: this model has layers 0..2"):
        DiffSettings(layers=(7,)).resolved(family.base.cfg)


def test_adl_diff_of_several_organisms_sharded_equals_one_device(family, capsys):
    """`adl diff` with organisms from flags and a file, on 8 devices with the organism axis on `data`."""
    from adl_jax.cli import main

    root = family.root
    (root / "organisms.txt").write_text(f"# more organisms\n\nb = {root / 'lora_b'}\n")
    argv = ["diff", "--base", str(root / "base"), "--corpus", str(root / "corpus.txt"), "--samples", "40"]
    argv += ["--n", "8", "--layer", "1", "--layers", "all", "--batch-size", "8", "--out", str(root / "cli")]
    mesh = ["--mesh", "data=2,model=4"]
    assert diff._organism_layout(make_mesh("data=2,model=4"), 2) == (("data",), ())
    assert main([*argv, *mesh, "--finetuned", f"a={root / 'lora_a'}", "--organisms", str(root / "organisms.txt")]) == 0
    assert capsys.readouterr().out.count("DiffResult(layer=1") == 2
    for name in ("a", "b"):
        run = api.load(root / "cli" / name)
        np.testing.assert_array_equal(np.load(root / "cli" / name / "tokens.npy"), family.tokens)
        np.testing.assert_allclose(run.diff.delta_layers, family.multi[name].delta_layers, atol=1e-5)
        assert run.diff.meta["finetuned"] == str(root / f"lora_{name}") and len(run.lenses.positions) == 5

    bad = {
        ("--finetuned", "a=x", "--finetuned", "a=y"): "'a' is given twice",
        ("--finetuned", "a=x", "--finetuned", str(root / "full")): "each needs a name: give NAME=SPEC",
        ("--organisms", str(root / "organisms.txt"), "--finetuned", "plain"): "each needs a name",
        (): "give the finetuned model",
        ("--finetuned", str(root / "full"), "--layers", "1,99"): "--layers 99: this model has layers 0..2",
    }
    for extra, message in bad.items():
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("mesh", ["data=2,fsdp=2,model=2", "data=4,model=2"])
def test_sharded_pass_of_lora_and_full_organisms_equals_one_device(family, mesh):
    """On 8 simulated devices, LoRA and full organisms together: with the organism axis on `data` (2 adapters
    over data=2, rows over fsdp) and with rows on `data` (2 adapters do not split over data=4), each delta
    equals the one-device pass."""
    mesh = make_mesh(mesh)
    on_data = diff.organism_shards(mesh.shape, 2) > 1
    assert diff._organism_layout(mesh, 2) == ((("data",), ("fsdp",)) if on_data else ((), ("data",)))
    root = family.root
    base = load_model(str(root / "base"), mesh=mesh)
    organisms = {
        "a": load_model(str(root / "lora_a"), base=base, mesh=mesh),
        "b": load_model(str(root / "lora_b"), base=base, mesh=mesh),
        "full": load_model(str(root / "full"), mesh=mesh),
    }
    out = root / f"sharded_{mesh.shape['data']}"
    sharded = compute_deltas(base, organisms, family.tokens, SETTINGS, out, progress=False)
    for name, res in sharded.items():
        np.testing.assert_allclose(res.delta_layers, family.multi[name].delta_layers, atol=1e-5)
        np.testing.assert_allclose(res.ft_norm_layers, family.multi[name].ft_norm_layers, rtol=1e-5)
