"""`adl diff` / `adl lens` end to end on tiny HF directories (config + safetensors + tokenizer)."""

import json

import numpy as np
import pytest

from adl_jax import api
from adl_jax.cli import main
from conftest import random_texts, tiny_tokenizer
from conftest import tiny_pair


@pytest.fixture
def tiny_dirs(tmp_path, rng):
    tiny_pair(tmp_path)
    for name in ("base", "ft"):
        tiny_tokenizer().save_pretrained(tmp_path / name)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(rng, 120)))
    return tmp_path, corpus


def test_adl_diff_then_lens(tiny_dirs, capsys):
    root, corpus = tiny_dirs
    out = root / "run"
    argv = [
        "diff",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(corpus),
        "--samples",
        "64",
        "--n",
        "8",
        "--batch-size",
        "16",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "position 4" in printed and "patchscope @" in printed
    assert {"delta.safetensors", "meta.json", "lens.json", "tokens.npy"} <= {p.name for p in out.iterdir()}
    res = api.load(out)
    assert res.diff.delta.shape == (5, 64) and res.diff.meta["layer"] == 1  # int(0.5 * (3 - 1))
    assert len(res.lenses.positions[0]["logit_lens"]["delta"].tokens) == 100
    assert len(res.lenses.positions[0]["patchscope"]) == 30
    # Same run again: reused; another layer in the same directory: refused with a clear message.
    assert main(argv) == 0
    assert main(argv + ["--layer", "0"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["lens", str(out), "--top", "3"]) == 0
    assert capsys.readouterr().out.count("logit lens  delta") == 5


def test_clear_errors(tiny_dirs, capsys):
    root, corpus = tiny_dirs
    assert main(["diff", "--base", str(root / "nope"), "--finetuned", str(root / "ft"), "--corpus", str(corpus)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    argv = [
        "diff",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(corpus),
        "--samples",
        "5000",
        "--n",
        "8",
        "--out",
        str(root / "r2"),
    ]
    assert main(argv) == 2
    assert "usable texts" in capsys.readouterr().err


def test_adl_audit_quick(tiny_dirs, tmp_path, monkeypatch, capsys):
    root, corpus = tiny_dirs
    monkeypatch.delenv("ADL_GRADER_BASE_URL", raising=False)
    monkeypatch.delenv("ADL_GRADER_MODEL", raising=False)
    ft_data = tmp_path / "ft.jsonl"
    ft_data.write_text("".join(json.dumps({"text": "w110 w111 w112 w110 w111"}) + "\n" for _ in range(20)))
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(corpus),
        "--samples",
        "32",
        "--quick",
        "--finetune-data",
        str(ft_data),
        "--description",
        "w110 words",
        "--layer",
        "0",
        "--layers",
        "all",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judges"] == "offline" and summary["layer"] == 0
    profile = summary["layer_profile"]  # read at layer 0 (--layer), profiled at every layer
    assert [r["layer"] for r in profile["layers"]] == [0, 1, 2] and (
        profile["read_layer"],
        profile["middle_layer"],
    ) == (0, 1)
    assert main(["report", str(out)]) == 0
    # `adl steer RUN --layer 2` steers at layer 2 with the run's delta at layer 2
    from adl_jax.experiments.steer import run_vector
    from adl_jax.method.steer import steering_vector

    res = api.load(out).diff
    vector, layer, _ = run_vector(out, 1, 2)
    np.testing.assert_array_equal(vector, steering_vector(res.delta_layers[2, 1], res.ft_norm_layers[2]))
    assert layer == 2 and not np.allclose(vector, run_vector(out, 1)[0])
    steer = [
        "steer",
        str(out),
        "--layer",
        "2",
        "--prompt",
        "w5 w6",
        "--new-tokens",
        "2",
        "--json",
        str(tmp_path / "s.json"),
    ]
    assert main(steer) == 0 and json.loads((tmp_path / "s.json").read_text())["layer"] == 2


def test_adl_ablate(tiny_dirs, tmp_path, capsys):
    root, corpus = tiny_dirs
    ft_data = tmp_path / "ft.jsonl"
    ft_data.write_text("".join(json.dumps({"text": "w110 w111 w112 w110 w111"}) + "\n" for _ in range(6)))
    out = tmp_path / "ablate"
    argv = [
        "ablate",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(corpus),
        "--finetune-data",
        str(ft_data),
        "--positions",
        "0-2",
        "--controls",
        "3",
        "--texts",
        "6",
        "--max-tokens",
        "24",
        "--delta-samples",
        "32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "p=2" in printed and "finetune (CE" in printed and "pretrain (CE" in printed
    result = json.loads((out / "ablation.json").read_text())
    assert result["positions"] == [0, 1, 2] and len(result["datasets"]["finetune"]["random"]["1"]["all"]) == 3
    assert "<svg" in (out / "ablation.html").read_text()


def test_an_adl_process_keeps_compiled_programs_in_the_adl_cache(tmp_path, monkeypatch):
    """`adl` as a process (argv None) sets jax's persistent compilation cache under $ADL_CACHE, unless
    JAX_COMPILATION_CACHE_DIR chose one; main() called from Python (argv given) leaves jax's config alone."""
    import jax

    from adl_jax.cli import persist_compilations

    monkeypatch.setenv("ADL_CACHE", str(tmp_path))
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert main(["plan", "--model", "Qwen3-0.6B", "--devices", "cpu"]) in (0, 2)
        assert not jax.config.jax_compilation_cache_dir
        persist_compilations()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
        persist_compilations()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
