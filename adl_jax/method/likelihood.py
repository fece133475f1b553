"""Log-likelihood of texts under a model: the offline coherence judge and the belief score use it."""

from __future__ import annotations

import functools

import jax
import numpy as np

from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.loss import position_nll
from adl_jax.models.transformer import forward


@functools.partial(jax.jit, static_argnames="cfg")
def _target_nll(params, tokens, valid, rows, cols, weights, *, cfg: ModelConfig):
    """Per row of a left-padded batch: the summed loss of its tokens at (rows, cols), each predicted from the
    column before. Only those targets meet the vocabulary head: a judge's texts are half prompt and padding."""
    last = cfg.num_layers - 1
    h = forward(params, tokens, cfg, valid=valid, until_layer=last, capture=(last,)).hidden[last]
    nll = position_nll(params, h[rows, cols - 1][None], cfg, tokens[rows, cols][None])[0]
    return jax.ops.segment_sum(nll * weights, rows, num_segments=tokens.shape[0])


def mean_nll(model: Model, prompt_ids: list[int], texts: list[str], max_tokens: int = 256) -> np.ndarray:
    """The model's mean loss per token of each text continuing the prompt."""
    return continuation_nll(model, [prompt_ids] * len(texts), texts, max_tokens)


def continuation_nll(model: Model, prompts: list[list[int]], texts: list[str], max_tokens: int = 256) -> np.ndarray:
    """The model's mean loss per token of each text continuing its own prompt (token ids), in one batch."""
    rows = [
        (p + model.tokenizer(t, add_special_tokens=False)["input_ids"])[: len(p) + max_tokens]
        for p, t in zip(prompts, texts, strict=True)
    ]
    tokens, valid = pad_batch(rows, bucket=16)  # bucketed: fewer compilations
    before = np.array([len(p) for p in prompts])[:, None]
    scored = valid & (np.cumsum(valid, axis=1) > before)  # the text's tokens, not the prompt's
    scored[:, 0] = False  # nothing before it predicts it
    r, c = np.nonzero(scored)
    width = -(-max(len(r), 1) // 64) * 64  # as many targets as a bucket holds; the extra ones weigh 0
    weights = np.arange(width) < len(r)
    r, c = np.pad(r, (0, width - len(r))), np.pad(c, (0, width - len(c)), constant_values=1)
    sums = np.asarray(_target_nll(model.params, tokens, valid, r, c, weights.astype(np.float32), cfg=model.cfg))
    return sums / np.maximum(np.bincount(r[weights], minlength=len(rows)), 1)
