"""Next-token cross-entropy that never forms the (tokens x vocab) logits.

With Gemma's 262k vocabulary the logits of a 8 x 2,048 token batch are 17 GB in float32, more than the rest
of a step. Here the head runs over tiles of `chunk` positions of every row (the batch axis keeps its
sharding) in a `lax.scan`; each tile's logits give its losses and, when a gradient is wanted, at once its
gradients (softmax - one-hot, through the soft-cap), so the backward pass needs neither the logits nor
their recomputation. Peak memory of the head: a few tiles plus the head's own gradient.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import Params, lm_head, rms_norm

TILE_BYTES = 64 << 20  # float32 logits of one tile, all rows together


def next_token_nll(params: Params, h: jax.Array, cfg: ModelConfig, labels: jax.Array, weights: jax.Array):
    """sum over positions of weights * -log p(label | h), from the last block's residual h (B, T, D), float32;
    the final norm, head and soft-cap as `unembed` applies them."""
    chex.assert_equal_shape([labels, weights])
    x, head, axes, chunk = _head_tiles(params, h, cfg, labels)
    return tiled_nll(x, head, labels, weights.astype(jnp.float32), axes, cfg.final_softcap, chunk)


def position_nll(params: Params, h: jax.Array, cfg: ModelConfig, labels: jax.Array) -> jax.Array:
    """-log p(label | h) (B, T) at every position, float32, tile by tile as `next_token_nll` (no gradient):
    for scoring texts, where a batch's (B, T, vocab) logits would take GiBs."""
    x, head, axes, chunk = _head_tiles(params, h, cfg, labels)
    return _tiles(x, head, labels, jnp.ones(labels.shape, jnp.float32), axes, cfg.final_softcap, chunk)[1]


def _head_tiles(params: Params, h: jax.Array, cfg: ModelConfig, labels: jax.Array):
    """The normed residual, the head, its axes, and positions per tile for labels (B, T)."""
    chex.assert_shape(h, (*labels.shape, cfg.hidden_size))
    head, axes = lm_head(params, cfg)
    rows, length = labels.shape
    chunk = max(1, min(length, TILE_BYTES // (4 * head.shape[axes.index("v")] * rows)))
    return rms_norm(h, params["final_norm"], cfg), head, axes, chunk


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def tiled_nll(x, head, labels, weights, axes: str, softcap: float | None, chunk: int):
    """sum of weights * nll for x (B, T, D), labels and weights (B, T), `chunk` positions of each row at a time."""
    return _tiles(x, head, labels, weights, axes, softcap, chunk)[0]


def _tiles(x, head, labels, weights, axes, softcap, chunk, *, grad_x: bool = False, grad_head: bool = False):
    """(weighted sum, nll (B, T), dL/dx (B, T, D) if `grad_x`, dL/dhead in float32 if `grad_head`)."""
    rows, length = labels.shape
    tiles = -(-length // chunk)
    pad = lambda a: jnp.pad(a, [(0, 0), (0, tiles * chunk - length)] + [(0, 0)] * (a.ndim - 2))
    split = lambda a: pad(a).reshape(rows, tiles, chunk, *a.shape[2:]).swapaxes(0, 1)
    join = lambda a: a.swapaxes(0, 1).reshape(rows, tiles * chunk, *a.shape[3:])[:, :length]
    vocab = head.shape[axes.index("v")]

    def body(d_head, tile):
        """One tile's losses and gradients, the head's accumulated in the carry."""
        xc, lc, wc = tile
        z = jnp.einsum(f"btd,{axes}->btv", xc, head, preferred_element_type=jnp.float32)
        logits = jnp.tanh(z / softcap) * softcap if softcap else z
        lse = jax.nn.logsumexp(logits, axis=-1)
        nll = lse - jnp.take_along_axis(logits, lc[..., None], axis=-1)[..., 0]
        if not (grad_x or grad_head):
            return d_head, (nll, None)
        g = (jnp.exp(logits - lse[..., None]) - (jnp.arange(vocab) == lc[..., None])) * wc[..., None]
        if softcap:  # d(c tanh(z / c)) / dz = 1 - tanh^2
            g = g * (1 - jnp.square(logits / softcap))
        g = g.astype(head.dtype)
        if on_cpu:  # see below
            by_vocab = jax.lax.optimization_barrier(jnp.moveaxis(g, -1, 0).reshape(vocab, -1))
            dx = jnp.einsum(f"vm,{axes}->md", by_vocab, head, preferred_element_type=jnp.float32).reshape(xc.shape)
        else:
            dx = jnp.einsum(f"btv,{axes}->btd", g, head, preferred_element_type=jnp.float32)
        dx = dx.astype(x.dtype)
        if grad_head:
            d_head = d_head + jnp.einsum(f"btd,btv->{axes}", xc, g, preferred_element_type=jnp.float32)
        return d_head, (nll, dx if grad_x else None)

    # dL/dx contracts the vocabulary axis. XLA's CPU dot takes over twice as long with g laid out (tile, vocab)
    # as with g vocabulary-major, for the same FLOPs (`python -m benchmarks.bench_finetune --profile DIR`), so
    # on CPU g is transposed first; the barrier keeps XLA from folding the transpose back into the dot.
    on_cpu = jax.default_backend() == "cpu"
    d_head = jnp.zeros(head.shape, jnp.float32) if grad_head else None
    d_head, (nll, dx) = jax.lax.scan(body, d_head, (split(x), split(labels), split(weights)))
    nll = join(nll)
    return jnp.sum(weights * nll), nll, None if dx is None else join(dx), d_head


def _tiled_fwd(x, head, labels, weights, axes, softcap, chunk):
    """Only the gradients asked for: a frozen head (LoRA) costs no (D x vocab) matmul per tile."""
    grad_x, grad_head = x.perturbed, head.perturbed
    x, head, labels, weights = x.value, head.value, labels.value, weights.value
    total, nll, dx, d_head = _tiles(x, head, labels, weights, axes, softcap, chunk, grad_x=grad_x, grad_head=grad_head)
    return total, (nll, dx, d_head, head)


def _tiled_bwd(axes, softcap, chunk, residuals, g):
    """The gradients the forward pass already took, scaled by the cotangent of the sum (the labels have none)."""
    nll, dx, d_head, head = residuals
    dx = None if dx is None else (g * dx).astype(dx.dtype)
    d_head = None if d_head is None else (g * d_head).astype(head.dtype)
    return dx, d_head, None, g * nll


tiled_nll.defvjp(_tiled_fwd, _tiled_bwd, symbolic_zeros=True)
