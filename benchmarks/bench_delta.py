"""Delta throughput on Gemma-3-270M (vs itself, n=16): `adl diff` against a strong PyTorch peer, whole processes.

Ours: `adl diff` as a user runs it (loading, the delta loop, the lenses). The peer: transformers under
`torch.inference_mode()`, each model's decoder layer list cut after the read layer and its final norm
removed (no later layer, no logits), batches of 32 of the same 16-token rows (`tokens.npy` of our run),
both models over all 16 positions, loading included, sums and norms as delta needs them.
For context, the original toolkit's way: a transformers forward over 128-token sequences with every hidden
state kept (in process, fewer texts). Also printed: the FLOP/s our delta loop achieves (XLA's count of one
step x steps / seconds of the loop in process) against this machine's f32 matmul rate at the loop's own
shapes (rows = batch x 16 tokens against the 640 x 2048 MLP weight).

    python -m benchmarks.bench_delta [--texts 2000] [--toolkit-texts 128]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_organisms import run_cold, write_corpus
from benchmarks.common import ENGLISH

PEER = """
import sys, numpy as np, torch
from transformers import AutoModelForCausalLM
from adl_jax.models.load import embedded_gguf
tokens, layer, k = np.load(sys.argv[1]), int(sys.argv[2]), 5
path = embedded_gguf()
def truncated():
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[: layer + 1]
    model.model.norm = torch.nn.Identity()
    return model.model
with torch.inference_mode():
    base, ft = truncated(), truncated()
    sb = sf = ns = 0
    for i in range(0, len(tokens), 32):
        ids = torch.tensor(tokens[i : i + 32], dtype=torch.long)
        hb, hf = base(input_ids=ids).last_hidden_state, ft(input_ids=ids).last_hidden_state
        sb, sf, ns = sb + hb[:, :k].sum(0), sf + hf[:, :k].sum(0), ns + hf[:, k:].norm(dim=-1).sum()
print(float((sf - sb).norm()))
"""


def toolkit_delta(model, tokens: np.ndarray, layer: int, k: int = 5, batch: int = 32):
    """The original toolkit's loop: full forward with hidden states, slice, sum."""
    import torch

    total = 0
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            hs = model(torch.tensor(tokens[i : i + batch], dtype=torch.long), output_hidden_states=True).hidden_states
            total = total + hs[layer + 1][:, :k].float().sum(0)
    return total


def loop_rate(ours, tokens: np.ndarray) -> tuple[float, float, int]:
    """(seconds of our delta loop over `tokens`, XLA's FLOPs of one step, batch size) in this process."""
    import dataclasses

    from adl_jax.method import diff
    from benchmarks.common import best_time, compiled_flops

    ft = dataclasses.replace(ours, spec="itself")  # the same arrays, run as a full finetune: its own forward
    settings = diff.DiffSettings()
    batch = diff.default_batch_size(ours.cfg, 16, ours.params["embed"].sharding.mesh, len(tokens))
    runs = []

    def run():
        with tempfile.TemporaryDirectory() as d:
            runs.append(diff.compute_delta(ours, ft, tokens, settings, d, progress=False))

    t = best_time(run, repeat=2)
    # XLA's cost analysis counts a loop's body once: the FLOPs are counted on the same program unrolled.
    unrolled = dataclasses.replace(ours.cfg, scan_layers=False)
    plan = diff._Plan(unrolled, (ours.cfg.middle_layer,), 5, ours.params["embed"].sharding.mesh, (), ())
    shape = (1, 1, 5, ours.cfg.hidden_size)
    acc = {key: np.zeros(shape[:2] if key.startswith("norm") else shape, np.float32) for key in diff._SUMS}
    acc["finite"] = np.ones(1, bool)
    args = (acc, ours.params, {}, (ft.params,), tokens[:batch], np.ones(batch, np.float32), np.ones(1, bool))
    flops = compiled_flops(diff._batch_sums, *args, plan=plan)
    return t, flops * -(-len(tokens) // batch), batch


def matmul_rate(rows: int, d: int = 640, f: int = 2048) -> float:
    """FLOP/s of one jitted f32 (rows, d) @ (d, f) matmul on this machine."""
    import jax
    import jax.numpy as jnp

    from benchmarks.common import best_time

    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((rows, d), (d, f)))
    mm = jax.jit(lambda x, w: x @ w)
    return 2 * rows * d * f / best_time(lambda: mm(x, w).block_until_ready(), repeat=5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--toolkit-texts", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_corpus(root / "corpus.txt", args.texts)
        run_cold("-m", "adl_jax.cli", "info", "gemma-3-270m")  # the embedded GGUF assembled before any timing
        t_ours = run_cold(
            *("-m", "adl_jax.cli", "diff", "--base", "gemma-3-270m", "--finetuned", "gemma-3-270m"),
            *("--corpus", root / "corpus.txt", "--samples", args.texts, "--out", root / "run"),
        )
        tokens = np.load(root / "run" / "tokens.npy")
        from adl_jax.models.load import load_model

        layer = load_model("gemma-3-270m").cfg.middle_layer
        t_peer = run_cold("-c", PEER, root / "run" / "tokens.npy", layer)

    from benchmarks.common import best_time, load_pair

    ours, theirs = load_pair()
    t_loop, flops, batch = loop_rate(ours, tokens)
    rate = matmul_rate(batch * 16)
    few = tokens[: args.toolkit_texts]
    ids = ours.tokenizer(ENGLISH * 8)["input_ids"]
    rows128 = np.stack([ids[i : i + 128] for i in range(len(few))]).astype(np.int32)
    t_tk = best_time(lambda: (toolkit_delta(theirs, rows128, layer), toolkit_delta(theirs, rows128, layer)), repeat=1)

    n = args.texts
    print(f"Gemma-3-270M vs itself, layer {layer}, n=16, {n} texts, whole processes (loading included)")
    print(f"adl diff (default batch {batch})              : {t_ours:7.1f} s  {n / t_ours:6.1f} texts/s")
    print(f"torch peer (inference_mode, cut after layer {layer}): {t_peer:7.1f} s  {n / t_peer:6.1f} texts/s")
    print(f"-> adl diff is {t_peer / t_ours:.2f}x the strong peer")
    loop = n / t_loop
    tk = len(few) / t_tk
    print(f"context, in process: our delta loop {loop:.1f} texts/s; toolkit way (n=128, all hidden states) {tk:.2f}")
    print(
        f"delta loop achieves {flops / t_loop / 1e9:.1f} GFLOP/s = {100 * flops / t_loop / rate:.0f}% of the "
        f"measured f32 matmul rate at its shapes ({batch * 16} x 640 @ 640 x 2048: {rate / 1e9:.1f} GFLOP/s)"
    )


if __name__ == "__main__":
    main()
