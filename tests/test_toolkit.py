"""The diffing toolkit's organism configs as audit input, and the hub path end to end, offline: a hub cache
holding a tiny base and a peft adapter of it, audited through `adl audit --organism` and `adl diff`."""

import json
import os
import subprocess
import sys

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
