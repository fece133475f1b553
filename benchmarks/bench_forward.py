"""Forward and generation speed on Gemma-3-270M: our jitted JAX code vs transformers, on this machine.

Prints tokens/s for (1) a logits forward over a batch, (2) our forward stopped at the middle layer
(what ADL runs) vs our full forward, (3) greedy generation, each with its ratio.

    python benchmarks/bench_forward.py [--batch 8] [--seq 128] [--new 64]
"""

import argparse

import jax
import numpy as np
import torch

from adl_jax.models.generate import generate
from adl_jax.models.transformer import forward
from benchmarks.common import ENGLISH, best_time, load_pair


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    ours, theirs = load_pair()
    cfg, B, T = ours.cfg, args.batch, args.seq
    ids = ours.tokenizer(ENGLISH * 8)["input_ids"]
    tokens = np.stack([ids[i : i + T] for i in range(B)]).astype(np.int32)
    n_tok = B * T

    full = jax.jit(lambda p, t: forward(p, t, cfg).logits)
    middle = jax.jit(lambda p, t: forward(p, t, cfg, until_layer=cfg.middle_layer, capture=(cfg.middle_layer,)).hidden)
    t_full = best_time(lambda: full(ours.params, tokens).block_until_ready())
    t_mid = best_time(lambda: jax.block_until_ready(middle(ours.params, tokens)))
    with torch.no_grad():
        t_torch = best_time(lambda: theirs(torch.tensor(tokens, dtype=torch.long)).logits)
    print(f"Gemma-3-270M on {jax.devices()[0].platform}, batch {B} x {T} tokens, float32")
    print(
        f"forward with logits   ours {n_tok / t_full:8.0f} tok/s   transformers {n_tok / t_torch:8.0f} tok/s"
        f"   ratio {t_torch / t_full:.2f}x"
    )
    print(
        f"until_layer={cfg.middle_layer} (no logits) {n_tok / t_mid:8.0f} tok/s = {t_full / t_mid:.2f}x faster "
        "than our full forward"
    )

    prompts = [list(tokens[i, : 8 + 2 * i]) for i in range(B)]  # different lengths, left-padded
    t_gen = best_time(
        lambda: generate(ours.params, cfg, prompts, max_new_tokens=args.new, eos_ids=()).tokens.block_until_ready(),
        repeat=2,
    )
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        t_hf = best_time(
            lambda: theirs.generate(
                padded,
                attention_mask=mask,
                max_new_tokens=args.new,
                min_new_tokens=args.new,
                do_sample=False,
                pad_token_id=0,
            ),
            repeat=1,
        )
    n_new = B * args.new
    print(
        f"greedy generation     ours {n_new / t_gen:8.1f} tok/s   transformers {n_new / t_hf:8.1f} tok/s"
        f"   ratio {t_hf / t_gen:.2f}x   (batch {B}, {args.new} new tokens)"
    )


if __name__ == "__main__":
    main()
