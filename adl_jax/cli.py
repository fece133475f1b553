"""`adl`: the command line, a thin layer over `adl_jax.api`."""

from __future__ import annotations

import argparse
import sys


def _layer(value: str):
    return float(value) if "." in value else int(value)


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def cmd_diff(a) -> None:
    from adl_jax import api
    from adl_jax.sharding import make_mesh

    res = api.diff(
        a.base, a.finetuned, corpus=a.corpus, samples=a.samples, n=a.n, k=a.k, layer=a.layer,
        batch_size=a.batch_size, seed=a.seed, out=a.out, dtype=_dtype(a.dtype),
        mesh=make_mesh(a.mesh) if a.mesh else None, allow_fewer=a.allow_fewer, column=a.column,
    )  # fmt: skip
    print(res)


def cmd_lens(a) -> None:
    from adl_jax import api

    print(api.load(a.dir).lenses.table(top=a.top))


def cmd_info(a) -> None:
    import jax

    from adl_jax.models.load import load_model

    model = load_model(a.spec)
    n_params = sum(x.size for x in jax.tree.leaves(model.params))
    print(f"{model.spec}: {n_params / 1e6:.1f}M parameters, read layer {model.cfg.middle_layer}")
    print(model.cfg)


def cmd_demo(a) -> None:
    from adl_jax.demo import run_demo

    run_demo(cache=a.cache)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adl", description="Activation Difference Lens: what was this model finetuned on?")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("diff", help="delta between a finetuned model and its base over a corpus, plus lenses")
    d.add_argument("--base", required=True, help="model spec: gemma-3-270m, an HF dir, a .gguf file or a hub id")
    d.add_argument("--finetuned", required=True, help="model spec of the finetuned model")
    d.add_argument("--corpus", required=True, help="a .txt/.jsonl/.parquet file, hf:NAME[:split] or tfds:NAME[:split]")
    d.add_argument("--column", default="text", help="text field of the corpus (default: text)")
    d.add_argument("--samples", type=int, default=10_000, help="texts to average over (paper: 10000)")
    d.add_argument("--n", type=int, default=16, help="tokens per text; positions k..n-1 give the norm (default 16)")
    d.add_argument("--k", type=int, default=5, help="positions analysed (paper: 5)")
    d.add_argument("--layer", type=_layer, default=None, help="layer index or fraction (default int(0.5*(L-1)))")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--seed", type=int, default=42, help="corpus shuffling seed (paper: 42)")
    d.add_argument("--out", default="runs/diff", help="run directory (resumes if it holds the same run)")
    d.add_argument("--mesh", default=None, help="e.g. data=2,model=4 (default: all devices on data)")
    d.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    d.add_argument("--allow-fewer", action="store_true", help="continue when the corpus has fewer usable texts")
    d.set_defaults(func=cmd_diff)

    ln = sub.add_parser("lens", help="print the lens tokens of a finished run")
    ln.add_argument("dir")
    ln.add_argument("--top", type=int, default=10)
    ln.set_defaults(func=cmd_lens)

    i = sub.add_parser("info", help="load a model spec and print its configuration")
    i.add_argument("spec")
    i.set_defaults(func=cmd_info)

    dm = sub.add_parser("demo", help="the whole story offline on the embedded Gemma-3-270M")
    dm.add_argument("--cache", default=None, help="cache directory (default $ADL_CACHE or ~/.cache/adl-jax)")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"adl {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
