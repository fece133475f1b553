"""Many organisms in one pass: one `adl diff` with 8 `--finetuned` vs 8 separate `adl diff` runs, whole processes.

The organisms are seeded random LoRA adapters of the embedded Gemma-3-270M in PEFT format (rank 16 on every
attention and MLP projection, lora_alpha 32, B scaled so each update is a few percent of its weight, as
trained adapters are), over the same corpus of distinct English texts. Also: the delta loop with every
layer stored (`--layers all`) vs one layer read, in one process on the same batches (loading and
compilation excluded): against the last layer alone, whose forward runs as deep (the issue's criterion), and
against the default middle layer, whose forward stops halfway.

    python -m benchmarks.bench_organisms [--texts 1000] [--organisms 8] [--layer-texts 512] [--layers-only]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from benchmarks.common import ENGLISH

RANK, ALPHA = 16, 32
PEFT_NAMES = dict(q="q_proj", k="k_proj", v="v_proj", o="o_proj", gate="gate_proj", up="up_proj", down="down_proj")


def write_adapter(model, path: Path, seed: int) -> None:
    """A PEFT LoRA of `model` (rank 16, all projections) with seeded random A and B: B is scaled so that the
    update's typical entry is ~3% of the weight's."""
    from adl_jax.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TARGETS, peft_module
    from adl_jax.models.weights import hf_tensor_names

    rng = np.random.default_rng(seed)
    names, tensors = hf_tensor_names(model.cfg), {}
    for target in TARGETS:
        w = np.asarray(model.params["layers"][target])
        for layer, name in enumerate(names[target]):
            d_in, d_out = w.shape[1:]
            a = rng.standard_normal((RANK, d_in)).astype(np.float32) / np.sqrt(d_in)
            scale = 0.03 * w[layer].std() / (ALPHA / RANK) / np.sqrt(RANK / d_in)
            b = (rng.standard_normal((d_out, RANK)) * scale).astype(np.float32)
            tensors[peft_module(name) + ".lora_A.weight"] = a
            tensors[peft_module(name) + ".lora_B.weight"] = b
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / ADAPTER_WEIGHTS))
    config = dict(
        peft_type="LORA",
        task_type="CAUSAL_LM",
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=sorted(PEFT_NAMES.values()),
        base_model_name_or_path="gemma-3-270m",
    )
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))


def write_corpus(path: Path, count: int) -> None:
    """`count` distinct texts: ENGLISH's words in seeded random order, 40 words each."""
    words = ENGLISH.split()
    rng = np.random.default_rng(0)
    path.write_text("".join(" ".join(rng.permutation(words)[:40]) + "\n" for _ in range(count)))


def run_cold(*argv) -> float:
    """Seconds of one whole Python process, started cold: with an empty XLA compilation cache of its own, so no
    run reuses programs another compiled (`adl` keeps them under its cache; see cli.persist_compilations)."""
    with tempfile.TemporaryDirectory() as xla:
        start = time.perf_counter()
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": xla}
        subprocess.run([sys.executable, *map(str, argv)], check=True, stdout=subprocess.DEVNULL, env=env)
        return time.perf_counter() - start


def adl(*args) -> float:
    """Seconds of one whole `adl` process, cold."""
    return run_cold("-m", "adl_jax.cli", *args)


def layers_ratio(model, texts: int, rounds: int = 3) -> dict[str, float]:
    """Seconds of the delta loop (one LoRA organism) with every layer stored (`all`), and with one layer read:
        the last one (`last`: the forward runs as deep as `all`'s) and the middle one (`middle`, the default); the
    fastest of `rounds` interleaved runs each."""
    from adl_jax.method.corpus import tokenize_texts
    from adl_jax.method.diff import DiffSettings, compute_deltas
    from adl_jax.models.load import load_model

    with tempfile.TemporaryDirectory() as d:
        write_adapter(model, Path(d) / "lora", seed=0)
        ft = load_model(str(Path(d) / "lora"), base=model)
        write_corpus(Path(d) / "corpus.txt", texts)
        tokens = tokenize_texts(Path(d, "corpus.txt").read_text().splitlines(), model.tokenizer, 16, texts)
        runs = []

        def run(settings):
            out = Path(d) / f"run{len(runs)}"
            runs.append(out)
            compute_deltas(model, {"o": ft}, tokens, settings, out, progress=False)

        settings = dict(
            all=DiffSettings(layers="all"),
            last=DiffSettings(layer=model.cfg.num_layers - 1),
            middle=DiffSettings(),
        )
        for s in settings.values():  # compiled before any timing
            run(s)
        times = {name: [] for name in settings}
        for _ in range(rounds):  # interleaved, so a change in the machine's load falls on all three alike
            for name, s in settings.items():
                start = time.perf_counter()
                run(s)
                times[name].append(time.perf_counter() - start)
        return {name: min(t) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--organisms", type=int, default=8)
    ap.add_argument("--layer-texts", type=int, default=512, help="texts of the --layers all comparison")
    ap.add_argument("--layers-only", action="store_true", help="only the --layers all comparison")
    args = ap.parse_args()
    from adl_jax.models.load import load_model

    model = load_model("gemma-3-270m")
    if not args.layers_only:
        organisms(model, args.texts, args.organisms)
    layers = layers_ratio(model, args.layer_texts)
    last, middle = model.cfg.num_layers - 1, model.cfg.middle_layer
    print(
        f"delta loop, {args.layer_texts} texts, one organism: --layers all (layers 0..{last}) {layers['all']:.2f} s, "
        f"layer {last} only {layers['last']:.2f} s, layer {middle} only {layers['middle']:.2f} s"
    )
    print(
        f"-> every layer costs {layers['all'] / layers['last']:.2f}x one layer at the same depth "
        f"(the forward runs to the last layer read either way), {layers['all'] / layers['middle']:.2f}x the middle layer"
    )


def organisms(model, texts: int, count: int) -> None:
    """One `adl diff` with `count` --finetuned vs `count` separate runs, whole processes, printed."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_corpus(root / "corpus.txt", texts)
        names = [f"o{i}" for i in range(count)]
        for i, name in enumerate(names):
            write_adapter(model, root / name, seed=i)
        common = ["--base", "gemma-3-270m", "--corpus", root / "corpus.txt", "--samples", texts]
        adl("info", "gemma-3-270m")  # the embedded GGUF assembled into the cache before any timing
        t_one = adl(
            "diff", *common, *[f for n in names for f in ("--finetuned", f"{n}={root / n}")], "--out", root / "multi"
        )
        t_each = [adl("diff", *common, "--finetuned", root / n, "--out", root / f"single_{n}") for n in names]

    print(f"Gemma-3-270M, {count} LoRA organisms (r={RANK}, all projections), {texts} texts, n=16")
    print(f"one `adl diff` with {count} --finetuned : {t_one:7.1f} s")
    print(
        f"{count} separate `adl diff` runs        : {sum(t_each):7.1f} s (each {min(t_each):.1f}..{max(t_each):.1f} s)"
    )
    print(f"-> one pass is {sum(t_each) / t_one:.2f}x faster")


if __name__ == "__main__":
    main()
