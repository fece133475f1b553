"""A miniature of `adl demo` end to end (tiny random model, two training steps), so the pipeline cannot
silently break: every stage runs, the verdict is printed, and a second run reuses every cached result."""

import re
from pathlib import Path

import numpy as np
import pytest

from adl_jax import io
from adl_jax.experiments.audit import AuditSettings
from adl_jax.experiments.demo import DemoSettings, run_demo
from adl_jax.judging.alpha_search import SteeringSettings
from adl_jax.judging.offline import dataset_overlap
from conftest import tiny_hf_model, tiny_tokenizer

MINI = DemoSettings(
    corpus_texts=24,
    sample_tokens=12,
    organism_docs=20,
    lora_rank=2,
    train=dict(steps=2, batch_size=4, seq_len=16, lr=1e-3, warmup=1, checkpoint_every=1, eval_every=0),
    audit=AuditSettings(
        n=8,
        batch_size=8,
        steer_positions=(1,),
        final_prompts=("w5 w6",),
        steering=SteeringSettings(
            first_steps=2, other_steps=1, samples=2, new_tokens=4, final_samples=2, final_tokens=4
        ),
    ),
)


def check_printed_findings(out: str, audit: Path, summary: dict) -> None:
    """What the demo prints is what the audit found: each position's patchscope tokens as lens.json holds
    them at the chosen scale, relevance recounted from those tokens, similarity as summary.json holds it;
    and delta is the trained model's (non-zero everywhere, the norms the summary states)."""
    lens = io.read_json(audit / "lens.json")["positions"]
    rel = summary["relevance"]
    printed_scopes = re.findall(r"^  patchscope @ (\S+)\s*: (.*)$", out, re.M)
    assert len(printed_scopes) == len(lens) == len(rel["positions"]) == MINI.audit.k
    for p, (scale, tokens), r in zip(lens, printed_scopes, rel["positions"]):
        assert float(scale) == p["patchscope_scale"] and r["position"] == p["position"]
        words = lambda scores: [t for t, _, _ in scores]
        scope = words(p["patchscope"][str(p["patchscope_scale"])])
        assert tokens == "  ".join(map(repr, scope[:10]))
        lists = (words(p["logit_lens"]["delta"]), scope, words(p["logit_lens"]["base_mean"]))
        counts = [dataset_overlap(ts[:20], rel["frequent_tokens"])[0] for ts in lists]
        assert (
            f"position {p['position']}: logit lens {counts[0]:2d}/20, patchscope {counts[1]:2d}/20, "
            f"baseline base mean {counts[2]:2d}/20" in out
        )
    for pos, rep in summary["similarity"].items():
        steered, unsteered = rep["steered_vs_finetune"]["similarity"], rep["unsteered_vs_finetune"]["similarity"]
        assert re.search(rf"position {pos}: steered {steered:.3f} ± \S+  unsteered {unsteered:.3f}", out)
    arrays = io.read_arrays(audit / "delta.safetensors")
    np.testing.assert_allclose(arrays["delta"], arrays["mean_ft"] - arrays["mean_base"], atol=1e-6)
    norms = np.linalg.norm(arrays["delta"], axis=-1)
    assert np.all(norms > 0) and np.allclose(norms, summary["delta_norms"])


def test_demo_miniature_end_to_end_and_cached(tmp_path, capsys, monkeypatch):
    from adl_jax.models.load import load_model

    tiny_hf_model("gemma3_text", tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    base = load_model(tmp_path / "base")
    import finetune.train as train_mod

    trained_on, real_train = [], train_mod.train  # the demo trains on its documents packed into full rows
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: trained_on.append(a[2]) or real_train(*a, **k))
    summary = run_demo(tmp_path / "cache", base=base, settings=MINI)
    (splits,) = trained_on
    assert splits.train.segments is not None and (splits.train.segments > 0).mean() > 0.9
    out = capsys.readouterr().out
    for line in ("1/4", "2/4", "3/4", "4/4", "Top patchscope / logit-lens tokens", "Relevance", "report:"):
        assert line in out, line
    assert re.search(r"Semantic relevance .*\n  position 0: logit lens +\d+/20, patchscope +\d+/20, p = ", out)
    run = tmp_path / "cache" / "orange_carrot" / "packed"
    assert (run / "audit" / "report.html").exists() and (run / "train" / "checkpoints" / "2").exists()
    assert summary["samples"] == MINI.corpus_texts and set(summary["alphas"]) == {"1"}
    check_printed_findings(out, run / "audit", summary)

    import adl_jax.experiments.audit as audit_mod

    monkeypatch.setattr(audit_mod, "find_alphas", lambda *a, **k: pytest.fail("steering was recomputed"))
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: pytest.fail("training was recomputed"))
    assert run_demo(tmp_path / "cache", base=base, settings=MINI)["alphas"] == summary["alphas"]
    with pytest.raises(ValueError, match="unknown organism"):
        run_demo(tmp_path / "cache", "no_such_organism", base=base, settings=MINI)
