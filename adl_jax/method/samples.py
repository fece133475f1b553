"""The offline corpus: unconditional samples from the base model, cached on disk.

With no dataset hub, pretraining-like text comes from the base model itself: sampling from BOS at
temperature 1 (top-p 0.95) gives text that follows its pretraining distribution. Samples are made in
chunks whose keys derive from (seed, chunk index), several chunks to a generation call (calls start at
fixed chunk indices), appended to a partial file as each call finishes, so an interrupted run resumes
where it stopped and the final file does not depend on interruptions. (The rows of a larger batch can
round differently on some backends, so a text of another call layout may part from this one at a token.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from adl_jax import io
from adl_jax.models.generate import STREAM, generate
from adl_jax.models.load import Model


def with_spare(count: int) -> int:
    """How many samples to draw for `count` usable texts: an eighth more, since a sample that hits EOS
    early is too short to use. Samples are drawn in seeded chunks, so the first texts stay the same."""
    return count + count // 8 + 1


BASE_SAMPLES = "base-samples"  # the corpus spec of offline samples from the base model
# Chunks are drawn several to a generation call, each with its own key: on 2 CPU cores 160 rows a call
# sample 1.56x the tokens per second of 32 rows, and 320 rows only 1.02x more than 160.
ROWS_PER_CALL = 160


def pretraining_texts(
    source: str,
    base: Model,
    count: int,
    *,
    column: str = "text",
    seed: int | None = None,
    room: bool = False,
    progress: bool = True,
) -> list[str]:
    """`count` texts of a corpus spec, or for `base-samples` samples of `base` (offline, cached). `room`:
    more (an eighth more samples, four times as many corpus texts) for a consumer that drops texts too
    short to use. `seed` shuffles the corpus or seeds the samples (default: each source's own)."""
    from adl_jax.method.corpus import corpus_texts

    seeded = {} if seed is None else {"seed": seed}
    if source == BASE_SAMPLES:
        n = with_spare(count) if room else count
        return sample_texts(base, n, io.cache_root() / "corpus", progress=progress, **seeded)
    return list(itertools.islice(corpus_texts(source, column, **seeded), 4 * count if room else count))


def sample_texts(
    model: Model,
    count: int,
    cache_dir: str | Path,
    *,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 0.95,
    chunk: int = 32,
    progress: bool = True,
) -> list[str]:
    """`count` texts sampled from `model` (.spec, .cfg, .params, .tokenizer), reused from `cache_dir`."""
    if model.cfg.bos_token_id is None:
        raise ValueError(f"{model.spec} has no BOS token to sample from; use a corpus file instead")
    settings = dict(
        spec=model.spec,
        seed=seed,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        chunk=chunk,
        sampler=STREAM,  # samples of another sampler version are other texts: not mixed with these
    )
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir)
    partial = cache_dir / f"samples-{tag}.partial.jsonl"
    texts = _read_lines(partial)
    done = len(texts) // chunk
    texts = texts[: done * chunk]  # a chunk cut short by a crash is redone
    io.write_text(partial, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    bar = tqdm(total=count, initial=min(len(texts), count), unit="text", desc="sampling corpus", disable=not progress)
    per_call, end = max(1, ROWS_PER_CALL // chunk), -(-count // chunk)
    with partial.open("a") as f:
        while done < end:
            chunks = range(done, min(done - done % per_call + per_call, end))  # calls start at multiples
            gen = generate(
                model.params,
                model.cfg,
                [[model.cfg.bos_token_id]] * (chunk * len(chunks)),
                max_new_tokens=max_new_tokens,
                key=jnp.stack([jax.random.fold_in(jax.random.key(seed), c) for c in chunks]),
                groups=(chunk,) * len(chunks),
                temperature=temperature,
                top_p=top_p,
            )
            new = [
                model.tokenizer.decode(row[:n], skip_special_tokens=True)
                for row, n in zip(gen.tokens.tolist(), gen.lengths.tolist())
            ]
            f.write("".join(json.dumps({"text": t}) + "\n" for t in new))
            f.flush()
            texts += new
            done = chunks.stop
            bar.update(len(new))
    bar.close()
    io.write_json(cache_dir / f"samples-{tag}.json", dict(settings, count=len(texts)))
    return texts[:count]


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError):
            break  # a line torn by a crash ends the usable part
    return out
