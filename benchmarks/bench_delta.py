"""Delta throughput on Gemma-3-270M: ours vs the original toolkit's way, in one run on this machine.

Ours: both models run only up to the read layer on the first n=16 tokens, sums reduce on device.
Toolkit's way: a transformers forward over 128-token sequences (its final setting) with every hidden
state kept, then slicing positions 0..4 of the read layer. Also printed: the same torch loop at n=16
(like for like), and our achieved FLOP/s against this machine's measured matmul peak.

    python benchmarks/bench_delta.py [--texts 256]
"""

import argparse
import dataclasses
import tempfile

import jax
import numpy as np
import torch

from adl_jax.method.diff import DiffSettings, _batch_sums, compute_delta
from benchmarks.common import ENGLISH, best_time, compiled_flops, load_pair, matmul_peak


def torch_delta(model, tokens: np.ndarray, layer: int, k: int = 5, batch: int = 32):
    """The toolkit's loop: full forward with hidden states, slice, sum (for base and finetuned alike)."""
    total = 0
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            hs = model(torch.tensor(tokens[i : i + batch], dtype=torch.long), output_hidden_states=True).hidden_states
            total = total + hs[layer + 1][:, :k].float().sum(0)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=256)
    args = ap.parse_args()
    ours, theirs = load_pair()
    ft = dataclasses.replace(ours, spec="copy", params=jax.tree.map(lambda x: x * 1.0, ours.params))
    layer = ours.cfg.middle_layer
    ids = ours.tokenizer(ENGLISH * 8)["input_ids"]
    rows = np.stack([ids[i : i + 128] for i in range(args.texts)]).astype(np.int32)  # distinct windows

    settings = DiffSettings(layer=layer, n=16, batch_size=32)

    def run_ours():
        with tempfile.TemporaryDirectory() as d:
            compute_delta(ours, ft, rows[:, :16], settings, d, progress=False)

    t_ours = best_time(run_ours, repeat=2)
    t_tk = best_time(lambda: (torch_delta(theirs, rows, layer), torch_delta(theirs, rows, layer)), repeat=1)
    t_16 = best_time(
        lambda: (torch_delta(theirs, rows[:, :16], layer), torch_delta(theirs, rows[:, :16], layer)), repeat=1
    )

    batch = rows[:32, :16]
    w = np.ones(32, np.float32)
    flops = compiled_flops(_batch_sums, ours.params, ft.params, batch, w, cfg=ours.cfg, layer=layer, k=5)
    achieved = flops * (args.texts / 32) / t_ours
    peak = matmul_peak()
    n = args.texts
    print(f"Gemma-3-270M, layer {layer}, {n} texts, base+finetuned pair, {jax.device_count()} device(s)")
    print(f"ours (n=16, until layer {layer})        : {n / t_ours:8.1f} texts/s")
    print(
        f"toolkit way (transformers, n=128, all hidden states): {n / t_tk:8.1f} texts/s  -> ours is {t_tk / t_ours:.1f}x"
    )
    print(f"same torch loop at n=16 (like for like)   : {n / t_16:8.1f} texts/s  -> ours is {t_16 / t_ours:.1f}x")
    print(
        f"achieved {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of measured f32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
