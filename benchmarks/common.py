"""Shared pieces of the benchmarks: the embedded model in both frameworks, timing, this machine's peak."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

ENGLISH = (
    "The history of the city begins with a small settlement on the river, where traders stopped to rest "
    "their horses and exchange news. Over the following centuries the market grew, a bridge was built, and "
    "the first school opened its doors to the children of merchants and farmers alike. "
)


def load_pair():
    """(our Model, transformers' torch model) for the embedded Gemma-3-270M, both float32."""
    import torch
    from transformers import AutoModelForCausalLM

    from adl_jax.models.load import embedded_gguf, load_model

    ours = load_model("gemma-3-270m")
    path = embedded_gguf()
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return ours, theirs


def best_time(fn, repeat: int = 3) -> float:
    """Seconds of the fastest of `repeat` calls after one warm-up call (compilation excluded)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(n: int = 2048) -> float:
    """This machine's float32 matmul throughput in FLOP/s, as XLA achieves it on one large square matmul."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / best_time(lambda: f(a).block_until_ready())


def compiled_flops(jitted, *args, **kwargs) -> float:
    """FLOPs XLA counts for one call of a jitted function."""
    cost = jitted.lower(*args, **kwargs).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])
