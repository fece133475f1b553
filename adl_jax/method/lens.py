"""Reading delta as tokens: the logit lens and the token-identity patchscope (the paper's settings).

Logit lens: softmax(unembed(final_norm(v))) with the finetuned model's norm and head.
Patchscope: unit(v) * ft_norm * scale replaces the residual after layer l at the last token ("?") of
three token-identity prompts; a token counts only if it is in the top-16384 of all three prompts; the
probabilities are averaged over prompts and the top-20 kept. The tokens before the last are the same
for every patch (causal attention), so they run once into a KV cache; every scale x prompt for a vector
is then one batched forward of the last token alone.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.method.diff import DiffResult
from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import Model
from adl_jax.models.transformer import Intervention, KVCache, forward, unembed

PATCHSCOPE_PROMPTS = (
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "921 -> 921\ntarget -> target\nanna -> anna\n?",
)
PATCHSCOPE_SCALES = (
    tuple(round(0.5 + 0.1 * i, 1) for i in range(16))
    + (3.0, 4.0, 5.0, 10.0)
    + tuple(float(s) for s in range(20, 201, 20))
)


@dataclasses.dataclass
class TokenScores:
    """A ranked token list: ids, decoded strings and probabilities (highest first)."""

    ids: list[int]
    tokens: list[str]
    probs: list[float]

    def to_json(self):
        return [[t, i, round(p, 6)] for t, i, p in zip(self.tokens, self.ids, self.probs)]

    @classmethod
    def from_arrays(cls, ids, probs, tokenizer) -> TokenScores:
        ids = [int(i) for i in ids]
        return cls(ids, [tokenizer.decode([i]) for i in ids], [float(p) for p in probs])


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` over the last axis with k clamped to its size: a vocabulary may be smaller than k."""
    return jax.lax.top_k(x, min(k, x.shape[-1]))


def _kth_largest(x: jax.Array, k: int) -> jax.Array:
    """The k-th largest value along the last axis (k clamped to its size), for x >= 0 without NaN: equal to
    `_top_k(x, k)[0][..., -1:]`, found without sorting. Non-negative float32s order like their bit patterns
    as int32, so a bisection over the bits (31 passes of a count) lands exactly on the largest t with
    count(x >= t) >= k, which is the k-th largest value. XLA's top_k with a large k sorts the whole axis."""
    k = min(k, x.shape[-1])
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    lo = jnp.zeros((*x.shape[:-1], 1), jnp.int32)  # count(x >= lo) >= k always
    hi = jnp.full_like(lo, 0x7F800001)  # above +inf: count(x >= hi) == 0 < k

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits >= mid, axis=-1, keepdims=True) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, step, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "top"))
def _lens_top(params, vectors, *, cfg: ModelConfig, top: int):
    probs = jax.nn.softmax(unembed(params, vectors, cfg), axis=-1)
    return _top_k(probs, top)


def logit_lens(
    params, cfg: ModelConfig, vectors: np.ndarray, tokenizer, top: int = 100, chunk: int = 256, bar=None
) -> list[TokenScores]:
    """Top tokens of softmax(unembed(final_norm(v))) for each row of `vectors` (P, D), `chunk` rows per call so
    that thousands of control vectors never hold all their vocabulary-wide logits at once. The last chunk is
    padded with copies of its first row, so every chunk of a long read has one compiled shape. `bar`: a
    progress bar (tqdm) advanced by each chunk's vectors."""
    chex.assert_shape(vectors, (None, cfg.hidden_size))
    vectors = np.asarray(vectors, np.float32)
    out = []
    for start in range(0, len(vectors), chunk):
        v = vectors[start : start + chunk]
        pad = chunk - len(v) if len(vectors) > chunk else 0
        probs, ids = _lens_top(params, jnp.asarray(np.concatenate([v, np.repeat(v[:1], pad, 0)])), cfg=cfg, top=top)
        out += [TokenScores.from_arrays(i, p, tokenizer) for i, p in zip(np.asarray(ids)[: len(v)], np.asarray(probs))]
        if bar is not None:
            bar.update(len(v))
    return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prefix_cache(params, tokens, valid, *, cfg: ModelConfig) -> KVCache:
    """Keys and values of every prompt's tokens before its last, (Q, T) prompts -> a cache of T slots with the
    first T-1 filled. The patch edits the last token only, so under causal attention these are the same for
    every vector, scale and layer: they are computed once, and each patched row runs only its last token."""
    Q, T = tokens.shape
    cache = KVCache.empty(cfg, Q, T, params["embed"].dtype)
    final = cfg.num_layers - 1
    return forward(params, tokens[:, :-1], cfg, valid=valid[:, :-1], cache=cache, until_layer=final).cache


def _prompts(params, cfg: ModelConfig, tokenizer, prompts) -> tuple[KVCache, jax.Array]:
    """The prompts left-padded (each one's final token in the last column): their `_prefix_cache` and their
    final tokens (Q,)."""
    tokens, valid = pad_batch([tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts])
    return _prefix_cache(params, jnp.asarray(tokens), jnp.asarray(valid), cfg=cfg), jnp.asarray(tokens[:, -1])


def _patched_final(params, vector, norm, cache, last, at, *, cfg: ModelConfig, layers):
    """(Q, D): the final hidden state of each prompt's last token `last` (Q,), reading the prompts'
    `_prefix_cache`, with unit(vector) * norm patched in after layer `at`, one of the static `layers`. `at` is
    data, so that vectors patched at different layers share one compiled forward (an edit at each of
    `layers`, applied only at the vector's own)."""
    Q = last.shape[0]
    rows = jnp.broadcast_to(norm * vector / jnp.linalg.norm(vector), (Q, vector.shape[-1]))
    edits = tuple(
        Intervention(layer=x, mode="replace", vector=rows, weight=jnp.ones((Q, 1)) * (at == x)) for x in layers
    )
    final = cfg.num_layers - 1
    return forward(
        params, last[:, None], cfg, cache=cache, interventions=edits, capture=(final,), until_layer=final
    ).hidden[final][:, -1]


def _read_patched(logits, *, keep: int, top: int) -> tuple[jax.Array, jax.Array]:
    """One patched vector's reading from its prompts' logits (Q, V): the top ids and their probability
    averaged over the prompts, among the tokens in every prompt's `keep` most probable."""
    probs = jax.nn.softmax(logits, axis=-1)
    threshold = _kth_largest(probs, keep)  # each prompt's keep-th largest probability
    in_all = jnp.all(probs >= threshold, axis=0)
    top_probs, top_ids = _top_k(jnp.where(in_all, probs.mean(axis=0), 0.0), top)
    return top_ids, top_probs


def patchscope(
    params,
    cfg: ModelConfig,
    tokenizer,
    vectors: np.ndarray,
    layer: int,
    norm: float,
    *,
    scales=PATCHSCOPE_SCALES,
    prompts=PATCHSCOPE_PROMPTS,
    keep: int = 16384,
    top: int = 20,
) -> list[dict[float, TokenScores]]:
    """For each vector (P, D): {scale: top tokens}. The patched vector is unit(v) * norm * scale.
    Every (vector, scale) pair is one reading of `patchscope_each`, all in one forward (up to 160 pairs a
    call): a call's fixed cost (splitting the stacked layer weights at the patch layer, some 0.3 s on a CPU)
    is paid once, not once per vector."""
    vectors = np.asarray(vectors, np.float32)
    scales = tuple(scales)
    pairs = len(vectors) * len(scales)
    norms = np.float32(norm) * np.tile(np.asarray(scales, np.float32), len(vectors))
    read = patchscope_each(
        params,
        cfg,
        tokenizer,
        np.repeat(vectors, len(scales), axis=0),
        layer,
        norms,
        prompts=prompts,
        keep=keep,
        top=top,
        chunk=min(pairs, 160),
    )
    return [dict(zip(scales, read[i * len(scales) : (i + 1) * len(scales)])) for i in range(len(vectors))]


@functools.partial(jax.jit, static_argnames=("cfg", "layers", "keep", "top", "per_step"))
def _patchscope_many(params, vectors, norms, cache, last, at, *, cfg: ModelConfig, layers, keep, top, per_step):
    """The reading of each of `vectors` (N, D) at its own norm (N,) and layer `at` (N,): one batched forward
    and one vocabulary-wide matmul for all, then `per_step` vectors' readings at a time (None: all at once).
    On a CPU, two at a time: the 31 passes of `_kth_largest` over their (Q, V) probabilities then run in
    cache, where over all N they ran at the memory's pace (5 vectors x 30 scales of Gemma-3-270M, 2 cores:
    3.3 -> 2.0 s)."""
    patched = functools.partial(_patched_final, cfg=cfg, layers=layers)
    h = jax.vmap(patched, in_axes=(None, 0, 0, None, None, 0))(params, vectors, norms, cache, last, at)
    read = functools.partial(_read_patched, keep=keep, top=top)
    return jax.lax.map(read, unembed(params, h, cfg), batch_size=per_step or len(vectors))


def patchscope_each(
    params,
    cfg: ModelConfig,
    tokenizer,
    vectors: np.ndarray,
    layer: int | np.ndarray,
    norms: np.ndarray,
    *,
    prompts=PATCHSCOPE_PROMPTS,
    keep: int = 16384,
    top: int = 20,
    chunk: int | None = None,
    bar=None,
) -> list[TokenScores]:
    """The patchscope of each vector (N, D) at one norm each (N,), `chunk` vectors per forward pass: the
    batched reading that control vectors need by the hundred, and `patchscope` each vector at many scales.
    `layer`: one layer for all, or each vector's own (N,) (a layer profile), still one compiled forward.
    The last chunk is padded with copies of its first row, so every chunk has one compiled shape. By default
    128 vectors a chunk: a call's fixed cost (some 0.2 s on a CPU, splitting the stacked layer weights at the
    patch layer) then weighs little (110 vectors: 1.5 s in one chunk, 3.1 s in chunks of 16). `bar`: a progress
    bar (tqdm) advanced per chunk."""
    cache, last = _prompts(params, cfg, tokenizer, prompts)
    vectors, norms = np.asarray(vectors, np.float32), np.asarray(norms, np.float32)
    chunk = chunk or 128
    at = np.broadcast_to(np.asarray(layer, np.int32), norms.shape)
    layers = tuple(sorted({int(x) for x in at}))
    out = []
    for start in range(0, len(vectors), chunk):
        v, n, a = (x[start : start + chunk] for x in (vectors, norms, at))
        pad = chunk - len(v) if len(vectors) > chunk else 0
        v, n, a = (np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in (v, n, a))
        ids, probs = _patchscope_many(
            params,
            jnp.asarray(v),
            jnp.asarray(n),
            cache,
            last,
            jnp.asarray(a),
            cfg=cfg,
            layers=layers,
            keep=keep,
            top=top,
            per_step=2 if next(iter(params["embed"].devices())).platform == "cpu" else None,
        )
        rows = len(v) - pad
        out += [TokenScores.from_arrays(i, p, tokenizer) for i, p in zip(np.asarray(ids)[:rows], np.asarray(probs))]
        if bar is not None:
            bar.update(rows)
    return out


_JUNK = re.compile(r"^[\W_]*$")


def gradable(tokens: TokenScores) -> list[int]:
    """Indices of tokens worth judging: not punctuation/whitespace only, no '->' or '=>' (prompt echoes)."""
    return [i for i, t in enumerate(tokens.tokens) if not _JUNK.match(t.strip()) and "->" not in t and "=>" not in t]


def embedding_coherence(rows: dict[int, np.ndarray], tokens: TokenScores, center: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the gradable tokens' input embeddings (`rows`, see `embedding_rows`),
    centred on `center`.

    The offline stand-in for the paper's LLM tournament: words from one domain sit closer together in
    embedding space than a scatter of unrelated tokens. Centring removes the direction all embeddings share.
    """
    keep = [tokens.ids[i] for i in gradable(tokens)]
    if len(keep) < 2:
        return 0.0
    emb = np.stack([rows[i] for i in keep]) - center
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True) + 1e-12
    n = len(keep)
    return float(((emb @ emb.T).sum() - n) / (n * (n - 1)))


def embedding_rows(params, ids) -> dict[int, np.ndarray]:
    """The input embeddings of `ids`, float32 on the host, gathered in one device call whose index is padded
    to a multiple of 256: one compiled gather for any number of ids, where one per number cost seconds."""
    unique = sorted({int(i) for i in ids})
    index = np.zeros(-(-max(len(unique), 1) // 256) * 256, np.int32)
    index[: len(unique)] = unique
    return dict(zip(unique, np.asarray(params["embed"][jnp.asarray(index)], np.float32)))


def mean_embedding(params) -> np.ndarray:
    """The mean input embedding: the centre `embedding_coherence` measures from."""
    return np.asarray(jnp.mean(params["embed"].astype(jnp.float32), axis=0))


def select_scale(params, by_scale: dict[float, TokenScores], center: np.ndarray | None = None) -> float:
    """The unsupervised rule: the scale whose tokens are most coherent in embedding space. `center`: the
    `mean_embedding`, when the caller has it already."""
    center = mean_embedding(params) if center is None else center
    rows = embedding_rows(params, [i for ts in by_scale.values() for i in ts.ids])
    return max(by_scale, key=lambda s: embedding_coherence(rows, by_scale[s], center))


LENS = "lens.json"


@dataclasses.dataclass
class LensResult:
    """Per position: logit lens of delta, -delta and the two means; patchscope of delta at every scale."""

    positions: list[dict]

    def to_json(self) -> dict:
        def conv(x):
            if isinstance(x, TokenScores):
                return x.to_json()
            if isinstance(x, dict):
                return {str(k): conv(v) for k, v in x.items()}
            return x

        return {"positions": [conv(p) for p in self.positions]}

    @classmethod
    def from_json(cls, d: dict) -> LensResult:
        def conv(x):
            if isinstance(x, list) and x and isinstance(x[0], list):
                return TokenScores([r[1] for r in x], [r[0] for r in x], [r[2] for r in x])
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            return x

        return cls([conv(p) for p in d["positions"]])

    def table(self, top: int = 8) -> str:
        lines = []
        for p in self.positions:
            s = p["patchscope_scale"]
            lines.append(f"position {p['position']}")
            lines.append(f"  logit lens  delta : {_fmt(p['logit_lens']['delta'], top)}")
            lines.append(f"  logit lens -delta : {_fmt(p['logit_lens']['neg_delta'], top)}")
            lines.append(f"  patchscope @ {s:<5}: {_fmt(p['patchscope'][str(s)], top)}")
        return "\n".join(lines)


def _fmt(ts: TokenScores, top: int) -> str:
    return "  ".join(repr(t) for t in ts.tokens[:top])


def read_lenses(base: Model, ft: Model, result: DiffResult, *, scales=PATCHSCOPE_SCALES, top: int = 100) -> LensResult:
    """Logit lens (finetuned model's norm + head) and patchscope for every analysed position."""
    layer = result.meta["layer"]
    ll = logit_lens(
        ft.params,
        ft.cfg,
        np.concatenate([result.delta, -result.delta, result.mean_base, result.mean_ft]),
        ft.tokenizer,
        top=top,
    )
    k = len(result.delta)
    ps = patchscope(ft.params, ft.cfg, ft.tokenizer, result.delta, layer, result.ft_norm, scales=scales)
    center = mean_embedding(ft.params)
    positions = []
    for j in range(k):
        chosen = select_scale(ft.params, ps[j], center)
        positions.append(
            {
                "position": j,
                "delta_norm": float(np.linalg.norm(result.delta[j])),
                "logit_lens": {
                    "delta": ll[j],
                    "neg_delta": ll[k + j],
                    "base_mean": ll[2 * k + j],
                    "ft_mean": ll[3 * k + j],
                },
                "patchscope": {str(s): v for s, v in ps[j].items()},
                "patchscope_scale": chosen,
                "patchscope_scale_rule": "embedding coherence (offline)",
            }
        )
    return LensResult(positions)
