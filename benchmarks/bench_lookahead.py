"""The steering search's 3-level lookahead on Gemma-3-270M: one batched generation vs seven, on this machine.

`search_alpha` generates the 7 candidate alphas of the next three binary-search levels in one call
whose rows carry different alphas (7 x S rows). This times that call against 7 sequential calls of S
rows each (one alpha per call), the same prompt, tokens and sampling settings. The steering vector is a
fixed random direction (seed 0) scaled to the mean residual norm after the middle layer (positions 5..
of an English text, like `ft_norm`), added after that layer as `steered_samples` does. Both ways call
`generate` with no EOS, so every row makes exactly N new tokens (`steered_samples` stops once all rows
have emitted EOS, which would make timings depend on the samples). Compilation is excluded (one
warm-up of each shape); the ways alternate, best of `--repeat`.

    python -m benchmarks.bench_lookahead [--samples 4] [--new 32] [--levels 3] [--repeat 2]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.models.generate import generate
from adl_jax.models.load import load_model
from adl_jax.models.transformer import Intervention, forward
from adl_jax.method.steer import STEERING_PROMPTS, format_prompt
from adl_jax.judging.alpha_search import SteeringSettings, _lookahead_alphas
from benchmarks.common import ENGLISH


def residual_norm(model, layer: int, skip: int = 5) -> float:
    """Mean norm of the residual after `layer` over positions skip.. of an English text."""
    ids = np.asarray(model.tokenizer(ENGLISH)["input_ids"], np.int32)[None, :]
    h = forward(model.params, ids, model.cfg, until_layer=layer, capture=(layer,)).hidden[layer]
    return float(jnp.linalg.norm(h[0, skip:], axis=-1).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4, help="samples per alpha (S)")
    ap.add_argument("--new", type=int, default=32, help="new tokens per sample (N)")
    ap.add_argument("--levels", type=int, default=3, help="lookahead levels: 2**levels - 1 alphas")
    ap.add_argument("--repeat", type=int, default=2, help="timed rounds; the best is reported")
    args = ap.parse_args()
    model = load_model("gemma-3-270m")
    cfg, layer, S, N = model.cfg, model.cfg.middle_layer, args.samples, args.new
    settings = SteeringSettings()
    alphas = _lookahead_alphas(settings.low, settings.high, args.levels)
    norm = residual_norm(model, layer)
    direction = np.random.default_rng(0).standard_normal(cfg.hidden_size).astype(np.float32)
    vector = direction / np.linalg.norm(direction) * norm
    prompt = format_prompt(model.tokenizer, STEERING_PROMPTS[0])
    key = jax.random.key(0)

    def run(alpha_list):
        """One generation call: S rows per alpha, row vectors alpha * vector (as `steered_samples` builds)."""
        rows = np.repeat(np.asarray(alpha_list, np.float32), S)[:, None] * vector[None, :]
        edit = Intervention(layer=layer, mode="add", vector=jnp.asarray(rows))
        gen = generate(
            model.params,
            cfg,
            [prompt] * len(rows),
            max_new_tokens=N,
            key=key,
            temperature=settings.temperature,
            interventions=(edit,),
            eos_ids=(),
        )
        return gen.tokens.block_until_ready()

    batched = lambda: run(alphas)
    sequential = lambda: [run([a]) for a in alphas]
    batched(), sequential()  # compile both shapes
    t_batch, t_seq = [], []
    for _ in range(args.repeat):  # alternate, so contention hits both ways alike
        t = time.perf_counter()
        batched()
        t_batch.append(time.perf_counter() - t)
        t = time.perf_counter()
        sequential()
        t_seq.append(time.perf_counter() - t)
    tb, ts = min(t_batch), min(t_seq)
    n_tok = len(alphas) * S * N
    print(
        f"Gemma-3-270M on {jax.devices()[0].platform}, steering after layer {layer} (random direction x "
        f"residual norm {norm:.1f}), prompt {len(prompt)} tokens, temperature {settings.temperature}"
    )
    print(
        f"{len(alphas)} alphas {', '.join(f'{a:g}' for a in alphas)}; {S} samples x {N} new tokens each; "
        f"best of {args.repeat}"
    )
    print(f"{'way':<28}{'calls':>6}{'rows/call':>10}{'seconds':>10}{'new tok/s':>11}")
    print(f"{'batched (lookahead)':<28}{1:>6}{len(alphas) * S:>10}{tb:>10.2f}{n_tok / tb:>11.1f}")
    print(f"{'sequential (one per alpha)':<28}{len(alphas):>6}{S:>10}{ts:>10.2f}{n_tok / ts:>11.1f}")
    print(f"ratio sequential / batched: {ts / tb:.2f}x")
    print(
        "all rounds (s): batched "
        + " ".join(f"{t:.2f}" for t in t_batch)
        + " | sequential "
        + " ".join(f"{t:.2f}" for t in t_seq)
    )


if __name__ == "__main__":
    main()
