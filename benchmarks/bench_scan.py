"""Layers unrolled vs one `lax.scan`: compile time and step time of a deep, narrow random model.

Unrolled, XLA compiles every layer separately, so compile time grows with depth; scanned, it compiles
one layer body. This measures what that costs or saves at run time, for the three programs ADL runs:
the logits forward, the forward stopped at the middle layer (delta), and a full finetuning step.

    python -m benchmarks.bench_scan [--layers 64] [--width 64] [--batch 8] [--seq 128]
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.models.config import ModelConfig
from adl_jax.models.params import param_shapes
from adl_jax.models.transformer import forward
from benchmarks.common import best_time
from finetune.train import TrainConfig, make_optimizer, train_step


def random_params(cfg: ModelConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    leaf = lambda shape: jnp.asarray(rng.standard_normal(shape) * 0.02, jnp.float32)
    return jax.tree.map(leaf, param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))


def measure(fn, *args) -> tuple[float, float]:
    """(compile seconds, best step seconds) of jitted `fn` on `args`."""
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    return compile_s, best_time(lambda: jax.block_until_ready(compiled(*args)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    cfg = ModelConfig(
        family="llama",
        vocab_size=512,
        hidden_size=a.width,
        intermediate_size=4 * a.width,
        num_layers=a.layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=a.width // 4,
        local_layers=(False,) * a.layers,
    )
    params = random_params(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (a.batch, a.seq)).astype(np.int32)
    batch = (tokens, np.ones_like(tokens, bool), np.ones_like(tokens, bool))
    tc = TrainConfig(mode="full", batch_size=a.batch, seq_len=a.seq)
    print(
        f"{a.layers} layers x width {a.width}, batch {a.batch} x {a.seq} tokens, float32, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    print(f"{'program':<22}{'compile unrolled':>17}{'scanned':>9}{'step unrolled':>15}{'scanned':>10}")
    for name in ("logits forward", "until middle layer", "finetuning step"):
        row = []
        for scan in (False, True):
            c = dataclasses.replace(cfg, scan_layers=scan)
            if name == "logits forward":
                row.append(measure(jax.jit(lambda p, t, c=c: forward(p, t, c).logits), params, tokens))
            elif name == "until middle layer":
                mid = c.middle_layer
                fn = jax.jit(lambda p, t, c=c: forward(p, t, c, until_layer=mid, capture=(mid,)).hidden[mid])
                row.append(measure(fn, params, tokens))
            else:
                state = make_optimizer(tc).init(params)
                fn = jax.jit(lambda tr, st, p, b, c=c: train_step(tr, st, p, b, 0, cfg=c, tc=tc))
                row.append(measure(fn, params, state, params, batch))
        (cu, su), (cs, ss) = row
        print(f"{name:<22}{cu:>15.1f} s{cs:>7.1f} s{su * 1e3:>12.1f} ms{ss * 1e3:>7.1f} ms")


if __name__ == "__main__":
    main()
