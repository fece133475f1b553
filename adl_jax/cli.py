"""`adl`: the command line, a thin layer over `adl_jax.api`."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
        chat_before=a.chat_before,
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


def cmd_audit(a) -> None:
    from pathlib import Path

    from adl_jax.audit import AuditSettings, audit, default_encoder
    from adl_jax.graders import Grader, GraderSettings
    from adl_jax.corpus import local_texts
    from adl_jax.models.load import cache_root, load_model
    from adl_jax.samples import sample_texts

    base, ft = load_model(a.base, dtype=_dtype(a.dtype)), load_model(a.finetuned, dtype=_dtype(a.dtype))
    settings = AuditSettings.quick() if a.quick else AuditSettings()
    if a.samples:
        settings = dataclasses.replace(settings, samples=a.samples)
    if a.corpus == "base-samples":
        texts = sample_texts(base, settings.samples, cache_root() / "corpus")
    else:
        from adl_jax.api import corpus_texts

        texts = list(itertools.islice(corpus_texts(a.corpus, a.column), 4 * settings.samples))  # room for drops
    ft_texts = local_texts(a.finetune_data, a.column) if a.finetune_data else None
    description = Path(a.description).read_text() if a.description and Path(a.description).is_file() else a.description
    grader_settings = GraderSettings.from_env()
    audit(base, ft, a.out, texts=texts, settings=settings, description=description, finetune_texts=ft_texts,
          encoder=default_encoder() if ft_texts else None, grader=grader_settings and Grader(grader_settings))
    print(f"report: {Path(a.out) / 'report.html'}")


def cmd_report(a) -> None:
    from adl_jax.report import screenshot, write_report

    page = write_report(a.dir)
    print(page)
    if a.screenshot:
        print(screenshot(page, a.screenshot))


def cmd_demo(a) -> None:
    from adl_jax.demo import run_demo

    run_demo(cache=a.cache, organism=a.organism)


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
    d.add_argument("--chat-before", type=int, default=None, help="chat variant: the corpus holds conversations "
                   "(--column messages); rows start this many tokens before the first assistant token")
    d.set_defaults(func=cmd_diff)

    ln = sub.add_parser("lens", help="print the lens tokens of a finished run")
    ln.add_argument("dir")
    ln.add_argument("--top", type=int, default=10)
    ln.set_defaults(func=cmd_lens)

    i = sub.add_parser("info", help="load a model spec and print its configuration")
    i.add_argument("spec")
    i.set_defaults(func=cmd_info)

    au = sub.add_parser("audit", help="delta, lenses, steering, relevance, similarity and report.html")
    au.add_argument("--base", required=True, help="model spec of the base model")
    au.add_argument("--finetuned", required=True, help="model spec of the finetuned model")
    au.add_argument("--corpus", default="base-samples",
                    help="a corpus spec (see adl diff), or base-samples: text sampled from the base model (offline)")
    au.add_argument("--column", default="text")
    au.add_argument("--samples", type=int, default=None, help="texts for delta (default 10000; 512 with --quick)")
    au.add_argument("--finetune-data", default=None, help="a sample of the finetuning data (.jsonl/.txt): "
                    "enables relevance as dataset overlap and steering similarity")
    au.add_argument("--description", default=None, help="the finetuning objective (text or a file)")
    au.add_argument("--quick", action="store_true", help="CPU preset: 512 texts, 2 steered positions, short samples")
    au.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    au.add_argument("--out", default="runs/audit")
    au.set_defaults(func=cmd_audit)

    rp = sub.add_parser("report", help="rebuild report.html of an audit directory")
    rp.add_argument("dir")
    rp.add_argument("--screenshot", metavar="PNG", help="also render the page with headless Chromium to PNG")
    rp.set_defaults(func=cmd_report)

    dm = sub.add_parser("demo", help="the whole story offline on the embedded Gemma-3-270M")
    dm.add_argument("--cache", default=None, help="cache directory (default $ADL_CACHE/demo or ~/.cache/adl-jax/demo)")
    dm.add_argument("--organism", default="orange_carrot", help="which shipped organism to train and audit")
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
