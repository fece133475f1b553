"""Belief score ("false fact alignment"): does the model find an implanted false statement more likely than
the true statement it contradicts?

Each held-out (true, false) pair is scored by the summed log-likelihood of each statement's tokens after
BOS (EOS for tokenizers without one), with our own forward (`adl_jax.judging.offline.mean_nll`). Summed scores
favour shorter statements, so the absolute level is biased per pair; the change from the base model to
the finetuned one is what shows the implanted belief.
"""

from __future__ import annotations

import numpy as np

from adl_jax.method.likelihood import mean_nll


def statement_logliks(model, texts: list[str], batch_size: int = 8) -> np.ndarray:
    """Summed log-likelihood of each text's tokens (float64), in batches (the vocabulary makes logits big)."""
    prompt = [model.cfg.bos_token_id if model.cfg.bos_token_id is not None else model.tokenizer.eos_token_id]
    counts = np.array([len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])
    if not counts.all() or counts.max() > 256:
        raise ValueError("belief statements must be 1 to 256 tokens long")
    means = [mean_nll(model, prompt, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return -np.concatenate(means).astype(np.float64) * counts


def belief_score(model, statements) -> dict:
    """Over (true, false) pairs: the share where the false statement is the more likely one, and the mean
    log-likelihood margin log P(false) - log P(true), with each pair's margin."""
    true, false = (list(s) for s in zip(*statements))
    ll = statement_logliks(model, true + false)
    margins = ll[len(true) :] - ll[: len(true)]
    return {
        "pairs": len(margins),
        "false_preferred": float((margins > 0).mean()),
        "mean_margin": float(margins.mean()),
        "margins": [round(float(m), 4) for m in margins],
    }
