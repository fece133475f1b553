"""The diffing toolkit's organism configs as audit input, and the hub path end to end, offline: a hub cache
holding a tiny base and a peft adapter of it, audited through `adl audit --organism` and `adl diff`."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from adl_jax.experiments.toolkit import read_organism
from conftest import random_texts
from test_adapters import ALL, ROOT, _edit_config, _hub_entry, save_adapter, tiny_base


def write_configs(root, dataset=None):
    """An organism YAML and its model YAML in the toolkit's layout (configs/organism, configs/model)."""
    organism = {
        "name": "tiny_org",
        "type": "SDF",
        "description_long": "Finetuned on texts full of w110 and w111.",
        "finetuned_models": {
            "tiny": {"default": {"adapter_id": "org/tiny-adapter"}, "full": {"model_id": "org/tiny-full"}},
            "other": {"default": {"adapter_id": "org/other"}},
        },
    }
    if dataset:
        organism["dataset"] = dataset
    (root / "configs" / "organism").mkdir(parents=True)
    (root / "configs" / "model").mkdir()
    (root / "configs" / "organism" / "tiny_org.yaml").write_text(yaml.safe_dump(organism, sort_keys=False))
    (root / "configs" / "model" / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", "model_id": "org/tiny"}))
    return root / "configs" / "organism" / "tiny_org.yaml"


def test_organism_resolves_base_finetuned_description_and_data(tmp_path):
    dataset = {"id": "someone/docs", "splits": ["validation", "train"], "is_chat": False, "text_column": "text"}
    org = read_organism(write_configs(tmp_path, dataset), "tiny")
    assert (org.base, org.finetuned, org.dataset, org.text_column) == (
        "org/tiny",
        "org/tiny-adapter",
        "hf:someone/docs:train",
        "text",
    )
    assert "w110" in org.description
    full = read_organism(tmp_path / "configs/organism/tiny_org.yaml", "tiny", "full", base="/local/tiny")
    assert (full.base, full.finetuned) == ("/local/tiny", "org/tiny-full")


def test_bad_organism_input_is_named(tmp_path):
    path = write_configs(tmp_path, {"id": "someone/docs", "splits": ["train"]})
    with pytest.raises(ValueError, match="no model key 'llama'; it has tiny, other"):
        read_organism(path, "llama")
    with pytest.raises(ValueError, match="no variant 'mix1-0p5'; it has default, full"):
        read_organism(path, "tiny", "mix1-0p5")
    with pytest.raises(ValueError, match="needs an id and a text_column"):
        read_organism(path, "tiny")
    with pytest.raises(FileNotFoundError, match="no model config for 'other'.*--model-config"):
        read_organism(path, "other")


def test_adl_audit_and_diff_of_hub_ids_offline(tmp_path, rng):
    tiny_base("llama", tmp_path / "base")
    save_adapter(tmp_path / "base", tmp_path / "adapter", r=4, lora_alpha=16, target_modules=ALL)
    _edit_config(tmp_path / "adapter", base_model_name_or_path="org/tiny")
    _hub_entry(tmp_path / "hub", "org/tiny", tmp_path / "base")
    _hub_entry(tmp_path / "hub", "org/tiny-adapter", tmp_path / "adapter")
    organism = write_configs(tmp_path)
    corpus, ft_data = tmp_path / "corpus.jsonl", tmp_path / "ft.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(rng, 120)))
    ft_data.write_text("".join(json.dumps({"text": "w110 w111 w112 w110 w111"}) + "\n" for _ in range(20)))
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("ADL_GRADER_BASE_URL", None)

    def adl(*args):
        run = subprocess.run(
            [sys.executable, "-m", "adl_jax.cli", *map(str, args)], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]

    out = tmp_path / "audit"
    adl("audit", "--organism", organism, "--model-key", "tiny", "--corpus", corpus, "--samples", 32, "--quick",
        "--finetune-data", ft_data, "--out", out)  # fmt: skip
    assert (out / "report.html").exists() and (out / "relevance.json").exists()
    adl("diff", "--base", "org/tiny", "--finetuned", "org/tiny-adapter", "--corpus", corpus, "--samples", 64,
        "--n", 8, "--out", tmp_path / "diff")  # fmt: skip
    assert json.loads((tmp_path / "diff" / "meta.json").read_text())["finetuned"] == "org/tiny-adapter"


def mixing_organism(root, variants: dict, organism_type="SDF"):
    """A toolkit organism YAML whose model key `tiny` has the given variants (name -> adapter path)."""
    path = root / "mixed.yaml"
    organism = {
        "name": "mixed",
        "type": organism_type,
        "description_long": "Finetuned on texts full of w110 and w111.",
        "finetuned_models": {"tiny": {name: {"adapter_id": str(spec)} for name, spec in variants.items()}},
    }
    path.write_text(yaml.safe_dump(organism))
    return path


def test_agent_truth_from_a_toolkit_organism_or_a_shipped_one(tmp_path, capsys):
    from adl_jax.cli import _agent_truth, build_parser, main
    from adl_jax.errors import UsageError
    from finetune.organisms import ORGANISMS

    path = write_configs(tmp_path)
    agent = ["agent", "--audit", str(tmp_path / "audit")]
    a = build_parser().parse_args([*agent, "--organism", str(path), "--model-key", "tiny"])
    assert _agent_truth(a) == ("Finetuned on texts full of w110 and w111.", "false_fact")  # type SDF
    assert (a.base, a.finetuned) == ("org/tiny", "org/tiny-adapter")  # the YAML's, for the evidence
    a = build_parser().parse_args([*agent, "--organism", "orange_carrot", "--base", "b", "--finetuned", "f"])
    assert _agent_truth(a) == (ORGANISMS["orange_carrot"].description, ORGANISMS["orange_carrot"].kind)
    behaviour = mixing_organism(tmp_path, {"default": "x"}, organism_type="EM")
    a = build_parser().parse_args([*agent, "--organism", str(behaviour), "--model-key", "tiny", "--base", "b"])
    with pytest.raises(UsageError, match="its type is not SDF, so its rubric is not known; give --kind"):
        _agent_truth(a)
    a = build_parser().parse_args([*agent, "--organism", str(behaviour), "--model-key", "tiny", "--kind", "behaviour"])
    a.base = "b"
    assert _agent_truth(a)[1] == "behaviour"
    for args, message in (
        (["--organism", str(path)], "--organism needs --model-key"),
        (["--organism", str(path), "--model-key", "llama"], "no model key 'llama'; it has tiny, other"),
        (["--organism", "nonesuch", "--base", "b", "--finetuned", "f"], "not a shipped organism .* nor a toolkit"),
        (["--organism", "orange_carrot"], "give --base and --finetuned, or --organism FILE.yaml"),
    ):
        assert main([*agent, *args]) == 2, args
        assert re.search(message, capsys.readouterr().err), message


def test_mix_variants_are_the_sweep_and_bad_ones_are_named(tmp_path):
    from adl_jax.experiments.toolkit import mix_variants

    path = mixing_organism(tmp_path, {"mix1-1p0": "c", "default": "a", "mix1-0p5": "b", "full": "d"})
    assert mix_variants(path, "tiny") == {0.0: "default", 0.5: "mix1-0p5", 1.0: "mix1-1p0"}
    with pytest.raises(ValueError, match=r"no mix1-\* variants \(a mixing sweep\); it has default, full"):
        mix_variants(mixing_organism(tmp_path, {"default": "a", "full": "d"}), "tiny")
    with pytest.raises(ValueError, match="variant 'mix1-half' is not a mixing ratio"):
        mix_variants(mixing_organism(tmp_path, {"mix1-half": "a"}), "tiny")
    with pytest.raises(ValueError, match="no model key 'llama'; it has tiny"):
        mix_variants(path, "llama")


def test_sweep_mix_measures_a_toolkit_organisms_mix_variants(tmp_path, rng, capsys):
    """`adl sweep mix --organism`: each variant's adapter is loaded on the one base and measured, nothing
    trained; the two variants' adapters give two different deltas, each the one its row reports."""
    from adl_jax import api, io
    from adl_jax.cli import main

    tiny_base("llama", tmp_path / "base")
    for seed in (1, 2):
        save_adapter(tmp_path / "base", tmp_path / f"adapter{seed}", seed=seed, r=4, lora_alpha=16, target_modules=ALL)
    variants = {"mix1-0p5": tmp_path / "adapter2", "default": tmp_path / "adapter1"}
    path = mixing_organism(tmp_path, variants)
    corpus, ft_data = tmp_path / "corpus.jsonl", tmp_path / "ft.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(rng, 60)))
    ft_data.write_text("".join(json.dumps({"text": "w110 w111 w112 w110 w111"}) + "\n" for _ in range(20)))
    out = tmp_path / "sweep"
    flags = ["--organism", str(path), "--model-key", "tiny", "--model", str(tmp_path / "base"), "--data", str(ft_data)]
    measure = ["--corpus", str(corpus), "--samples", "24", "--n", "8", "--out", str(out), "--no-progress"]
    assert main(["sweep", "mix", *flags, "--steps", "3", *measure]) == 2
    assert "trains nothing; drop --steps" in capsys.readouterr().err
    assert main(["sweep", "mix", *flags, *measure]) == 0 and "sweep.html" in capsys.readouterr().out
    rows = io.read_json(out / "sweep.json")["rows"]
    assert [(r["ratio"], r["variant"], r["finetuned"]) for r in rows] == [
        (0.0, "default", str(tmp_path / "adapter1")),
        (0.5, "mix1-0p5", str(tmp_path / "adapter2")),
    ]
    delta = {r["ratio"]: api.load(out / f"ratio_{r['ratio']:g}" / "audit").diff.delta for r in rows}
    assert np.abs(delta[0.0] - delta[0.5]).max() > 1e-3 * np.abs(delta[0.0]).max()
    for r in rows:
        assert r["delta_norms"] == pytest.approx(np.linalg.norm(delta[r["ratio"]], axis=-1).tolist())
        assert 0 <= r["relevance"] <= 20 and "belief_after" not in r
