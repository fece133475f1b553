"""A miniature of `adl demo` end to end (tiny random model, two training steps), so the pipeline cannot
silently break: every stage runs, the verdict is printed, and a second run reuses every cached result."""

import pytest

from adl_jax.experiments.audit import AuditSettings
from adl_jax.experiments.demo import DemoSettings, run_demo
from adl_jax.judging.alpha_search import SteeringSettings
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


def test_demo_miniature_end_to_end_and_cached(tmp_path, capsys, monkeypatch):
    from adl_jax.models.load import load_model

    tiny_hf_model("gemma3_text", tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    base = load_model(tmp_path / "base")
    summary = run_demo(tmp_path / "cache", base=base, settings=MINI)
    out = capsys.readouterr().out
    for line in ("1/4", "2/4", "3/4", "4/4", "Top patchscope / logit-lens tokens", "Relevance", "report:"):
        assert line in out, line
    run = tmp_path / "cache" / "orange_carrot"
    assert (run / "audit" / "report.html").exists() and (run / "train" / "checkpoints" / "2").exists()
    assert summary["samples"] == MINI.corpus_texts and set(summary["alphas"]) == {"1"}

    import adl_jax.experiments.audit as audit_mod
    import finetune.train as train_mod

    monkeypatch.setattr(audit_mod, "find_alpha", lambda *a, **k: pytest.fail("steering was recomputed"))
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: pytest.fail("training was recomputed"))
    assert run_demo(tmp_path / "cache", base=base, settings=MINI)["alphas"] == summary["alphas"]
    with pytest.raises(ValueError, match="unknown organism"):
        run_demo(tmp_path / "cache", "no_such_organism", base=base, settings=MINI)
