"""One pure-functional decoder for Llama 3.x, Qwen 2.5/3 and Gemma 2/3.

Params are a nested dict of arrays (layout below); the architecture is a static `ModelConfig`.
`forward` is a plain function, so `jit`, `grad`, `vmap` and sharding compose with it directly.

ADL needs three things a stock forward lacks, so they are arguments here:
  * `until_layer`: stop after that block and return residuals; later layers and logits are never built.
  * `capture`: return the residual stream after chosen blocks.
  * `interventions`: edits of the residual stream after a block, given as data (see `Intervention`).

The param layout (names, shapes, which families have which) is declared in `params.py`: per-layer
tensors are stacked along a leading `num_layers` axis and matrices are (in, out).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from adl_jax.models.config import ModelConfig

Params = dict
_NEG = -1e30  # large finite mask value: a fully masked row (left padding) stays finite


@flax.struct.dataclass
class Intervention:
    """An edit of the residual stream right after block `layer`.

    mode "add":       h <- h + w * vector
    mode "replace":   h <- vector where w > 0
    mode "component": h <- h + w * (value - h.u) u, with u = vector / |vector|: the component of h along u
                      is set to `value` (the base model's component for causal ablation; 0 projects it out).
    `vector` is (D,), (B, D) or (B, T, D); `weight` w is a (B, T) mask/scale (None = every position);
    `value` is (B, T). Per-row vectors make a batch of different edits one call (e.g. 16 steering alphas).
    """

    layer: int = flax.struct.field(pytree_node=False)
    mode: str = flax.struct.field(pytree_node=False)
    vector: jax.Array
    weight: jax.Array | None = None
    value: jax.Array | None = None

    def __call__(self, h: jax.Array) -> jax.Array:
        vec = self.vector.astype(jnp.float32)
        if vec.ndim == 2:
            vec = vec[:, None, :]
        w = jnp.ones(h.shape[:2], jnp.float32) if self.weight is None else self.weight.astype(jnp.float32)
        w = w[..., None]
        h32 = h.astype(jnp.float32)
        if self.mode == "add":
            out = h32 + w * vec
        elif self.mode == "replace":
            out = jnp.where(w > 0, jnp.broadcast_to(vec, h.shape), h32)
        elif self.mode == "component":
            u = vec / jnp.linalg.norm(vec, axis=-1, keepdims=True)
            current = jnp.sum(h32 * u, axis=-1, keepdims=True)
            target = jnp.zeros_like(current) if self.value is None else self.value.astype(jnp.float32)[..., None]
            out = h32 + w * (target - current) * u
        else:
            raise ValueError(f"unknown intervention mode {self.mode!r} (add | replace | component)")
        return out.astype(h.dtype)


@flax.struct.dataclass
class KVCache:
    """Fixed-length cache: keys/values of every layer, the position of each slot (-1 = empty), next slot."""

    k: jax.Array  # (L, B, S, K, hd)
    v: jax.Array
    pos: jax.Array  # (B, S) int32
    index: jax.Array  # () int32

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            pos=jnp.full((batch, length), -1, jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )


class ForwardOut(NamedTuple):
    logits: jax.Array | None  # (B, T, V) float32, None when stopped early
    hidden: dict[int, jax.Array]  # layer -> residual after that block (B, T, D)
    cache: KVCache | None


def rms_norm(x: jax.Array, w: jax.Array, cfg: ModelConfig) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
    return (y * (cfg.norm_offset + w.astype(jnp.float32))).astype(x.dtype)


def _rope_tables(inv_freq, positions: jax.Array, dtype):
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (B, T, hd/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def _apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


@flax.struct.dataclass
class LowRankUpdate:
    """A weight W + scale * A @ B used without forming it: x W + scale (x A) B. Training a LoRA this way
    costs no gradient of the full matrix; stacked over layers like W (A (L, in, r), B (L, r, out)).

    With `dropout` p and a PRNG key per layer (`dropout_key`, (L, 2)), the low-rank branch sees its input
    through PEFT's `lora_dropout`: x B(A(dropout(x))), each element of every token's input zeroed with
    probability p and the rest scaled by 1/(1-p); the x W branch sees x unchanged."""

    w: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = flax.struct.field(pytree_node=False)
    dropout_key: jax.Array | None = None
    dropout: float = flax.struct.field(pytree_node=False, default=0.0)

    def dropped(self, x: jax.Array) -> jax.Array:
        """`x` as the low-rank branch sees it (one layer's key: `dropout_key` (2,))."""
        if not self.dropout:
            return x
        keep = jax.random.bernoulli(self.dropout_key, 1.0 - self.dropout, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(x.dtype)


@jax.custom_vjp
def _low_rank(x, a, b):
    """(x A) B for x (B, T, in), A (in, r), B (r, out)."""
    return _low_rank_fwd(x, a, b)[0]


def _low_rank_fwd(x, a, b):
    xa = jnp.einsum("btd,dr->btr", x, a)
    return jnp.einsum("btr,rf->btf", xa, b), (x, a, b, xa)


def _low_rank_bwd(residuals, g):
    """The gradients autodiff would give, written as row-major matmuls over the flattened tokens:
    derived automatically, XLA on CPU transposes the (tokens, out) cotangent for dB, a copy that
    dominated the MLP's backward time in LoRA training."""
    x, a, b, xa = residuals
    flat = lambda t: t.reshape(-1, t.shape[-1])
    g_xa = jnp.einsum("btf,rf->btr", g, b)
    return jnp.einsum("btr,dr->btd", g_xa, a), flat(x).T @ flat(g_xa), flat(xa).T @ flat(g)


_low_rank.defvjp(_low_rank_fwd, _low_rank_bwd)


def _linear(x, w, b=None):
    if isinstance(w, LowRankUpdate):
        low = _low_rank(w.dropped(x), w.a.astype(x.dtype), w.b.astype(x.dtype))
        y = jnp.einsum("btd,df->btf", x, w.w) + w.scale * low
    else:
        y = jnp.einsum("btd,df->btf", x, w)
    return y if b is None else y + b


def _attention(x, p, cfg: ModelConfig, rope, mask, cache, layer):
    """x (B,T,D) -> (B,T,D). With a cache, this call's keys/values are written into it and read back whole."""
    B, T, _ = x.shape
    H, K, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = _linear(x, p["q"], p.get("q_bias")).reshape(B, T, H, hd)
    k = _linear(x, p["k"], p.get("k_bias")).reshape(B, T, K, hd)
    v = _linear(x, p["v"], p.get("v_bias")).reshape(B, T, K, hd)
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], cfg), rms_norm(k, p["k_norm"], cfg)
    q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
    if cache is not None:
        start = (layer, 0, cache.index, 0, 0)
        cache = cache.replace(
            k=jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), start),
            v=jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), start),
        )
        k, v = cache.k[layer].astype(x.dtype), cache.v[layer].astype(x.dtype)
    q = q.reshape(B, T, K, H // K, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * cfg.attn_scale
    if cfg.attn_softcap:
        scores = jnp.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H * hd)
    return _linear(out, p["o"], p.get("o_bias")), cache


def _mlp(x, p, cfg: ModelConfig):
    gate = _linear(x, p["gate"])
    act = jax.nn.silu(gate) if cfg.activation == "silu" else jax.nn.gelu(gate, approximate=True)
    return _linear(act * _linear(x, p["up"]), p["down"])


def _block(h, p, cfg: ModelConfig, local, ropes, masks, cache, layer):
    """One decoder block. `local` picks sliding-window mask and rope; it may be a traced bool (scan)."""
    pick = (
        (lambda a, b: a if local else b)
        if isinstance(local, bool)
        else (lambda a, b: jax.tree.map(lambda x, y: jnp.where(local, x, y), a, b))
    )
    attn, cache = _attention(rms_norm(h, p["attn_norm"], cfg), p, cfg, pick(*ropes), pick(*masks), cache, layer)
    if cfg.sandwich_norms:
        attn = rms_norm(attn, p["post_attn_norm"], cfg)
    h = h + attn
    mlp = _mlp(rms_norm(h, p["mlp_norm"], cfg), p, cfg)
    if cfg.sandwich_norms:
        mlp = rms_norm(mlp, p["post_mlp_norm"], cfg)
    return h + mlp, cache


def _attention_masks(cfg: ModelConfig, q_pos, k_pos, segments=None):
    """(local, global) boolean masks (B, T, S): causal by position, keys with position -1 are empty slots;
    with segment ids, a query sees only keys of its own segment (packed documents stay apart)."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    causal = (k_pos[:, None, :] >= 0) & (diff >= 0)
    if segments is not None:
        causal = causal & (segments[:, :, None] == segments[:, None, :])
    local = causal & (diff < cfg.sliding_window) if cfg.sliding_window else causal
    return local, causal


def embed(params: Params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    x = jnp.take(params["embed"], tokens, axis=0)
    if cfg.embed_scale is not None:
        x = x * jnp.asarray(cfg.embed_scale, dtype=x.dtype)
    return x


def lm_head(params: Params, cfg: ModelConfig) -> tuple[jax.Array, str]:
    """The output matrix and its einsum axes: the embedding "vd" when tied, else lm_head "dv"."""
    return (params["embed"], "vd") if cfg.tie_embeddings else (params["lm_head"], "dv")


def unembed(params: Params, h: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Final norm + LM head (+ Gemma 2's soft-cap), in float32. Also the logit lens's readout."""
    x = rms_norm(h, params["final_norm"], cfg)
    head, axes = lm_head(params, cfg)
    logits = jnp.einsum(f"...d,{axes}->...v", x, head, preferred_element_type=jnp.float32)
    if cfg.final_softcap:
        logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


def segment_positions(segments: jax.Array) -> jax.Array:
    """Positions (B, T) counted from the start of each run of equal segment ids: packed documents restart at 0."""
    index = jnp.arange(segments.shape[1])
    starts = jnp.concatenate([jnp.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


# What each block keeps for the backward pass: everything ("none"), the outputs of its weight matmuls with the
# rest (attention scores included) recomputed ("dots"), or only its input ("full").
REMAT = ("none", "dots", "full")


def forward(
    params: Params,
    tokens: jax.Array,
    cfg: ModelConfig,
    *,
    valid: jax.Array | None = None,
    segments: jax.Array | None = None,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    interventions: tuple[Intervention, ...] = (),
    capture: tuple[int, ...] = (),
    until_layer: int | None = None,
    remat: str = "none",
) -> ForwardOut:
    """Run the decoder on tokens (B, T).

    valid: (B, T) bool, False at (left) padding; positions default to the count of valid tokens before each.
    segments: (B, T) int, documents packed in a row (0 = padding): attention stays within a segment, positions
    restart at each segment and `valid` defaults to segments > 0.
    cache: when given, this call's keys/values are written at `cache.index` and attention reads the cache.
    until_layer: stop after that block; no later layer and no logits are computed.
    capture: blocks whose output residual to return, each within 0..the last block run.
    Interventions at a layer are applied before that layer's residual is captured.
    remat: one of `REMAT`, what each block keeps for the backward pass (training memory vs compute).
    """
    B, T = tokens.shape
    if remat not in REMAT:
        raise ValueError(f"remat must be one of {', '.join(REMAT)}, not {remat!r}")
    if segments is not None:
        if cache is not None:
            raise ValueError("packed segments are for training and scoring; decoding with a cache takes none")
        valid = segments > 0 if valid is None else valid
        positions = segment_positions(segments) if positions is None else positions
    if valid is None:
        valid = jnp.ones((B, T), bool)
    if positions is None:
        positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        if cache is not None:  # continue from the last position already in the cache
            positions = positions + jnp.max(cache.pos, axis=1, keepdims=True) + 1
    positions = positions.astype(jnp.int32)
    last = cfg.num_layers - 1 if until_layer is None else until_layer
    if not 0 <= last < cfg.num_layers:
        raise ValueError(f"until_layer={until_layer} is outside 0..{cfg.num_layers - 1}")
    for i in interventions:
        if not 0 <= i.layer <= last:
            raise ValueError(f"intervention at layer {i.layer} is outside 0..{last}")
    for layer in capture:
        if not 0 <= layer <= last:
            raise ValueError(f"capture of layer {layer} is outside 0..{last}, the blocks this call runs")

    k_pos = jnp.where(valid, positions, -1)
    if cache is not None:
        cache = cache.replace(pos=jax.lax.dynamic_update_slice(cache.pos, k_pos, (0, cache.index)))
        k_pos = cache.pos
    h = embed(params, tokens, cfg)
    ropes = tuple(_rope_tables(r.inv_freq(cfg.head_dim), positions, h.dtype) for r in (cfg.rope_local, cfg.rope_global))
    masks = _attention_masks(cfg, positions, k_pos, segments)

    hidden = {}
    boundaries = sorted({last, *capture, *(i.layer for i in interventions)})
    start = 0
    for end in boundaries:
        h, cache = _run_layers(h, params["layers"], cfg, start, end + 1, ropes, masks, cache, remat)
        for iv in interventions:
            if iv.layer == end:
                h = iv(h)
        if end in capture:
            hidden[end] = h
        start = end + 1
    if cache is not None:
        cache = cache.replace(index=cache.index + T)
    logits = unembed(params, h, cfg) if until_layer is None else None
    return ForwardOut(logits, hidden, cache)


def _checkpointed(block, remat: str):
    if remat == "none":
        return block
    return jax.checkpoint(
        block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "dots" else None
    )


def _run_layers(h, layers, cfg: ModelConfig, start, stop, ropes, masks, cache, remat="none"):
    """Blocks start..stop-1, unrolled in Python or as one lax.scan over the stacked weights."""
    if not cfg.scan_layers:
        for i in range(start, stop):
            p = jax.tree.map(lambda x: x[i], layers)
            block = _checkpointed(
                lambda h, p, c, i=i: _block(h, p, cfg, cfg.local_layers[i], ropes, masks, c, i), remat
            )
            h, cache = block(h, p, cache)
        return h, cache

    block = _checkpointed(lambda h, p, local, c, i: _block(h, p, cfg, local, ropes, masks, c, i), remat)

    def body(carry, xs):
        h, cache = carry
        p, local, i = xs
        return block(h, p, local, cache, i), None

    xs = (
        jax.tree.map(lambda x: x[start:stop], layers),
        jnp.asarray(cfg.local_layers[start:stop]),
        jnp.arange(start, stop),
    )
    (h, cache), _ = jax.lax.scan(body, (h, cache), xs)
    return h, cache
