"""Per-token differences, a second lens next to ADL that reads the models' outputs instead of their activations.

On a text, per token: KL(finetuned || base) of the two next-token distributions after it (where the finetune
disagrees with its base), and the tokens whose log-probability rose most, log p_ft - log p_base (the logit
difference less a per-position constant, so it ranks tokens as the logit difference does). Over a corpus: how
often each token is among a position's top risers, the diffing toolkit's logit-difference method, whose
ranking the audit scores for relevance like the lens tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.errors import require
from adl_jax.method.diff import check_pair
from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.transformer import forward

PROMOTED = "promoted_tokens.json"  # the audit's stage file


@functools.partial(jax.jit, static_argnames=("cfg", "top"))
def _differences(base_params, ft_params, tokens, valid, *, cfg: ModelConfig, top: int):
    """(B, T) KL(ft || base), and the (B, T, top) largest log-probability rises with their token ids."""
    log_base = jax.nn.log_softmax(forward(base_params, tokens, cfg, valid=valid).logits, axis=-1)
    log_ft = jax.nn.log_softmax(forward(ft_params, tokens, cfg, valid=valid).logits, axis=-1)
    rise = log_ft - log_base
    kl = jnp.sum(jnp.exp(log_ft) * rise, axis=-1)
    values, ids = jax.lax.top_k(rise, min(top, rise.shape[-1]))
    return kl, values, ids


@dataclasses.dataclass
class TokenDifferences:
    """One text: its tokens, and after each the KL of the next-token distributions and the top risers."""

    ids: list[int]
    tokens: list[str]
    kl: np.ndarray  # (T,) nats
    promoted_ids: np.ndarray  # (T, top) token ids, largest rise first
    rises: np.ndarray  # (T, top) log p_ft - log p_base of those tokens

    def to_json(self, tokenizer) -> list[dict]:
        names = _decoder(tokenizer)
        return [
            {
                "token": tok,
                "kl": float(kl),
                "promoted": [[names(i), round(float(r), 4)] for i, r in zip(ids, rises)],
            }
            for tok, kl, ids, rises in zip(self.tokens, self.kl, self.promoted_ids, self.rises)
        ]


def _decoder(tokenizer):
    return functools.lru_cache(maxsize=None)(lambda i: tokenizer.decode([int(i)]))


def text_ids(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids (BOS first, as the model reads text) of each text, cut to `max_tokens`."""
    require(max_tokens >= 2, "max_tokens", max_tokens, "give at least 2 tokens per text")
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in texts]
    require(all(ids), "text", "", "every text must hold at least one token")
    return ids


def differences(
    base: Model, ft: Model, texts: Sequence[str], *, top: int = 10, max_tokens: int = 256, batch_size: int = 8
) -> list[TokenDifferences]:
    """Per-token KL and top risers for each text, `batch_size` texts per forward pass of each model."""
    check_pair(base, ft)
    require(top >= 1, "top", top, "keep at least 1 promoted token per position")
    require(batch_size >= 1, "batch_size", batch_size, "must be at least 1")
    all_ids = text_ids(base.tokenizer, texts, max_tokens)
    names = _decoder(base.tokenizer)
    out = []
    for start in range(0, len(all_ids), batch_size):
        chunk = all_ids[start : start + batch_size]
        tokens, valid = pad_batch(chunk, bucket=16, pad_id=base.cfg.pad_token_id or 0)
        kl, rises, ids = map(np.asarray, _differences(base.params, ft.params, tokens, valid, cfg=base.cfg, top=top))
        for row, seq in enumerate(chunk):
            cut = slice(tokens.shape[1] - len(seq), None)  # left padding: the text is the last len(seq) columns
            out.append(TokenDifferences(seq, [names(i) for i in seq], kl[row, cut], ids[row, cut], rises[row, cut]))
    return out


def promoted_tokens(diffs: Sequence[TokenDifferences], tokenizer, keep: int = 100) -> dict:
    """The corpus view: tokens ranked by how many positions have them among their top risers (ties: by the
    larger mean rise), with the share of positions, the mean rise, and the mean KL over all positions."""
    counts: dict[int, int] = {}
    sums: dict[int, float] = {}
    for d in diffs:
        for i, r in zip(d.promoted_ids.ravel().tolist(), d.rises.ravel().tolist()):
            counts[i] = counts.get(i, 0) + 1
            sums[i] = sums.get(i, 0.0) + r
    positions = sum(len(d.kl) for d in diffs)
    ranked = sorted(counts, key=lambda i: (-counts[i], -sums[i] / counts[i], i))[:keep]
    names = _decoder(tokenizer)
    return {
        "texts": len(diffs),
        "positions": positions,
        "top_per_position": int(diffs[0].promoted_ids.shape[1]) if diffs else 0,
        "mean_kl": float(np.mean(np.concatenate([d.kl for d in diffs]))) if diffs else 0.0,
        "tokens": [
            {
                "token": names(i),
                "id": i,
                "count": counts[i],
                "share": counts[i] / positions,
                "mean_rise": sums[i] / counts[i],
            }
            for i in ranked
        ],
    }
