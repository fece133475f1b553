"""Text sources and the paper's preprocessing into fixed-length token rows.

A source is any iterable of strings. ADL only reads the first few tokens of each text, so sources are
consumed lazily and each text is cut to `10 * n` characters before tokenizing (as the paper does).
Sources: local .txt (one text per line) / .jsonl / .parquet files, HF datasets and TFDS datasets (read by
index, so only the records used are read), and an offline source of unconditional samples from the base
model (see `adl_jax.method.samples`). In a multi-process run each process reads only its share of the
texts (`process_share`) and the shares are gathered into one token matrix (`gather_share`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import chex
import numpy as np

from adl_jax import io
from adl_jax.errors import InputError, MissingExtra


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
    return [texts[i] for i in shuffled(len(texts), seed)]


def shuffled(size: int, seed: int | None) -> np.ndarray:
    """The order a corpus of `size` texts is read in: a seeded permutation, or file order when seed is None.
    One order for every source, so the same texts give the same rows from a file, TFDS or HF."""
    return np.arange(size) if seed is None else np.random.default_rng(seed).permutation(size)


class CorpusTexts(Sequence):
    """The texts of a random-access source (TFDS, HF datasets) in `shuffled` order. Indexing or slicing reads
    only those records, so a process reading its share of a corpus never reads the rest."""

    def __init__(self, size: int, fetch, column: str, seed: int | None, name: str):
        self._fetch, self._order, self._column, self._name = fetch, shuffled(size, seed), column, name

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self):
        for start in range(0, len(self), 256):  # a read per 256 records, not per record
            yield from self[start : start + 256]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._text(row) for row in self._fetch(self._order[index])]
        return self._text(self._fetch(self._order[[index]])[0])

    def _text(self, row: dict) -> str:
        if self._column not in row:
            raise InputError(f"{self._name} has no field {self._column!r} (it has {sorted(row)}); pass --column")
        return row[self._column]


def hf_records(name: str, split: str = "train"):
    """(size, fetch) of an HF dataset: `name` a local dataset directory or a hub id, its files downloaded once
    into the hub cache (read from there with HF_HUB_OFFLINE=1); `fetch(indices)` -> those rows as dicts.
    The rows are memory-mapped Arrow, so reading some of them reads only those."""
    try:
        import datasets
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise MissingExtra("HF datasets sources need the optional extra: pip install 'adl-jax[hf]'") from e
    where = Path(name).expanduser()
    if not where.is_dir():
        try:
            where = snapshot_download(name, repo_type="dataset")
        except LocalEntryNotFoundError as e:
            raise InputError(
                f"hf:{name}: not in the hub cache and the hub cannot be reached ({e.__class__.__name__}); "
                "download it once online, or give a local dataset directory (hf:/path/to/dir)"
            ) from e
    try:
        ds = datasets.load_dataset(str(where), split=split)
    except ValueError as e:  # an unknown split
        raise InputError(f"hf:{name}:{split}: {e}") from e

    def fetch(indices) -> list[dict]:
        columns = ds[np.asarray(indices).tolist()]
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    return len(ds), fetch


def tfds_records(name: str, split: str = "train"):
    """(size, fetch) of a prepared TensorFlow Datasets dataset in array_record format, read with
    `tfds.data_source` (random access, no TensorFlow) from $TFDS_DATA_DIR (default ~/tensorflow_datasets);
    text features come as str."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise MissingExtra("TFDS sources need the optional extra: pip install 'adl-jax[tfds]'") from e
    try:
        source = tfds.data_source(name, split=split, data_dir=os.environ.get("TFDS_DATA_DIR"), download=False)
    except Exception as e:  # tfds raises assorted errors for a dataset that is missing or not array_record
        raise InputError(
            f"tfds:{name}:{split} cannot be read ({e}); prepare it once in array_record format: "
            f"tfds build {name} --file_format=array_record (data dir: $TFDS_DATA_DIR)"
        ) from e
    decode = lambda v: v.decode() if isinstance(v, bytes) else v

    def fetch(indices) -> list[dict]:
        return [{k: decode(v) for k, v in row.items()} for row in source.__getitems__(np.asarray(indices).tolist())]

    return len(source), fetch


def records(spec: str) -> list[dict]:
    """Every row of an `hf:NAME[:split]` or `tfds:NAME[:split]` dataset, in its own order (finetuning data)."""
    size, fetch = _remote(spec)
    return fetch(np.arange(size))


def _remote(spec: str):
    kind, _, rest = spec.partition(":")
    name, _, split = rest.partition(":")
    return (hf_records if kind == "hf" else tfds_records)(name, split or "train")


def is_dataset(spec: str) -> bool:
    """Whether a data spec names an HF or TFDS dataset rather than a local file."""
    return str(spec).startswith(("hf:", "tfds:"))


def tokenize_texts(
    texts: Iterable[str], tokenizer, n: int, count: int, *, allow_fewer: bool = False, chunk: int = 256
) -> np.ndarray:
    """The paper's preprocessing: cut to 10*n characters, tokenize with special tokens (BOS), drop texts
    shorter than n tokens, keep the first n. Returns (count, n) int32 token ids."""
    rows, seen = [], 0
    it = iter(texts)
    while len(rows) < count:
        batch = list(itertools.islice(it, chunk))
        if not batch:
            break
        seen += len(batch)
        rows += _usable(batch, tokenizer, n)[: count - len(rows)]
    _check_count(len(rows), count, seen, n, allow_fewer)
    return np.asarray(rows, dtype=np.int32)


def _usable(texts: list[str], tokenizer, n: int) -> list[list[int]]:
    """The first n tokens of each text (cut to 10*n characters) that has at least n."""
    ids = tokenizer([t[: 10 * n] for t in texts], add_special_tokens=True)["input_ids"]
    return [row[:n] for row in ids if len(row) >= n]


def _check_count(found: int, count: int, seen: int, n: int, allow_fewer: bool) -> None:
    if found < count and not allow_fewer:
        raise InputError(
            f"the corpus gave only {found} usable texts of >= {n} tokens (out of {seen} read) but {count} "
            "were requested: lower --samples or --n, use a larger corpus, or allow fewer (--allow-fewer)"
        )
    if not found:
        raise InputError(f"the corpus has no text of at least {n} tokens ({seen} read)")


@dataclasses.dataclass(frozen=True)
class Share:
    """This process's rows of a corpus's token matrix: `tokens[i]` is row `rows[i]` of the (total, n) matrix
    that `tokenize_texts` builds in one process."""

    tokens: np.ndarray  # (m, n) int32
    rows: np.ndarray  # (m,) int64, increasing
    total: int

    def __post_init__(self):
        chex.assert_rank(self.tokens, 2)
        chex.assert_shape(self.rows, (len(self.tokens),))


def process_share(
    texts: Sequence[str],
    tokenizer,
    n: int,
    count: int,
    *,
    allow_fewer: bool = False,
    chunk: int = 256,
    process: tuple[int, int] | None = None,
    gather=None,
) -> Share:
    """This process's share of `tokenize_texts(texts, ...)`, reading only its own texts.

    The texts are read in chunks dealt out in turn: chunk c (texts c*chunk .. c*chunk+chunk-1) goes to process
    c % P. After each round of P chunks the processes exchange how many usable texts each found (`gather`:
    this process's count -> every process's, by default a JAX all-gather), so each knows where its rows fall
    in the single-process matrix: chunk by chunk, in text order. `process`: (index, count), default JAX's.
    """
    import jax

    index, processes = process or (jax.process_index(), jax.process_count())
    gather = gather or (_allgather if processes > 1 else lambda k: np.array([k]))
    tokens, rows, found, start = [], [], 0, 0
    while found < count and start < len(texts):
        mine = start + index * chunk
        usable = _usable(texts[mine : mine + chunk], tokenizer, n) if mine < len(texts) else []
        counts = np.asarray(gather(len(usable)))
        first = found + int(counts[:index].sum())
        keep = max(0, min(len(usable), count - first))
        tokens += usable[:keep]
        rows += range(first, first + keep)
        found, start = found + int(counts.sum()), start + processes * chunk
    _check_count(min(found, count), count, min(start, len(texts)), n, allow_fewer)
    return Share(np.asarray(tokens, np.int32).reshape(-1, n), np.asarray(rows, np.int64), min(found, count))


def _allgather(value: int) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)


def gather_share(share: Share) -> np.ndarray:
    """The whole (total, n) token matrix from every process's `Share` (an all-gather of the shares)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return share.tokens
    room = int(np.max(multihost_utils.process_allgather(np.int64(len(share.rows)))))
    pad = room - len(share.rows)
    tokens = np.pad(share.tokens, ((0, pad), (0, 0)))
    rows = np.pad(share.rows, (0, pad), constant_values=-1)
    all_tokens, all_rows = (np.asarray(multihost_utils.process_allgather(x)) for x in (tokens, rows))
    out = np.zeros((share.total, share.tokens.shape[1]), np.int32)
    placed = all_rows >= 0
    out[all_rows[placed]] = all_tokens[placed]
    return out


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


def corpus_texts(spec: str, column: str = "text", seed: int | None = 42) -> Sequence[str]:
    """A corpus spec -> its texts in `shuffled` order: a local .txt/.jsonl/.parquet path (read whole),
    `hf:NAME[:split]` or `tfds:NAME[:split]` (read as indexed)."""
    if is_dataset(spec):
        return CorpusTexts(*_remote(spec), column, seed, spec)
    return local_texts(spec, column, seed)
