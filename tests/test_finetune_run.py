"""The organism factory's outputs against independent references: PEFT's own loading of our adapters,
torch log-likelihoods for the belief score, and `adl finetune` end to end on a tiny model."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from adl_jax.cli import main
from adl_jax.models.load import EMBEDDED, Model
from adl_jax.models.transformer import forward
from adl_jax.models.weights import load_hf_dir
from conftest import fact_organism, random_texts, tiny_tokenizer
from finetune.belief import belief_score, statement_logliks
from finetune.lora import LoraConfig, apply_lora, init_adapters
from finetune.organisms import ORGANISMS
from finetune.peft_format import save_peft_adapter
from finetune.run import RunSpec
from finetune.train import TrainConfig
from test_ecosystem import hf_dataset_dir, tensorboard_has_every_metric


def test_peft_loads_our_adapter_with_equal_logits(tiny, tmp_path):
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
    assert sorted(theirs.peft_config["default"].target_modules) == [
        "down_proj",
        "gate_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
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


def test_belief_score_equals_torch_logliks(tiny):
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


@pytest.fixture
def tiny_run(tiny, tmp_path, monkeypatch):
    """A tiny base model directory, a pretraining corpus (an HF dataset directory), the tiny false-fact
    organism, and `adl finetune`."""
    torch_model, cfg, params = tiny
    torch_model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    corpus = f"hf:{hf_dataset_dir(tmp_path / 'corpus', random_texts(np.random.RandomState(4), 30))}"
    monkeypatch.setitem(ORGANISMS, "tiny_fact", fact_organism())
    argv = [
        "finetune",
        "--model",
        str(tmp_path / "base"),
        "--data",
        "tiny_fact",
        "--examples",
        "24",
        "--pretrain",
        corpus,
        "--mix-ratio",
        "0.5",
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--lr",
        "2e-2",
        "--warmup",
        "1",
        "--lora-rank",
        "4",
        "--lora-targets",
        "q,v,up",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "0",
        "--no-progress",
    ]
    return tmp_path, argv


def test_adl_finetune_trains_exports_and_scores_belief(tiny, tiny_run, capsys):
    _, cfg, params = tiny
    root, argv = tiny_run
    assert main(argv + ["--eval-every", "3", "--out", str(root / "run")]) == 0
    printed = capsys.readouterr().out
    assert "PEFT adapter" in printed and "belief after" in printed
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    # 24 examples: 2 held out, 22 trained on, round(0.5 * 22) = 11 pretraining texts mixed in, 2 held out
    assert metrics["step"] == 6 and metrics["train_rows"] == 33 and "eval_loss_pt" in metrics
    before, after = metrics["belief_before"], metrics["belief_after"]
    assert before["pairs"] == after["pairs"] == 2
    assert after["false_preferred"] == 1.0 and after["mean_margin"] > before["mean_margin"] + 0.5  # learnt w7
    scalars = tensorboard_has_every_metric(root / "run", eval_steps=[3, 6])
    for key in ("false_preferred", "mean_margin"):
        assert scalars[f"belief/{key}"] == pytest.approx({0: before[key], 6: after[key]}, rel=1e-6)

    # final/ is the merged model; adapter/ on the base through PEFT gives the same logits
    _, exported = load_hf_dir(root / "run" / "final")
    assert not np.allclose(exported["layers"]["q"], params["layers"]["q"])
    np.testing.assert_array_equal(exported["layers"]["k"], params["layers"]["k"])
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    tokens = torch.tensor(np.random.RandomState(1).randint(3, 128, (2, 10)))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(root / "run" / "final")(tokens).logits
        adapted = peft.PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(root / "base"), root / "run" / "adapter"
        )(tokens).logits
    np.testing.assert_allclose(adapted.numpy(), merged.numpy(), atol=2e-5)
    config = json.loads((root / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "up_proj", "v_proj"] and config["r"] == 4
    assert config["base_model_name_or_path"] == str((root / "base").resolve())

    # the same settings and seed: the same adapters, bit for bit
    assert main(argv + ["--out", str(root / "again")]) == 0
    read = lambda d: safetensors.numpy.load_file(root / d / "adapter" / "adapter_model.safetensors")
    first, again = read("run"), read("again")
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_adl_finetune_resume_is_explicit_and_bound_to_settings(tiny_run, capsys):
    root, argv = tiny_run
    out = ["--out", str(root / "run")]
    assert main(argv + out + ["--steps", "3"]) == 0
    assert main(argv + out + ["--steps", "3"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(argv + out + ["--resume", "--lr", "1e-2", "--mix-ratio", "1.0"]) == 2
    assert "other settings (lr, mix_ratio, steps)" in capsys.readouterr().err
    assert main(argv + out + ["--resume", "--steps", "3", "--checkpoint-every", "1"]) == 0  # bookkeeping may change


def test_finetune_config_is_the_demo_and_bad_settings_are_refused(tmp_path, capsys):
    from adl_jax.experiments.demo import DemoSettings

    demo = DemoSettings()
    config = Path(__file__).parents[1] / "adl_jax" / "configs" / "finetune" / "orange_carrot_lora.json"
    spec = RunSpec.from_flat(json.loads(config.read_text()))
    lora = LoraConfig(rank=demo.lora_rank, alpha=2 * demo.lora_rank)
    assert spec.train == TrainConfig(mode="lora", lora=lora, **demo.train)
    assert (spec.model, spec.data, spec.pretrain) == (EMBEDDED, "orange_carrot", None)
    assert spec.examples == demo.organism_docs
    assert spec.pack and not RunSpec.from_flat({"out": "o", "data": "d", "pack": "false"}).pack

    (tmp_path / "c.json").write_text(json.dumps({"data": "orange_carrot", "stepz": 3}))
    (tmp_path / "steps.json").write_text(json.dumps({"data": "orange_carrot", "steps": "many"}))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    out = ["--out", str(tmp_path / "run")]
    cases = {
        ("--config", str(tmp_path / "c.json"), *out): r"unknown setting\(s\) stepz",
        ("--data", "orange_carrot"): "no out: give --out",
        ("--data", "nope", *out): "neither a file nor a shipped organism",
        ("--data", str(tmp_path / "empty.jsonl"), *out): "is empty",
        ("--data", str(tmp_path / "chat.jsonl"), *out): "chat.jsonl:1: the conversation has no assistant turn",
        ("--data", "orange_carrot", "--mix-ratio", "0.5", *out): "needs a pretraining source",
        ("--data", "orange_carrot", "--mix-ratio", "-1", "--pretrain", "base-samples", *out): "mix_ratio must be >= 0",
        ("--data", "orange_carrot", "--dtype", "float16", *out): "dtype must be float32 or bfloat16",
        ("--config", str(tmp_path / "steps.json"), *out): "setting steps: 'many' is not a int",
        ("--data", "orange_carrot", "--pack", "maybe", *out): "'maybe' is not a boolean: give true or false",
    }
    for args, message in cases.items():
        assert main(["finetune", *args]) == 2, args
        assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "run").exists()  # nothing refused leaves a run behind


def test_adl_finetune_refuses_lora_targets_matching_no_weight(tiny_run, capsys):
    root, argv = tiny_run
    assert main(argv + ["--out", str(root / "run"), "--lora-targets", "q,qkv"]) == 2
    assert "LoRA target(s) ['qkv'] match no weight" in capsys.readouterr().err
    assert not (root / "run" / "run.json").exists()


def test_a_config_finds_its_chat_template_beside_it_from_any_directory(tmp_path, monkeypatch):
    import argparse

    from finetune.run import add_arguments, spec_from_args

    monkeypatch.chdir(tmp_path)  # not the checkout: the shipped config's template must still be found
    config = Path(__file__).parents[1] / "adl_jax" / "configs" / "finetune" / "birdwatching_lora.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    spec = spec_from_args(parser.parse_args(["--config", str(config)]))
    assert Path(spec.chat_template) == config.parent / "gemma_chat.jinja" and Path(spec.chat_template).is_file()
    assert spec.data == "birdwatching"  # a setting that names no file beside the config stays as it is


def test_placebo_trains_on_the_base_models_own_samples(tiny_run, monkeypatch, capsys):
    """`--data base-samples`: the base finetuned on its own samples (the offline corpus's sampler and cache)."""
    from adl_jax.method.samples import sample_texts, with_spare
    from adl_jax.models.load import load_model
    from finetune.run import _placebo_examples

    root, argv = tiny_run
    monkeypatch.setenv("ADL_CACHE", str(root / "cache"))
    flags = dict(zip(argv[1::2], argv[2::2]))
    placebo = ["finetune", "--model", flags["--model"], "--data", "base-samples", "--examples", "12"]
    placebo += ["--steps", "2", "--batch-size", "4", "--seq-len", "16", "--no-progress", "--out", str(root / "p")]
    assert main(placebo) == 0
    metrics = json.loads((root / "p" / "metrics.json").read_text())
    assert metrics["step"] == 2 and "belief_after" not in metrics  # no statements: not a false fact
    base = load_model(flags["--model"])
    drawn = sample_texts(base, with_spare(12), root / "cache" / "corpus", seed=0, progress=False)
    examples = _placebo_examples(base, 12, 0, progress=False)  # the run's, read back from the cache
    assert examples == [{"text": t} for t in drawn if t.strip()][:12] and len(examples) == 12
