"""`adl audit` of several organisms: the deltas in one pass, each organism's directory what a single audit
writes (its delta equal to a single-pair run's, the same lens tokens, nothing left for a later single audit
to compute), resumed after an interrupt, and a failing organism losing none of the others."""

import dataclasses
import shutil
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import adl_jax.experiments.audit as audit_mod
import adl_jax.method.diff as diff
from adl_jax import api, io
from adl_jax.experiments.audit import AuditSettings, audit
from adl_jax.experiments.audits import AuditsFailed, audits
from adl_jax.judging.alpha_search import SteeringSettings
from adl_jax.models.load import load_model
from conftest import random_texts, tiny_hf_model, tiny_tokenizer
from test_adapters import ALL, save_adapter

SMALL = AuditSettings(
    samples=32,
    n=8,
    batch_size=16,
    steer_positions=(1,),
    final_prompts=("w5 w6",),
    search_prompts=("w5 w6",),
    steer_model="base",  # the organisms' generations share the base's compiled sampler
    steering=SteeringSettings(first_steps=2, other_steps=2, samples=2, new_tokens=4, final_samples=1, final_tokens=4),
)
FT_TEXTS = ["w110 w111 w112 w110 w111"] * 20
STAGES = ("steering_references.json", "generations_unsteered.json", "steering_pos1.json", "relevance.json")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A tiny base, a PEFT LoRA of it and a full finetune, audited together."""
    root = tmp_path_factory.mktemp("audits")
    tiny_hf_model("gemma3_text", root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    save_adapter(root / "base", root / "lora", seed=1, r=4, lora_alpha=8, target_modules=ALL)
    tiny_hf_model("gemma3_text", root / "full", seed=3)
    tiny_tokenizer().save_pretrained(root / "full")
    base = load_model(str(root / "base"))
    organisms = {"lora": load_model(str(root / "lora"), base=base), "full": load_model(str(root / "full"))}
    texts = random_texts(np.random.RandomState(0), 100, vocab_size=100)
    kw = dict(texts=texts, settings=SMALL, finetune_texts={"lora": FT_TEXTS}, progress=False)
    summaries = audits(base, organisms, root / "multi", descriptions={"full": "a full finetune"}, **kw)
    return SimpleNamespace(root=root, base=base, organisms=organisms, texts=texts, summaries=summaries, kw=kw)


def test_each_organism_is_a_single_audit_and_its_delta_a_single_pair_run(audited, monkeypatch):
    root, multi = audited.root, audited.root / "multi"
    assert set(audited.summaries) == {"lora", "full"}
    assert audited.summaries["full"]["description"] == "a full finetune"
    assert (multi / "lora" / "relevance.json").exists() and not (multi / "full" / "relevance.json").exists()
    for name, ft in audited.organisms.items():
        run = api.load(multi / name)
        single = api.diff(
            audited.base, ft, texts=audited.texts, samples=32, n=8, batch_size=16, out=root / "single" / name
        )
        np.testing.assert_allclose(run.diff.delta, single.diff.delta, atol=1e-5)
        assert np.abs(run.diff.delta).max() > 1e-3
        for mine, theirs in zip(run.lenses.positions, single.lenses.positions):
            assert mine["logit_lens"]["delta"].tokens == theirs["logit_lens"]["delta"].tokens
            scale = str(mine["patchscope_scale"])
            assert mine["patchscope"][scale].tokens == theirs["patchscope"][scale].tokens
        for stage in ("summary.json", "report.html", "steering_pos1.json", "lens.json", "audit_settings.json"):
            assert (multi / name / stage).exists(), (name, stage)
    table = io.read_json(multi / "organisms.json")
    assert [r["name"] for r in table["organisms"]] == ["lora", "full"] and (multi / "organisms.html").exists()
    assert table["organisms"][0]["relevance"] is not None

    # A single audit of an organism's directory finds every stage done, its delta included.
    fail = lambda *a, **k: pytest.fail("a finished stage was recomputed")
    for module, name in ((diff, "_batch_sums"), (audit_mod, "find_alphas"), (audit_mod, "steered_batch")):
        monkeypatch.setattr(module, name, fail)
    again = audit(audited.base, audited.organisms["lora"], multi / "lora", **{**audited.kw, "finetune_texts": FT_TEXTS})
    assert again == audited.summaries["lora"]


def test_an_interrupted_job_resumes_to_the_same_files(audited, monkeypatch):
    """Interrupted in the second organism's steering, the rerun ends with the files of an uninterrupted job."""
    multi, out = audited.root / "multi", audited.root / "resumed"
    shutil.copytree(multi, out)  # the job as it was when the deltas and the first organism's audit were done
    for f in (out / "full").iterdir():
        if f.name not in ("delta.safetensors", "state.safetensors", "meta.json", "tokens.npy"):
            f.unlink()
    (out / "organisms.json").unlink()
    search = audit_mod.find_alphas
    monkeypatch.setattr(audit_mod, "find_alphas", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        audits(audited.base, audited.organisms, out, descriptions={"full": "a full finetune"}, **audited.kw)
    assert (out / "full" / "delta.safetensors").exists() and not (out / "full" / "steering_pos1.json").exists()
    monkeypatch.setattr(audit_mod, "find_alphas", search)
    monkeypatch.setattr(diff, "_batch_sums", lambda *a, **k: pytest.fail("a finished delta was recomputed"))
    audits(audited.base, audited.organisms, out, descriptions={"full": "a full finetune"}, **audited.kw)
    for name in ("lora", "full"):
        for stage in ("delta.safetensors", "lens.json", "summary.json", *STAGES[:3]):
            assert (out / name / stage).read_bytes() == (multi / name / stage).read_bytes(), (name, stage)


def test_a_failing_organism_loses_none_of_the_others(audited, monkeypatch, capsys):
    """A NaN organism and one whose stage raises are named at the end (exit 2 from the CLI); the others' results
    are written and the table lists them."""
    multi, out = audited.root / "multi", audited.root / "failing"
    for name in ("lora", "full"):
        shutil.copytree(multi / name, out / name)
    (out / "full" / "promoted_tokens.json").unlink()
    (out / "full" / "summary.json").unlink()
    nan = dataclasses.replace(
        audited.organisms["full"], params=jax.tree.map(lambda x: x * np.nan, audited.organisms["full"].params)
    )
    promoted = audit_mod.promoted

    def broken(base, ft, *a, **k):
        if ft is audited.organisms["full"]:
            raise RuntimeError("a stage broke")
        return promoted(base, ft, *a, **k)

    monkeypatch.setattr(audit_mod, "promoted", broken)
    with pytest.raises(AuditsFailed, match=r"2 organism\(s\) failed: full: RuntimeError: a stage broke; nan: NaN"):
        audits(audited.base, {**audited.organisms, "nan": nan}, out, **audited.kw)
    assert not (out / "nan" / "delta.safetensors").exists() and not (out / "full" / "summary.json").exists()
    assert [r["name"] for r in io.read_json(out / "organisms.json")["organisms"]] == ["lora"]
    assert (out / "lora" / "summary.json").read_bytes() == (multi / "lora" / "summary.json").read_bytes()


def test_adl_audit_of_several_organisms_maps_data_and_descriptions_by_name(audited, monkeypatch, capsys):
    """`adl audit --finetuned NAME=SPEC ...` hands every organism to one `audits` call, with --finetune-data and
    --description given to all or by NAME=; a single unnamed --finetuned stays the one-organism audit."""
    import adl_jax.experiments.audits as audits_mod
    from adl_jax import cli
    from adl_jax.cli import main

    root, calls = audited.root, []
    monkeypatch.setattr(audits_mod, "audits", lambda *a, **kw: calls.append((*a, kw)))
    planned = []
    monkeypatch.setattr(cli, "_mesh", lambda a, batch, run: planned.append(run))  # one device, as a test runs
    (root / "ft.txt").write_text("w110 w111 w112\n" * 3)
    (root / "organisms.txt").write_text(f"# the full finetune\nfull={root / 'full'}\n")
    argv = ["audit", "--base", str(root / "base"), "--corpus", str(root / "corpus.txt"), "--out", str(root / "cli")]
    argv += ["--finetuned", f"lora={root / 'lora'}", "--organisms", str(root / "organisms.txt"), "--quick"]
    (root / "corpus.txt").write_text("\n".join(audited.texts) + "\n")
    assert main([*argv, "--finetune-data", str(root / "ft.txt"), "--description", "full=weights"]) == 0
    ((base, models, out, kw),) = calls
    assert list(models) == ["lora", "full"] and out == str(root / "cli")
    assert models["lora"].params["embed"] is base.params["embed"]  # the adapter on the loaded base
    assert kw["finetune_texts"] == {name: ["w110 w111 w112"] * 3 for name in ("lora", "full")}
    assert kw["descriptions"] == {"full": "weights"} and kw["settings"] == AuditSettings.quick()
    # the mesh is planned for both organisms, the full finetune a whole copy (so the adapter is counted as one too)
    assert (planned[0].organisms, planned[0].adapter_rank) == (2, 0)

    bad = {
        ("--description", "x", "--description", "y"): "--description is given twice for every organism",
        ("--finetune-data", "lora=a", "--finetune-data", "lora=b"): "given twice for organism 'lora'",
        ("--organism", "x.yaml"): "--organism FILE.yaml audits one organism",
        ("--chat-before", "2"): "--chat-before 2: the chat variant audits one organism",
    }
    for extra, message in bad.items():
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err
