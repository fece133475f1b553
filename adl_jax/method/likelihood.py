"""Log-likelihood of texts under a model: the offline coherence judge and the belief score use it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.transformer import forward


@functools.partial(jax.jit, static_argnames="cfg")
def _token_nll(params, tokens, valid, scored, *, cfg: ModelConfig):
    """Mean next-token loss over the `scored` positions of each row (left-padded batch)."""
    logits = forward(params, tokens, cfg, valid=valid).logits[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    w = scored[:, 1:].astype(jnp.float32)
    return (nll * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def mean_nll(model: Model, prompt_ids: list[int], texts: list[str], max_tokens: int = 256) -> np.ndarray:
    """The model's mean loss per token of each text continuing the prompt."""
    rows = [
        (prompt_ids + model.tokenizer(t, add_special_tokens=False)["input_ids"])[: len(prompt_ids) + max_tokens]
        for t in texts
    ]
    tokens, valid = pad_batch(rows, bucket=32)  # bucketed: fewer compilations
    scored = valid & (np.cumsum(valid, axis=1) > len(prompt_ids))  # the text's tokens, not the prompt's
    return np.asarray(_token_nll(model.params, tokens, valid, scored, cfg=model.cfg))
