"""The lens in one call: from two model specs and a corpus to delta and its readouts, in a run directory.

res = diff("gemma-3-270m", "runs/cake_bake/final", corpus="corpus.jsonl", samples=2000)
res                      # a readable table of top tokens per position
res.diff.delta           # (k, D) numpy array
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp

from adl_jax import io
from adl_jax.errors import UsageError, require
from adl_jax.method import corpus as corpora
from adl_jax.method.diff import DiffResult, DiffSettings, compute_delta
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
    batch_size: int = 32,
    seed: int = 42,
    out: str | Path = "runs/diff",
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
    """
    from adl_jax.models.load import load_model

    # Everything that needs no model is checked before one loads and before `out` is touched.
    settings = DiffSettings(layer=layer, k=k, n=n, batch_size=batch_size)
    require(samples >= 1, "samples", samples, "the number of texts to average over must be at least 1")
    require(chat_before is None or 0 <= chat_before < n, "chat_before", chat_before, f"must be in 0..n-1 (n={n})")
    if texts is None:
        if corpus is None:
            raise UsageError("give a corpus (a file, hf:NAME or tfds:NAME) or texts=")
        texts = corpora.corpus_texts(corpus, column, seed)
    with io.run_lock(out):
        base = load_model(base, dtype=dtype, mesh=mesh) if isinstance(base, str) else base
        ft = load_model(finetuned, dtype=dtype, mesh=mesh, base=base) if isinstance(finetuned, str) else finetuned
        if chat_before is None and isinstance(texts, Sequence):  # each process reads its share, all get the matrix
            share = corpora.process_share(texts, base.tokenizer, n, samples, allow_fewer=allow_fewer)
            tokens = corpora.gather_share(share)
        elif chat_before is None:  # an iterable, perhaps endless: every process reads it
            tokens = corpora.tokenize_texts(texts, base.tokenizer, n, samples, allow_fewer=allow_fewer)
        else:
            tokens = corpora.tokenize_chats(
                texts, ft.tokenizer, n, samples, before=chat_before, allow_fewer=allow_fewer
            )
        result = compute_delta(
            base,
            ft,
            tokens,
            settings,
            out,
            mesh=mesh,
            progress=progress,
            meta=dict(
                **(source(corpus, "corpus") if corpus else {"corpus": "texts"}), seed=seed, chat_before=chat_before
            ),
        )
        if (Path(out) / LENS).exists():  # a finished run: its lenses belong to this very delta
            lenses = LensResult.from_json(io.read_json(Path(out) / LENS))
        else:
            lenses = read_lenses(base, ft, result)
            io.write_json(Path(out) / LENS, lenses.to_json())
    return ADLResult(result, lenses, Path(out))


def load(out: str | Path) -> ADLResult:
    """Reload a finished run directory."""
    out = Path(out)
    return ADLResult(DiffResult.load(out), LensResult.from_json(io.read_json(out / LENS)), out)
