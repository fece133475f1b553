"""The notebook-facing API: one call from model specs to delta and its lens readouts.

    res = adl_jax.api.diff("gemma-3-270m", "runs/cake_bake/final", corpus="corpus.jsonl", samples=2000)
    res                      # a readable table of top tokens per position
    res.diff.delta           # (k, D) numpy array

The CLI (`adl diff`, `adl lens`) is a thin layer over this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from adl_jax import corpus as corpora
from adl_jax import io
from adl_jax.diff import DiffResult, DiffSettings, compute_delta, resolve_layer
from adl_jax.lens import PATCHSCOPE_SCALES, TokenScores, logit_lens, patchscope, select_scale

LENS = "lens.json"


def corpus_texts(spec: str, column: str = "text", seed: int = 42):
    """A corpus spec -> texts: a local .txt/.jsonl/.parquet path, `hf:NAME[:split]`, or `tfds:NAME[:split]`."""
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        return corpora.hf_texts(name, split or "train", column, seed)
    if spec.startswith("tfds:"):
        name, _, split = spec[5:].partition(":")
        return corpora.tfds_texts(name, split or "train", column, seed)
    return corpora.local_texts(spec, column, seed)


@dataclasses.dataclass
class LensResult:
    """Per position: logit lens of delta, -delta and the two means; patchscope of delta at every scale."""

    positions: list[dict]

    def to_json(self) -> dict:
        def conv(x):
            if isinstance(x, TokenScores):
                return x.to_json()
            if isinstance(x, dict):
                return {str(k): conv(v) for k, v in x.items()}
            return x

        return {"positions": [conv(p) for p in self.positions]}

    @classmethod
    def from_json(cls, d: dict) -> LensResult:
        def conv(x):
            if isinstance(x, list) and x and isinstance(x[0], list):
                return TokenScores([r[1] for r in x], [r[0] for r in x], [r[2] for r in x])
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            return x

        return cls([conv(p) for p in d["positions"]])

    def table(self, top: int = 8) -> str:
        lines = []
        for p in self.positions:
            s = p["patchscope_scale"]
            lines.append(f"position {p['position']}")
            lines.append(f"  logit lens  delta : {_fmt(p['logit_lens']['delta'], top)}")
            lines.append(f"  logit lens -delta : {_fmt(p['logit_lens']['neg_delta'], top)}")
            lines.append(f"  patchscope @ {s:<5}: {_fmt(p['patchscope'][str(s)], top)}")
        return "\n".join(lines)


def _fmt(ts: TokenScores, top: int) -> str:
    return "  ".join(repr(t) for t in ts.tokens[:top])


def read_lenses(base, ft, result: DiffResult, *, scales=PATCHSCOPE_SCALES, top: int = 100) -> LensResult:
    """Logit lens (finetuned model's norm + head) and patchscope for every analysed position."""
    layer = result.meta["layer"]
    ll = logit_lens(
        ft.params,
        ft.cfg,
        np.concatenate([result.delta, -result.delta, result.mean_base, result.mean_ft]),
        ft.tokenizer,
        top=top,
    )
    k = len(result.delta)
    ps = patchscope(ft.params, ft.cfg, ft.tokenizer, result.delta, layer, result.ft_norm, scales=scales)
    positions = []
    for j in range(k):
        chosen = select_scale(ft.params, ps[j])
        positions.append(
            {
                "position": j,
                "delta_norm": float(np.linalg.norm(result.delta[j])),
                "logit_lens": {
                    "delta": ll[j],
                    "neg_delta": ll[k + j],
                    "base_mean": ll[2 * k + j],
                    "ft_mean": ll[3 * k + j],
                },
                "patchscope": {str(s): v for s, v in ps[j].items()},
                "patchscope_scale": chosen,
                "patchscope_scale_rule": "embedding coherence (offline)",
            }
        )
    return LensResult(positions)


@dataclasses.dataclass
class ADLResult:
    diff: DiffResult
    lenses: LensResult
    out: Path

    def __repr__(self):
        return f"{self.diff!r}\nresults in {self.out}\n{self.lenses.table()}"


def diff(
    base,
    finetuned,
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

    base = load_model(base, dtype=dtype, mesh=mesh) if isinstance(base, str) else base
    ft = load_model(finetuned, dtype=dtype, mesh=mesh) if isinstance(finetuned, str) else finetuned
    if texts is None:
        if corpus is None:
            raise ValueError("give a corpus (a file, hf:NAME or tfds:NAME) or texts=")
        texts = corpus_texts(corpus, column, seed)
    settings = DiffSettings(layer=resolve_layer(layer, base.cfg), k=k, n=n, batch_size=batch_size)
    if chat_before is None:
        tokens = corpora.tokenize_texts(texts, base.tokenizer, n, samples, allow_fewer=allow_fewer)
    else:
        tokens = corpora.tokenize_chats(texts, ft.tokenizer, n, samples, before=chat_before, allow_fewer=allow_fewer)
    result = compute_delta(
        base,
        ft,
        tokens,
        settings,
        out,
        mesh=mesh,
        progress=progress,
        meta=dict(corpus=corpus or "texts", seed=seed, chat_before=chat_before),
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
