"""Sampled, steered generation on Gemma-3-270M at the steering search's settings: ours vs transformers `generate`.

One lookahead call of the alpha search: the 7 alphas of three binary-search levels x S samples as one batch,
each row steered by its own alpha x vector after the middle layer (ours: an `Intervention`; transformers: a
forward hook adding the same rows), sampled at the search's temperature with its top-p (1 by default: the
search samples the tempered softmax uncut; transformers' default top-k of 50 is switched off). Both make
exactly N tokens a row: ours ignores EOS (eos_ids=()), transformers is held to N (min_new_tokens). Compilation
is excluded (one warm-up each); the two alternate, best of `--repeat`; the load average is printed, since the
cores may be shared.

`--corpus` times the offline corpus's sampling instead (`method.samples.sample_texts`: one chunk of rows from
BOS, unsteered, at its temperature and top-p; unconditional text has flat rows, where the nucleus is large).

    python -m benchmarks.bench_generate [--samples 4] [--new 48] [--top-p 1.0] [--repeat 2] [--corpus]
"""

import argparse
import inspect
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from adl_jax.judging.alpha_search import SteeringSettings, _lookahead_alphas
from adl_jax.method.samples import sample_texts
from adl_jax.method.steer import STEERING_PROMPTS, format_prompt
from adl_jax.models.generate import generate
from adl_jax.models.transformer import Intervention
from benchmarks.bench_lookahead import residual_norm
from benchmarks.common import load_pair


def main():
    quick = SteeringSettings.quick()
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=quick.samples, help="samples per alpha (S)")
    ap.add_argument("--new", type=int, default=quick.new_tokens, help="new tokens per sample (N)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus; the alpha search samples with 1 (no cut)")
    ap.add_argument("--repeat", type=int, default=2, help="timed rounds each; the best is reported")
    ap.add_argument("--corpus", action="store_true", help="the offline corpus's unconditional sampling instead")
    args = ap.parse_args()
    ours, theirs = load_pair()
    cfg, layer, S, N = ours.cfg, ours.cfg.middle_layer, args.samples, args.new
    alphas = _lookahead_alphas(quick.low, quick.high, quick.lookahead)
    direction = np.random.default_rng(0).standard_normal(cfg.hidden_size).astype(np.float32)
    vector = direction / np.linalg.norm(direction) * residual_norm(ours, layer)
    rows = np.repeat(np.asarray(alphas, np.float32), S)[:, None] * vector[None, :]
    prompt = format_prompt(ours.tokenizer, STEERING_PROMPTS[0])
    sampling = dict(temperature=quick.temperature, top_p=args.top_p)
    if args.corpus:  # the corpus's settings, read from sample_texts' defaults; no steering
        corpus = {k: v.default for k, v in inspect.signature(sample_texts).parameters.items()}
        N, prompt = corpus["max_new_tokens"], [cfg.bos_token_id]
        rows = np.zeros((corpus["chunk"], cfg.hidden_size), np.float32)
        sampling = dict(temperature=corpus["temperature"], top_p=corpus["top_p"])
    edits = () if args.corpus else (Intervention(layer=layer, mode="add", vector=jnp.asarray(rows)),)

    def run_ours(seed):
        gen = generate(
            ours.params,
            cfg,
            [prompt] * len(rows),
            max_new_tokens=N,
            key=jax.random.key(seed),
            interventions=edits,
            eos_ids=(),
            **sampling,
        )
        return gen.tokens.block_until_ready()

    def hook(module, inputs, output):  # the same row vectors, at every position of every forward call
        hidden = output[0] if isinstance(output, tuple) else output
        hidden += torch.from_numpy(rows)[:, None, :]
        return output

    ids = torch.tensor([prompt] * len(rows))

    def run_theirs(seed):
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = theirs.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=0,
                max_new_tokens=N,
                min_new_tokens=N,
                pad_token_id=0,
                **sampling,
            )
        assert out.shape == (len(rows), ids.shape[1] + N)
        return out

    if not args.corpus:
        theirs.model.layers[layer].register_forward_hook(hook)
    load = os.getloadavg()[0]
    run_ours(0), run_theirs(0)  # compile / warm up
    t_ours, t_theirs = [], []
    for r in range(args.repeat):  # alternate, so contention hits both alike
        t = time.perf_counter()
        run_ours(r + 1)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_theirs(r + 1)
        t_theirs.append(time.perf_counter() - t)
    n_tok = len(rows) * N
    to, tt = min(t_ours), min(t_theirs)
    what = "unsteered, from BOS" if args.corpus else f"{len(alphas)} alphas x {S} samples, steered after layer {layer}"
    print(
        f"Gemma-3-270M float32 on {jax.devices()[0].platform} ({os.cpu_count()} cores, load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}); {what}: {len(rows)} rows x {N} new tokens, prompt "
        f"{len(prompt)} tokens, temperature {sampling['temperature']}, top-p {sampling['top_p']}; best of {args.repeat}"
    )
    print(f"ours (jitted prefill + decode loop)   {to:8.2f} s {n_tok / to:9.1f} tok/s")
    print(f"transformers generate                 {tt:8.2f} s {n_tok / tt:9.1f} tok/s")
    print(f"ratio: {tt / to:.2f}x")
    print(
        "all rounds (s): ours "
        + " ".join(f"{t:.2f}" for t in t_ours)
        + " | transformers "
        + " ".join(f"{t:.2f}" for t in t_theirs)
    )


if __name__ == "__main__":
    main()
