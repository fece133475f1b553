"""Batched autoregressive generation with a fixed-length KV cache, for steering experiments.

Steering adds alpha * delta to the residual stream at every position, prompt and generated tokens alike,
and compares many alphas side by side. So interventions are passed to every `forward` call, and per-row
vectors (B, D) let one batch carry one alpha per row.

Shape of a call: prompts are left-padded into one (B, P) batch, so every row's last prompt token sits in
the last column; one jitted prefill fills a cache of P + N - 1 slots (the N-th new token is never fed
back) and samples the first token; one jitted decode, with the cache donated, runs the remaining steps as
a `lax.while_loop` that stops once every row has emitted an EOS. The loop lives inside jit, not in
Python: a Python loop over a jitted step pays a dispatch per token plus a device-to-host sync to stop
early, and XLA runs the loop body faster than the same step as its own executable.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import Intervention, KVCache, Params, forward, unembed


class Generation(NamedTuple):
    tokens: jax.Array  # (B, N) int32 new tokens; pad_id after a row's EOS
    mask: jax.Array  # (B, N) bool, True up to and including the first EOS
    lengths: jax.Array  # (B,) int32, number of True entries in mask


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]] | tuple[jax.Array, jax.Array],
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    interventions: tuple[Intervention, ...] = (),
    eos_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    groups: Sequence[int] | None = None,
) -> Generation:
    """Generate `max_new_tokens` tokens for each prompt.

    prompts: token-id lists of any lengths (left-padded here), or `(tokens, valid)` already left-padded.
    temperature 0 is greedy; otherwise sample from softmax(logits / temperature) cut to the top-p nucleus,
    reproducibly for a given `key`. Interventions apply at every position of every step, so their arrays
    must not have a time axis longer than 1: vectors (D,), (B, D); weights/values None or (B, 1).
    eos_ids defaults to the config's; pad_id (prompt padding and filler after EOS) to its pad token, else 0.

    Several calls in one batch: `key` a (G,) array of keys and `groups` the G calls' row counts, in order.
    Each group's rows then take the random draws, and so the tokens, of a call of their own with their key,
    for the price of one large batch instead of G small ones. (Wherever the logits are the same: XLA:CPU's
    matmuls for a 160-row step can round otherwise than for 32 rows, and a text then parts at that token.)
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature=} {top_p=}")
    greedy = temperature == 0
    if key is None:
        if not greedy:
            raise ValueError("sampling (temperature > 0) needs a PRNG key")
        key = jax.random.key(0)  # unused by greedy decoding
    pad_id = (cfg.pad_token_id or 0) if pad_id is None else pad_id
    eos = jnp.asarray(cfg.eos_token_ids if eos_ids is None else tuple(eos_ids), jnp.int32).reshape(-1)
    if isinstance(prompts, tuple):
        tokens, valid = jnp.asarray(prompts[0], jnp.int32), jnp.asarray(prompts[1], bool)
    else:
        tokens, valid = _left_pad(prompts, pad_id)
    if not np.all(np.asarray(valid)[:, -1]):
        raise ValueError("prompts must be left-padded: every row's last column must be a valid token")
    _check_interventions(interventions)
    interventions = tuple(interventions)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key: the same stream, typed
    groups = _check_groups(key, groups, tokens.shape[0])

    sampling = (key.reshape(-1), jnp.float32(temperature), jnp.float32(top_p))
    how = (greedy, top_p < 1, groups)  # static: greedy, or sampling with or without a nucleus cut; the groups
    cache, first = _prefill(params, tokens, valid, interventions, sampling, cfg, how, max_new_tokens)
    out = jnp.full((tokens.shape[0], max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    out, _ = _decode(params, cache, out, interventions, sampling, eos, jnp.int32(pad_id), cfg, how)
    is_eos = jnp.isin(out, eos)
    lengths = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens).astype(jnp.int32)
    return Generation(out, jnp.arange(max_new_tokens) < lengths[:, None], lengths)


def top_p_filter(logits: jax.Array, top_p) -> jax.Array:
    """Set to -inf every logit outside the nucleus: the most likely tokens whose mass first reaches top_p.

    A token is kept iff the mass of strictly more likely tokens is below top_p (top_p = 1 keeps all), i.e.
    iff its probability is at least the smallest kept one. That cutoff is found by bisection over float32
    bit patterns (for p >= 0 they order like the floats, so 31 halvings are exact) instead of sorting the
    vocabulary, which XLA does slowly on CPU for a batch of large vocabularies.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def mass_above(bits):
        t = jax.lax.bitcast_convert_type(bits, jnp.float32)[..., None]
        return jnp.sum(jnp.where(probs > t, probs, 0.0), axis=-1)

    def halve(_, bounds):  # invariant: the cutoff's bit pattern lies in (lo, hi]
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        below = (mid > lo) & (mass_above(mid) < top_p)  # cutoff <= mid
        return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    start = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32)  # nothing above the max
    _, cutoff = jax.lax.fori_loop(0, 31, halve, (jnp.full_like(start, -1), start))  # -1: below 0.0
    keep = (probs >= jax.lax.bitcast_convert_type(cutoff, jnp.float32)[..., None]) | (top_p >= 1)
    return jnp.where(keep, logits, -jnp.inf)


# Candidates the nucleus is first sought among: the top-k of a 262k vocabulary costs a fraction of one
# full-vocabulary pass, and at the usual top_p the nucleus of a trained model is far smaller. A batch with a
# flat row (unconditional text often has one) is sampled by rejection instead.
PREFILTER = 256
PROPOSALS = 3  # whole-distribution draws per row before the exact bisection; each is in the nucleus w.p. >= top_p
STREAM = 2  # the sampler's version: bumped whenever the same key starts giving other tokens (caches hold it)
BLOCK = 512  # the full-vocabulary sampler's inverse CDF runs over block sums, then inside one block


def _pick(logits, step, sampling, greedy: bool, nucleus: bool, groups: tuple[int, ...]):
    """Next token per row: argmax, or a sample keyed by (group's key, step) so a run is reproducible.

    Sampling inverts the cumulative distribution in vocabulary order with uniform draws per row: exact,
    and unlike Gumbel-max it needs no random number per vocabulary entry (262k of them for Gemma) at every
    step. `nucleus` (top_p < 1, static) cuts the distribution to the top-p nucleus.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    keys, temperature, top_p = sampling
    draws = 1 + PROPOSALS if nucleus else 1
    u = jnp.concatenate(
        [jax.random.uniform(jax.random.fold_in(k, step), (n, draws), minval=1e-12) for k, n in zip(keys, groups)]
    )
    scaled = logits.astype(jnp.float32) / temperature
    if not nucleus:
        return _sample_full(scaled, u)[:, 0]
    return nucleus_sample(scaled, top_p, u, groups=groups)


def _whole_group(ok: jax.Array, groups: tuple[int, ...] | None) -> jax.Array:
    """Per row (B,): whether `ok` holds for every row of its group (of the whole batch without groups)."""
    if groups is None:
        return jnp.broadcast_to(jnp.all(ok), ok.shape)
    ids = np.repeat(np.arange(len(groups)), groups)
    return jax.ops.segment_min(ok.astype(jnp.int32), ids, len(groups), indices_are_sorted=True)[ids] > 0


def nucleus_sample(
    logits: jax.Array, top_p, u: jax.Array, prefilter: int = PREFILTER, groups: tuple[int, ...] | None = None
) -> jax.Array:
    """A token per row from softmax(logits) cut to its top-p nucleus (top_p_filter's), given uniforms u
    (B, 1 + PROPOSALS).

    The nucleus is sought among the `prefilter` most likely tokens first, and the token at quantile u[:, 0]
    taken. That is exact whenever the mass of the candidates strictly more likely than the least likely one
    reaches top_p: the cutoff probability is then above every token left out. Otherwise (a flat row) its
    whole group of rows (`groups`: row counts; default the whole batch) is sampled by
    `_nucleus_by_rejection`, so that a group's tokens never depend on the rows of another.
    """
    k = min(prefilter, logits.shape[-1])
    vals, ids = jax.lax.top_k(logits, k)  # sorted, most likely first
    # The max taken apart from top_k's values (the same number): with the logits feeding both, XLA's CPU
    # top_k became a full sort of every row.
    top = jnp.max(logits, axis=-1, keepdims=True)
    probs = jnp.exp(vals - top) / jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True)  # as top_p_filter's
    held = jnp.sum(jnp.where(probs > probs[:, -1:], probs, 0.0), axis=-1) >= top_p

    def among_candidates(_):
        above = jnp.cumsum(probs, axis=-1) - probs  # mass of the candidates before each one
        cutoff = jnp.take_along_axis(probs, jnp.sum(above < top_p, axis=-1, keepdims=True) - 1, axis=-1)
        weights = jnp.where(probs >= cutoff, probs, 0.0)
        order = jnp.argsort(ids, axis=-1)  # vocabulary order, as the full computation walks it
        weights, tokens = jnp.take_along_axis(weights, order, axis=-1), jnp.take_along_axis(ids, order, axis=-1)
        cdf = jnp.cumsum(weights, axis=-1)
        return jnp.take_along_axis(tokens, _first_reaching(weights, cdf, u[:, :1] * cdf[:, -1:]), axis=-1)[:, 0]

    def by_rejection(_):
        rejected = _nucleus_by_rejection(logits, top_p, u, groups)
        return jnp.where(_whole_group(held, groups), among_candidates(None), rejected)

    return jax.lax.cond(jnp.all(held), among_candidates, by_rejection, None)


def _nucleus_by_rejection(logits: jax.Array, top_p, u: jax.Array, groups: tuple[int, ...] | None) -> jax.Array:
    """Nucleus samples without finding the cutoff: draw from the whole distribution (at u[:, :PROPOSALS])
    and keep each row's first draw inside the nucleus, which a token is iff the mass of strictly more likely
    tokens is below top_p (one pass per draw, where the cutoff's bisection takes 31). The kept draw follows
    the nucleus distribution exactly. A group where some row has no draw inside takes the bisection for
    every row, at the unused uniform u[:, PROPOSALS], so that no row is biased by its own rejections.
    """
    draws = _sample_full(logits, u[:, :PROPOSALS])  # (B, PROPOSALS)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # as top_p_filter's
    drawn = jnp.take_along_axis(probs, draws, axis=-1)
    above = jnp.sum(jnp.where(probs[:, None, :] > drawn[:, :, None], probs[:, None, :], 0.0), axis=-1)
    inside = above < top_p
    kept = jnp.take_along_axis(draws, jnp.argmax(inside, axis=-1)[:, None], axis=-1)[:, 0]

    def bisection(_):
        return _sample_full(top_p_filter(logits, top_p), u[:, PROPOSALS:])[:, 0]

    found = _whole_group(jnp.any(inside, axis=-1), groups)
    return jax.lax.cond(jnp.all(found), lambda _: kept, lambda _: jnp.where(found, kept, bisection(None)), None)


def _sample_full(logits: jax.Array, u: jax.Array) -> jax.Array:
    """The tokens (B, R) at quantiles u (B, R) of softmax(logits) over the whole vocabulary, in vocabulary
    order.

    A cumulative sum over 262k entries is slow on CPU (XLA scans it in log steps), so each quantile is found
    among BLOCK-sized block sums first, then inside the one block it falls in.
    """
    B, V = logits.shape
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # -inf (cut) -> 0
    blocks = jnp.pad(weights, ((0, 0), (0, -V % BLOCK))).reshape(B, -1, BLOCK)
    sums = jnp.sum(blocks, axis=-1)
    cdf = jnp.cumsum(sums, axis=-1)
    target = u * cdf[:, -1:]
    block = _first_reaching(sums[:, None], cdf[:, None], target[..., None])[..., 0]
    before = jnp.where(block > 0, jnp.take_along_axis(cdf, jnp.maximum(block - 1, 0), axis=-1), 0.0)
    inside = jnp.take_along_axis(blocks, block[..., None], axis=1)  # (B, R, BLOCK)
    return block * BLOCK + _first_reaching(inside, jnp.cumsum(inside, axis=-1), (target - before)[..., None])[..., 0]


def _first_reaching(weights: jax.Array, cdf: jax.Array, target: jax.Array) -> jax.Array:
    """Index (..., 1) along the last axis of the first entry whose running total `cdf` reaches target
    (..., 1); leading axes broadcast.

    Float rounding can leave the total just short of it; the last entry of positive weight is taken then,
    never one of weight 0.
    """
    first = jnp.sum(cdf < target, axis=-1, keepdims=True)
    last_positive = weights.shape[-1] - 1 - jnp.argmax((weights > 0)[..., ::-1], axis=-1, keepdims=True)
    return jnp.minimum(first, last_positive).astype(jnp.int32)


@partial(jax.jit, static_argnames=("cfg", "how", "max_new_tokens"))
def _prefill(params, tokens, valid, interventions, sampling, cfg, how, max_new_tokens):
    B, P = tokens.shape
    cache = KVCache.empty(cfg, B, P + max_new_tokens - 1, params["embed"].dtype)
    last = cfg.num_layers - 1  # logits at the last prompt position only: (B, P, V) f32 would be GiBs at 262k vocab
    out = forward(
        params, tokens, cfg, valid=valid, cache=cache, interventions=interventions, capture=(last,), until_layer=last
    )
    return out.cache, _pick(unembed(params, out.hidden[last][:, -1], cfg), 0, sampling, *how)


@partial(jax.jit, static_argnames=("cfg", "how"), donate_argnames=("cache", "out"))
def _decode(params, cache, out, interventions, sampling, eos, pad_id, cfg, how):
    """Fill columns 1.. of `out`, feeding back the previous column; rows past their EOS get pad_id.

    The cache is returned only so that the donated input buffer can be aliased to it: the loop then
    updates it in place instead of holding a second cache-sized copy.
    """

    def body(state):
        step, cache, out, done = state
        prev = jax.lax.dynamic_slice_in_dim(out, step - 1, 1, axis=1)
        res = forward(params, prev, cfg, cache=cache, interventions=interventions)
        tok = jnp.where(done, pad_id, _pick(res.logits[:, -1], step, sampling, *how))
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], step, axis=1)
        return step + 1, res.cache, out, done | jnp.isin(tok, eos)

    def cond(state):
        step, _, _, done = state
        return (step < out.shape[1]) & ~jnp.all(done)

    state = (jnp.int32(1), cache, out, jnp.isin(out[:, 0], eos))
    _, cache, out, _ = jax.lax.while_loop(cond, body, state)
    return out, cache


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Left-padded to a multiple of 16 columns, so prompts of similar lengths share one compilation."""
    if not len(prompts) or min(map(len, prompts)) == 0:
        raise ValueError("need at least one prompt, and every prompt needs at least one token")
    tokens, valid = pad_batch(prompts, bucket=16, pad_id=pad_id)
    return jnp.asarray(tokens), jnp.asarray(valid)


def _check_groups(key, groups, rows: int) -> tuple[int, ...]:
    """The row counts of the calls a batch holds: one per key (a single key: one call of every row)."""
    keys = 1 if key.ndim == 0 else key.shape[0]
    groups = (rows,) if groups is None and keys == 1 else tuple(groups or ())
    if len(groups) != keys or sum(groups) != rows or min(groups) < 1:
        raise ValueError(
            f"groups {list(groups)} must give {keys} positive row count(s), one per key, summing to the {rows} prompts"
        )
    return groups


def _check_interventions(interventions) -> None:
    """Arrays with a time axis would fit the prompt only; generation needs edits that hold at every step."""
    for iv in interventions:
        timed = [a for a in (iv.weight, iv.value, iv.vector if iv.vector.ndim == 3 else None) if a is not None]
        if any(jnp.ndim(a) < 2 or a.shape[1] != 1 for a in timed):
            raise ValueError(
                f"intervention at layer {iv.layer} has per-position arrays; during generation use vectors "
                "(D,) or (B, D) and weights/values None or (B, 1), which apply at every position"
            )
