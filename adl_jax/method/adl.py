"""The lens in one call: from two model specs and a corpus to delta and its readouts, in a run directory.

res = diff("gemma-3-270m", "runs/cake_bake/final", corpus="corpus.jsonl", samples=2000)
res                      # a readable table of top tokens per position
res.diff.delta           # (k, D) numpy array

Many organisms of one base in one pass (each written to out/NAME as `diff` writes one run):
runs = diffs("gemma-3-270m", {"cake": "runs/cake/final", "fish": "runs/fish/final"}, corpus=..., layers="all")
runs["cake"].diff.delta_layers   # (L, k, D)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp

from adl_jax import io
from adl_jax.errors import UsageError, require
from adl_jax.method import corpus as corpora
from adl_jax.method.diff import DiffResult, DiffSettings, OrganismsFailed, compute_delta, compute_deltas
from adl_jax.method.identity import source
from adl_jax.method.lens import LENS, LensResult, read_lenses
from adl_jax.models.load import Model


@dataclasses.dataclass
class ADLResult:
    diff: DiffResult
    lenses: LensResult
    out: Path

    def __repr__(self):
        return f"{self.diff!r}\nresults in {self.out}\n{self.lenses.table()}"


def diff(
    base: Model | str,
    finetuned: Model | str,
    *,
    corpus: str | None = None,
    texts=None,
    samples: int = 10_000,
    n: int = 16,
    k: int = 5,
    layer: int | float | None = None,
    batch_size: int | None = None,
    seed: int = 42,
    out: str | Path = "runs/diff",
    layers: tuple[int, ...] | str | None = None,
    dtype=jnp.float32,
    mesh=None,
    allow_fewer: bool = False,
    column: str = "text",
    chat_before: int | None = None,
    progress: bool = True,
) -> ADLResult:
    """Delta of `finetuned` vs `base` over a corpus, then the lenses; everything written to `out`.

    `base`/`finetuned` are model specs (see `adl_jax.models.load`) or loaded models. Give the corpus as a
    spec string or as an iterable of `texts`. Rerunning with the same `out` resumes or reuses the run.
    `chat_before`: the chat variant; the corpus holds conversations (e.g. `--column messages`) and rows
    start that many tokens before the first assistant token (see `corpus.tokenize_chats`).
    `batch_size` None: chosen from the model width and the device (`diff.default_batch_size`); `layers`: also
    store delta at these layers ("all": every one), read layer `layer` (default the middle one) as before.
    """
    from adl_jax.models.load import load_model

    # Everything that needs no model is checked before one loads and before `out` is touched.
    settings = DiffSettings(layer=layer, k=k, n=n, batch_size=batch_size, layers=layers)
    require(samples >= 1, "samples", samples, "the number of texts to average over must be at least 1")
    require(chat_before is None or 0 <= chat_before < n, "chat_before", chat_before, f"must be in 0..n-1 (n={n})")
    texts = _texts(corpus, texts, column, seed)
    with io.run_lock(out):
        base = load_model(base, dtype=dtype, mesh=mesh) if isinstance(base, str) else base
        ft = load_model(finetuned, dtype=dtype, mesh=mesh, base=base) if isinstance(finetuned, str) else finetuned
        tokens = token_matrix(texts, base, ft, n, samples, allow_fewer=allow_fewer, chat_before=chat_before)
        meta = run_meta(corpus, seed, chat_before)
        result = compute_delta(base, ft, tokens, settings, out, mesh=mesh, progress=progress, meta=meta)
        lenses = _lenses(base, ft, result, Path(out))
    return ADLResult(result, lenses, Path(out))


def diffs(
    base: Model | str,
    organisms: dict[str, Model | str],
    *,
    corpus: str | None = None,
    texts=None,
    samples: int = 10_000,
    n: int = 16,
    k: int = 5,
    layer: int | float | None = None,
    batch_size: int | None = None,
    seed: int = 42,
    out: str | Path = "runs/diff",
    layers: tuple[int, ...] | str | None = None,
    dtype=jnp.float32,
    mesh=None,
    allow_fewer: bool = False,
    column: str = "text",
    progress: bool = True,
) -> dict[str, ADLResult]:
    """`diff` of every organism (name -> spec or loaded model) against one base, in one pass over the corpus
    (see `diff.compute_deltas`); organism NAME's run is `out`/NAME, what `diff(..., out=out/NAME)` writes.
    A NaN organism is reported (`OrganismsFailed`) after the others are finished and written."""
    from adl_jax.models.load import load_model

    settings = DiffSettings(layer=layer, k=k, n=n, batch_size=batch_size, layers=layers)
    require(samples >= 1, "samples", samples, "the number of texts to average over must be at least 1")
    require(bool(organisms), "organisms", organisms, "give at least one finetuned model")
    texts = _texts(corpus, texts, column, seed)
    with io.run_lock(out):
        base = load_model(base, dtype=dtype, mesh=mesh) if isinstance(base, str) else base
        models = {
            name: load_model(ft, dtype=dtype, mesh=mesh, base=base) if isinstance(ft, str) else ft
            for name, ft in organisms.items()
        }
        tokens = token_matrix(texts, base, base, n, samples, allow_fewer=allow_fewer)
        meta = run_meta(corpus, seed)
        try:
            results, failed = (
                compute_deltas(base, models, tokens, settings, out, mesh=mesh, progress=progress, meta=meta),
                None,
            )
        except OrganismsFailed as e:
            results, failed = e.results, e
        runs = {
            name: ADLResult(res, _lenses(base, models[name], res, Path(out) / name), Path(out) / name)
            for name, res in results.items()
        }
    if failed:
        raise failed
    return runs


def token_matrix(texts, base: Model, ft: Model, n: int, samples: int, *, allow_fewer=False, chat_before=None):
    """The (samples, n) token matrix of a delta run over `texts`, as `diff` reads it: plain texts with the
    base's tokenizer (a sequence read in per-process shares), or conversations with the finetuned model's
    chat template (`chat_before`)."""
    if chat_before is not None:
        return corpora.tokenize_chats(texts, ft.tokenizer, n, samples, before=chat_before, allow_fewer=allow_fewer)
    if isinstance(texts, Sequence):  # each process reads its share, all get the matrix
        return corpora.gather_share(corpora.process_share(texts, base.tokenizer, n, samples, allow_fewer=allow_fewer))
    return corpora.tokenize_texts(texts, base.tokenizer, n, samples, allow_fewer=allow_fewer)  # perhaps endless


def run_meta(corpus: str | None, seed: int, chat_before: int | None = None) -> dict:
    """What a delta run's identity records of its corpus beyond the token matrix (see `compute_delta`)."""
    return dict(**(source(corpus, "corpus") if corpus else {"corpus": "texts"}), seed=seed, chat_before=chat_before)


def _texts(corpus: str | None, texts, column: str, seed: int):
    """The texts given, or the corpus spec's (checked before any model loads)."""
    if texts is not None:
        return texts
    if corpus is None:
        raise UsageError("give a corpus (a file, hf:NAME or tfds:NAME) or texts=")
    return corpora.corpus_texts(corpus, column, seed)


def _lenses(base: Model, ft: Model, result: DiffResult, out: Path) -> LensResult:
    """The run's lenses: read once, then reloaded (a finished run's lenses belong to this very delta)."""
    if (out / LENS).exists():
        return LensResult.from_json(io.read_json(out / LENS))
    lenses = read_lenses(base, ft, result)
    io.write_json(out / LENS, lenses.to_json())
    return lenses


def load(out: str | Path) -> ADLResult:
    """Reload a finished run directory."""
    out = Path(out)
    return ADLResult(DiffResult.load(out), LensResult.from_json(io.read_json(out / LENS)), out)
