"""PEFT LoRA adapters loaded unmerged on the base's own arrays, against peft's PeftModel (torch, f32); multimodal
Gemma 3 checkpoints' text decoder against transformers' Gemma3ForConditionalGeneration; the hub-cache path offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from adl_jax.models.adapters import check_base
from adl_jax.models.generate import generate
from adl_jax.models.load import load_model, load_pair, loaded_base
from adl_jax.models.transformer import LowRankUpdate, forward
from adl_jax.sharding import make_mesh
from conftest import left_padded_batch, random_texts, tiny_hf_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
jit_forward = jax.jit(forward, static_argnames="cfg")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_base(family, path):
    """A tiny random model with a tokenizer: a loadable model directory."""
    model = tiny_hf_model(family, path)
    tiny_tokenizer().save_pretrained(path)
    return model


def save_adapter(base_dir, path, seed=1, **lora):
    """A peft LoRA with random non-zero A and B over the model saved at `base_dir`; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()  # base_model_name_or_path = base_dir
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora)).eval()
    model.save_pretrained(path)
    return model


def torch_logits(model, tokens, valid, positions):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(valid.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.numpy()


def our_logits(model, tokens, valid):
    return np.asarray(jit_forward(model.params, jnp.asarray(tokens), model.cfg, valid=jnp.asarray(valid)).logits)


CASES = {
    "llama-all": ("llama", dict(r=4, lora_alpha=8, target_modules=ALL)),
    "qwen2-patterns": (
        "qwen2",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=ALL,
            rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 6},
            alpha_pattern={"v_proj": 3.0, "layers.2.self_attn.o_proj": 32.0},
        ),
    ),
    "gemma3-rslora": ("gemma3_text", dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "down_proj"])),
    "mistral-some-layers": ("mistral", dict(r=2, lora_alpha=5, target_modules=ALL, layers_to_transform=[0, 2])),
}


@pytest.mark.parametrize("case", CASES)
def test_unmerged_adapter_matches_peft(case, tmp_path, rng):
    family, lora = CASES[case]
    tiny_base(family, tmp_path / "base")
    peft_model = save_adapter(tmp_path / "base", tmp_path / "adapter", **lora)
    base, ft = load_pair(str(tmp_path / "base"), str(tmp_path / "adapter"))
    tokens, valid, positions = left_padded_batch(rng, ft.cfg.vocab_size, lengths=(12, 8, 5))

    want = torch_logits(peft_model, tokens, valid, positions)
    got = our_logits(ft, tokens, valid)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)
    shift = np.abs(our_logits(base, tokens, valid) - want)[valid].max()
    assert shift > 1e-2  # the adapter changes the logits: the comparison above can fail
    adapted = {k for k, v in ft.params["layers"].items() if isinstance(v, LowRankUpdate)}
    assert adapted == {m.removesuffix("_proj") for m in lora["target_modules"]}


def test_adapter_holds_one_copy_of_the_base_sharded_or_not(tmp_path, rng):
    """The finetuned model's weights are the base's own arrays: the distinct device buffers of both models come
    to the base's bytes plus the adapter's; on a mesh, logits equal the single-device ones."""
    tiny_base("llama", tmp_path / "base")
    save_adapter(tmp_path / "base", tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL)
    base, ft = load_pair(str(tmp_path / "base"), str(tmp_path / "adapter"))
    assert loaded_base(str(tmp_path / "adapter"), [ft, base]) is base  # what `adl sweep bases` shares
    assert loaded_base(str(tmp_path / "base"), [base]) is None

    def buffers(tree):
        return {
            s.data.unsafe_buffer_pointer(): s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
        }

    adapter = sum(x.nbytes for x in load_file(tmp_path / "adapter" / "adapter_model.safetensors").values())
    assert sum({**buffers(base.params), **buffers(ft.params)}.values()) == sum(buffers(base.params).values()) + adapter

    tokens, valid, _ = left_padded_batch(rng, ft.cfg.vocab_size, lengths=(12, 8, 5))
    mesh = make_mesh("data=1,fsdp=2,model=4")
    _, sharded = load_pair(str(tmp_path / "base"), str(tmp_path / "adapter"), mesh=mesh)
    assert sharded.params["layers"]["up"].b.sharding.spec == jax.sharding.PartitionSpec(None, None, "model")
    np.testing.assert_allclose(our_logits(sharded, tokens, valid), our_logits(ft, tokens, valid), atol=1e-5)


@pytest.fixture
def adapter_dir(tmp_path):
    tiny_base("llama", tmp_path / "base")
    save_adapter(tmp_path / "base", tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    return tmp_path / "adapter"


def _edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(use_dora=True), "DoRA"),
        (dict(modules_to_save=["lm_head"]), "modules_to_save"),
        (dict(peft_type="IA3"), "only LoRA"),
        (dict(bias="lora_only"), "bias='lora_only'"),
        (dict(lora_bias=True), "lora_bias"),
        (dict(init_lora_weights="pissa"), "alters the base weights"),
        (dict(rank_pattern={"up_proj": 3}), r"rank 3 \(its config\)"),
    ],
)
def test_unsupported_adapters_are_refused(adapter_dir, changes, message):
    _edit_config(adapter_dir, **changes)
    with pytest.raises(ValueError, match=message):
        load_model(str(adapter_dir))


def test_tensors_not_consumed_are_refused(adapter_dir):
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = np.ones((4, 128), np.float32)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match="1 tensor.*embed_tokens.lora_embedding_A"):
        load_model(str(adapter_dir))
    del tensors["base_model.model.model.embed_tokens.lora_embedding_A"]
    del tensors["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"]
    save_file(tensors, weights)
    with pytest.raises(ValueError, match="layers.1.mlp.up_proj has only one of lora_A and lora_B"):
        load_model(str(adapter_dir))


def test_base_mismatch_and_missing_weights_are_named(adapter_dir):
    _edit_config(adapter_dir, base_model_name_or_path="org/Other-Model")
    with pytest.raises(ValueError, match="trained on 'org/Other-Model'.*base given is '/nowhere/tiny'"):
        load_model(str(adapter_dir), base="/nowhere/tiny")  # refused before the base is looked for
    for same in ("org/other-model-Reference", "ORG/Meta-Other-Model"):  # Together AI's and Meta's own names
        check_base(adapter_dir, same, "/models/other-model")
    local_copy = shutil.copytree(adapter_dir.parent / "base", adapter_dir.parent / "other-model")
    assert load_model(str(adapter_dir), base=str(local_copy)).cfg.family == "llama"  # a local copy of the named base
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="an adapter without weights"):
        load_model(str(adapter_dir), base=str(adapter_dir.parent / "base"))


def tiny_gemma3_multimodal(path, seed=0):
    """A tiny random Gemma3ForConditionalGeneration (text decoder and vision tower), saved by transformers."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
        sliding_window=5,
        sliding_window_pattern=2,
        query_pre_attn_scalar=24,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        final_logit_softcapping=3.0,  # which Gemma3ForConditionalGeneration does not apply
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(vision, patch_size=14),
        mm_tokens_per_image=4,
        image_token_index=127,
        boi_token_index=125,
        eoi_token_index=126,
        eos_token_id=[2, 124],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return model


def test_gemma3_multimodal_text_decoder_matches_transformers(tmp_path, rng):
    model = tiny_gemma3_multimodal(tmp_path)
    ours = load_model(str(tmp_path))
    assert ours.cfg.eos_token_ids == (2, 124)  # the top-level (end-of-turn) EOS wins over the text config's
    tokens, valid, positions = left_padded_batch(rng, 120, lengths=(12, 8, 5))  # no image tokens
    np.testing.assert_allclose(
        our_logits(ours, tokens, valid)[valid], torch_logits(model, tokens, valid, positions)[valid], atol=1e-4
    )
    prompts = [rng.randint(3, 120, n).tolist() for n in (9, 4, 6)]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=(ids != 0).long(), do_sample=False, max_new_tokens=20, pad_token_id=0)
    want = want[:, width:].numpy()  # rows that stop at an EOS are padded with 0, as ours are
    got = generate(ours.params, ours.cfg, prompts, max_new_tokens=20)
    np.testing.assert_array_equal(got.tokens, np.pad(want, ((0, 0), (0, 20 - want.shape[1]))))


def test_adapter_of_a_gemma3_multimodal_model_matches_peft(tmp_path, rng):
    """PEFT's q_proj/down_proj targets hit the vision tower too: those adapters are skipped, the text ones applied."""
    from peft import LoraConfig, get_peft_model

    model = tiny_gemma3_multimodal(tmp_path / "base")
    torch.manual_seed(1)
    lora = LoraConfig(init_lora_weights=False, r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    peft_model = get_peft_model(model, lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    names = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("vision_tower" in n for n in names) and any("language_model" in n for n in names)
    _, ft = load_pair(str(tmp_path / "base"), str(tmp_path / "adapter"))
    tokens, valid, positions = left_padded_batch(rng, 120, lengths=(12, 8, 5))
    want = torch_logits(peft_model, tokens, valid, positions)
    np.testing.assert_allclose(our_logits(ft, tokens, valid)[valid], want[valid], atol=1e-4)


def _hub_entry(cache: Path, repo_id: str, files: Path) -> None:
    """One repository in the layout huggingface_hub reads from its cache: snapshots/<commit>/ and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 39 + str(len(repo_id) % 10)
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_of_adapter_and_base_resolve_offline_from_the_hub_cache(tmp_path, rng):
    tiny_base("qwen3", tmp_path / "base")
    peft_model = save_adapter(tmp_path / "base", tmp_path / "adapter", r=4, lora_alpha=16, target_modules=ALL)
    _edit_config(tmp_path / "adapter", base_model_name_or_path="org/tiny")
    _hub_entry(tmp_path / "hub", "org/tiny", tmp_path / "base")
    _hub_entry(tmp_path / "hub", "org/tiny-adapter", tmp_path / "adapter")
    tokens, valid, positions = left_padded_batch(rng, 128, lengths=(12, 8, 5))
    np.save(tmp_path / "tokens.npy", tokens)
    script = (
        "import sys, jax.numpy as jnp, numpy as np; from adl_jax.models.load import load_model; "
        "m = load_model('org/tiny-adapter'); t = np.load(sys.argv[1]); "
        "from adl_jax.models.transformer import forward; "
        "np.save(sys.argv[2], forward(m.params, jnp.asarray(t), m.cfg, valid=jnp.asarray(t != 0)).logits)"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", script, tmp_path / "tokens.npy", tmp_path / "logits.npy"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    want = torch_logits(peft_model, tokens, valid, positions)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy")[valid], want[valid], atol=1e-4)


def test_plan_counts_an_adapter_audit_as_the_loader_places_it(tmp_path):
    """`adl plan --adapter-rank`'s weight rows equal the bytes one device holds for base and adapted model."""
    from adl_jax.experiments.plan import Run, plan

    tiny_base("llama", tmp_path / "base")
    save_adapter(tmp_path / "base", tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL)
    mesh = make_mesh("data=2,fsdp=2,model=2")
    base, ft = load_pair(str(tmp_path / "base"), str(tmp_path / "adapter"), mesh=mesh)
    device = mesh.devices.flat[0]
    held = {
        s.data.unsafe_buffer_pointer(): s.data.nbytes
        for x in jax.tree.leaves((base.params, ft.params))
        for s in x.addressable_shards
        if s.device == device
    }
    rows = plan(ft.cfg, "v5e-8", "data=2,fsdp=2,model=2", Run.of(dtype="float32", adapter_rank=4)).rows
    counted = rows["weights (base, shared by the adapter)"][0] + rows["PEFT adapter (rank 4, f32)"][0]
    assert sum(held.values()) == counted
    full = plan(ft.cfg, "v5e-8", "data=2,fsdp=2,model=2", Run.of(dtype="float32")).rows["weights (base + finetuned)"]
    assert counted < full[0]


def test_delta_of_the_unmerged_adapter_equals_that_of_peft_merged_model(tmp_path, rng):
    """ADL's delta over a corpus with the adapter applied unmerged equals the delta of the model peft merges."""
    from adl_jax.method.adl import diff

    tiny_base("qwen3", tmp_path / "base")
    peft_model = save_adapter(tmp_path / "base", tmp_path / "adapter", r=4, lora_alpha=8, target_modules=ALL)
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    tiny_tokenizer().save_pretrained(tmp_path / "merged")
    base, ft = load_pair(str(tmp_path / "base"), str(tmp_path / "adapter"))
    texts = random_texts(rng, 80)
    kw = dict(texts=texts, samples=40, n=8, batch_size=8, progress=False)
    unmerged = diff(base, ft, out=tmp_path / "unmerged", **kw).diff.delta
    merged = diff(base, load_model(str(tmp_path / "merged")), out=tmp_path / "merged_run", **kw).diff.delta
    np.testing.assert_allclose(unmerged, merged, atol=1e-5)
    assert np.abs(merged).max() > 1e-2
