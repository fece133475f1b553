"""The token-identity patchscope on Gemma-3-270M: the prompts' prefix run once into a KV cache vs whole prompts.

Ours (`lens.patchscope`, `lens.patchscope_each`) runs the three prompts' tokens before the last once into a
KV cache, then only the last token per scale x prompt or vector x prompt. The peer is what the patchscope
did before that cache: every row runs the whole left-padded prompts through `forward` (jitted, the model's
own scan setting) with the patch at the last token, one forward per vector over all scales (`--chunk`
vectors per forward for the each-reading, as ours), then the same selection (lens's `_kth_largest` and
`_top_k`) over all of a forward's rows at once. Both read at the middle layer, scaled by the residual norm
of an English text there (like `ft_norm`): `--vectors` random vectors at every `PATCHSCOPE_SCALES`, and
`--each` random vectors at random scales from that list. All in one process: the first call of each includes its compilation (ours: its first
patchscope call also compiles the prefix forward, which patchscope_each then reuses); the warm calls
alternate ours and the peer, best of `--repeat`. The load average is printed, since the cores may be shared.

    python -m benchmarks.bench_patchscope [--vectors 2] [--each 48] [--chunk 16] [--repeat 2]
"""

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.method.lens import (
    PATCHSCOPE_PROMPTS,
    PATCHSCOPE_SCALES,
    TokenScores,
    _kth_largest,
    _top_k,
    patchscope,
    patchscope_each,
)
from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.load import load_model
from adl_jax.models.transformer import Intervention, forward, unembed
from benchmarks.bench_lookahead import residual_norm


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "keep", "top"))
def _whole_prompts(params, patches, tokens, valid, *, cfg: ModelConfig, layer: int, keep: int, top: int):
    """Each patch (G, D) replaces the residual after `layer` at the last token of all Q prompts (G*Q rows, the
    whole prompts each); (G, top) ids and probabilities of the lens's selection over the prompts."""
    (G, _), (Q, T) = patches.shape, tokens.shape
    edit = Intervention(layer, "replace", jnp.repeat(patches, Q, axis=0), jnp.zeros((G * Q, T)).at[:, -1].set(1.0))
    final = cfg.num_layers - 1
    tokens, valid = jnp.tile(tokens, (G, 1)), jnp.tile(valid, (G, 1))
    out = forward(params, tokens, cfg, valid=valid, interventions=(edit,), capture=(final,), until_layer=final)
    h = out.hidden[final][:, -1]
    probs = jax.nn.softmax(unembed(params, h, cfg), axis=-1).reshape(G, Q, -1)
    in_all = jnp.all(probs >= _kth_largest(probs, keep), axis=1)
    top_probs, top_ids = _top_k(jnp.where(in_all, probs.mean(axis=1), 0.0), top)
    return top_ids, top_probs


def peer(model, patches: np.ndarray, layer: int, group: int, keep: int = 16384, top: int = 20) -> list[TokenScores]:
    """The reading of each patch (N, D) (already scaled), `group` per forward, the last group padded."""
    tokens, valid = pad_batch([model.tokenizer(p)["input_ids"] for p in PATCHSCOPE_PROMPTS])
    out = []
    for start in range(0, len(patches), group):
        chunk = patches[start : start + group]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], group - len(chunk), 0)])
        ids, probs = _whole_prompts(
            model.params, jnp.asarray(padded), tokens, valid, cfg=model.cfg, layer=layer, keep=keep, top=top
        )
        ids, probs = np.asarray(ids)[: len(chunk)], np.asarray(probs)
        out += [TokenScores.from_arrays(i, p, model.tokenizer) for i, p in zip(ids, probs)]
    return out


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def differences(ours: list[TokenScores], theirs: list[TokenScores]) -> tuple[float, int, int]:
    """Max |probability difference| over the ranked lists, the number of differing ids, and of ids compared."""
    diff = max(float(np.max(np.abs(np.subtract(a.probs, b.probs)))) for a, b in zip(ours, theirs))
    ids = np.array([a.ids for a in ours]), np.array([b.ids for b in theirs])
    return diff, int(np.sum(ids[0] != ids[1])), ids[0].size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=int, default=2, help="vectors read at every scale (patchscope)")
    ap.add_argument("--each", type=int, default=48, help="vectors read at one random scale each (patchscope_each)")
    ap.add_argument("--chunk", type=int, default=16, help="vectors per forward of patchscope_each (its default)")
    ap.add_argument("--repeat", type=int, default=1, help="warm rounds after the first call; the best is reported")
    args = ap.parse_args()
    model = load_model("gemma-3-270m")
    params, cfg, tok, layer = model.params, model.cfg, model.tokenizer, model.cfg.middle_layer
    norm = residual_norm(model, layer)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.vectors, cfg.hidden_size)).astype(np.float32)
    each = rng.standard_normal((args.each, cfg.hidden_size)).astype(np.float32)
    norms = (rng.choice(PATCHSCOPE_SCALES, args.each) * norm).astype(np.float32)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    scales = np.asarray(PATCHSCOPE_SCALES, np.float32) * norm
    S = len(scales)
    scaled = (scales[None, :, None] * unit(vectors)[:, None, :]).reshape(-1, cfg.hidden_size)  # vector-major

    readings = {
        "patchscope": (
            lambda: [r[s] for r in patchscope(params, cfg, tok, vectors, layer, norm) for s in PATCHSCOPE_SCALES],
            lambda: peer(model, scaled, layer, S),
            f"{args.vectors} vectors x {S} scales x 3 prompts (ours: one forward for all; the peer: one per vector)",
        ),
        "patchscope_each": (
            lambda: patchscope_each(params, cfg, tok, each, layer, norms, chunk=args.chunk),
            lambda: peer(model, unit(each) * norms[:, None], layer, min(args.chunk, args.each)),
            f"{args.each} vectors x 3 prompts at random scales, {args.chunk} vectors per forward",
        ),
    }
    load = os.getloadavg()[0]
    first, warm, read = {}, {}, {}
    for name, (ours, theirs, _) in readings.items():
        read[name, "ours"], first[name, "ours"] = timed(ours)
        read[name, "peer"], first[name, "peer"] = timed(theirs)
        for _ in range(args.repeat):  # alternate, so contention hits both alike
            for who, fn in (("ours", ours), ("peer", theirs)):
                warm.setdefault((name, who), []).append(timed(fn)[1])
    lengths = [len(tok(p)["input_ids"]) for p in PATCHSCOPE_PROMPTS]
    print(
        f"Gemma-3-270M float32 on {jax.devices()[0].platform} ({os.cpu_count()} cores, load average {load:.1f} -> "
        f"{os.getloadavg()[0]:.1f}); patch after layer {layer} of {cfg.num_layers}, norm {norm:.1f} (residual of an "
        f"English text), prompts {min(lengths)}..{max(lengths)} tokens, peer scan_layers={cfg.scan_layers}; warm: best of "
        f"{args.repeat}"
    )
    for name, (_, _, what) in readings.items():
        (fo, fp), (wo, wp) = (first[name, w] for w in ("ours", "peer")), (min(warm[name, w]) for w in ("ours", "peer"))
        diff, differ, n = differences(read[name, "ours"], read[name, "peer"])
        print(f"{name}: {what}")
        print(f"  {'':<28}{'first call (s)':>15}{'warm (s)':>10}")
        print(f"  {'ours (prefix KV cache)':<28}{fo:>15.2f}{wo:>10.3f}")
        print(f"  {'peer (whole prompts)':<28}{fp:>15.2f}{wp:>10.3f}")
        print(f"  ratio peer / ours: warm {wp / wo:.2f}x, first call {fp / fo:.2f}x")
        print(f"  max |prob ours - peer| {diff:.2e}; top ids differing {differ} of {n}")


if __name__ == "__main__":
    main()
