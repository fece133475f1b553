"""Text sources and the paper's preprocessing into fixed-length token rows.

A source is any iterable of strings. ADL only reads the first few tokens of each text, so sources are
consumed lazily and each text is cut to `10 * n` characters before tokenizing (as the paper does).
Sources: local .txt (one text per line) / .jsonl / .parquet files, HF `datasets` streaming, TFDS, and
an offline source of unconditional samples from the base model (see `adl_jax.method.samples`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from adl_jax import io
from adl_jax.errors import InputError, MissingExtra

FINEWEB = "science-of-finetuning/fineweb-1m-sample"


def local_texts(path: str | Path, column: str = "text", seed: int | None = 42, what: str = "corpus") -> list[str]:
    """All texts of a local file, shuffled with `seed` (None keeps file order). `what` names the file's role
    in error messages."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} file {path} {state}")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{what} file {path} is not UTF-8 text ({e})") from e
    if path.suffix == ".txt":
        texts = [line.strip() for line in lines if line.strip()]
    elif path.suffix == ".jsonl":
        texts = []
        for i, row in io.jsonl_rows(lines, path):
            if not isinstance(row, dict) or column not in row:
                fields = sorted(row) if isinstance(row, dict) else f"a JSON {type(row).__name__}"
                raise InputError(f"{path}:{i} has no field {column!r} (it has {fields}); pass --column")
            if not isinstance(row[column], str | list):  # a text, or a conversation for the chat variant
                kind = type(row[column]).__name__
                raise InputError(f"{path}:{i}: field {column!r} is a {kind}, not a text (or a list of messages)")
            texts.append(row[column])
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise MissingExtra("reading .parquet needs pyarrow: pip install 'adl-jax[hf]'") from e
        table = pq.read_table(path)
        if column not in table.column_names:
            raise InputError(f"{path} has no column {column!r} (columns: {table.column_names}); pass --column")
        texts = [str(t) for t in table.column(column).to_pylist()]
    else:
        raise InputError(f"unsupported {what} file type {path.suffix!r} ({path}): use .txt, .jsonl or .parquet")
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(texts))
        texts = [texts[i] for i in order]
    return texts


def hf_texts(name: str = FINEWEB, split: str = "train", column: str = "text", seed: int = 42) -> Iterator[str]:
    """Stream texts of an HF dataset, shuffled with `seed` through a buffer (needs network + `datasets`)."""
    try:
        import datasets
    except ImportError as e:
        raise MissingExtra("HF datasets sources need the optional extra: pip install 'adl-jax[hf]'") from e
    stream = datasets.load_dataset(name, split=split, streaming=True).shuffle(seed=seed, buffer_size=10_000)
    return (row[column] for row in stream)


def tfds_texts(name: str, split: str = "train", key: str = "text", seed: int = 42) -> Iterator[str]:
    """Texts of a TensorFlow Datasets dataset (needs `tensorflow-datasets`)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise MissingExtra("TFDS sources need the optional extra: pip install 'adl-jax[tfds]'") from e
    ds = tfds.load(name, split=split, shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=seed))
    for row in tfds.as_numpy(ds):
        value = row[key]
        yield value.decode() if isinstance(value, bytes) else str(value)


def tokenize_texts(
    texts: Iterable[str], tokenizer, n: int, count: int, *, allow_fewer: bool = False, chunk: int = 256
) -> np.ndarray:
    """The paper's preprocessing: cut to 10*n characters, tokenize with special tokens (BOS), drop texts
    shorter than n tokens, keep the first n. Returns (count, n) int32 token ids."""
    rows, seen = [], 0
    it = iter(texts)
    while len(rows) < count:
        batch = [t[: 10 * n] for _, t in zip(range(chunk), it)]
        if not batch:
            break
        seen += len(batch)
        for ids in tokenizer(batch, add_special_tokens=True)["input_ids"]:
            if len(ids) >= n and len(rows) < count:
                rows.append(ids[:n])
    if len(rows) < count and not allow_fewer:
        raise InputError(
            f"the corpus gave only {len(rows)} usable texts of >= {n} tokens (out of {seen} read) but {count} "
            "were requested: lower --samples or --n, use a larger corpus, or allow fewer (--allow-fewer)"
        )
    if not rows:
        raise InputError(f"the corpus has no text of at least {n} tokens ({seen} read)")
    return np.asarray(rows, dtype=np.int32)


def tokenize_chats(
    conversations: Iterable[list[dict]], tokenizer, n: int, count: int, *, before: int = 0, allow_fewer: bool = False
) -> np.ndarray:
    """The chat variant: rows of n tokens around the start of the first assistant turn.

    Each conversation (a list of {"role", "content"}) is rendered with the tokenizer's chat template up to
    its first assistant message; the row starts `before` tokens ahead of that message's first token, so
    position `before` of every row is the assistant's first token. Returns (count, n) int32 token ids.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat variant needs a tokenizer with a chat template; this one has none")
    rows, seen = [], 0
    for messages in conversations:
        if len(rows) == count:
            break
        seen += 1
        turn = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
        if turn is None:
            continue
        prompt = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) - before
        ids = tokenizer(prompt + messages[turn]["content"], add_special_tokens=False)["input_ids"]
        if start >= 0 and len(ids) >= start + n:
            rows.append(ids[start : start + n])
    if len(rows) < count and not allow_fewer or not rows:
        raise ValueError(
            f"only {len(rows)} of {seen} conversations have an assistant turn with {n - before} tokens after its "
            f"start and {before} before it, but {count} were requested: lower --samples or --n, or allow fewer"
        )
    return np.asarray(rows, dtype=np.int32)


def corpus_texts(spec: str, column: str = "text", seed: int = 42):
    """A corpus spec -> texts: a local .txt/.jsonl/.parquet path, `hf:NAME[:split]`, or `tfds:NAME[:split]`."""
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        return hf_texts(name, split or "train", column, seed)
    if spec.startswith("tfds:"):
        name, _, split = spec[5:].partition(":")
        return tfds_texts(name, split or "train", column, seed)
    return local_texts(spec, column, seed)
