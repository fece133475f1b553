"""Narrow finetuning data: JSONL documents or chat conversations, mixed with pretraining text.

Examples become fixed-length rows with a `targets` mask saying which tokens the loss scores: all tokens
after the first for documents and pretraining text, only the assistant's tokens for chats. Either one
example a row (right padding, long examples truncated), or packed: examples concatenated into full rows
with a segment id each, so attention and positions stay within an example and no padding is computed.
Batches are drawn by a sample cursor over per-epoch permutations, so the batch at any cursor is a pure
function of (rows, seed, cursor): a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import chex
import numpy as np

from adl_jax import io
from adl_jax.method.corpus import is_dataset, records


@dataclasses.dataclass(frozen=True)
class Rows:
    """Fixed-length rows. `targets[n, t]`: the loss scores token t of row n given the tokens before it."""

    tokens: np.ndarray  # (N, T) int32
    valid: np.ndarray  # (N, T) bool, False at padding
    targets: np.ndarray  # (N, T) bool
    segments: np.ndarray | None = None  # (N, T) int32: example 1, 2, ... of a packed row, 0 at padding

    def __post_init__(self):
        if self.segments is None:  # one example a row
            object.__setattr__(self, "segments", self.valid.astype(np.int32))
        chex.assert_rank(self.tokens, 2)
        chex.assert_equal_shape([self.tokens, self.valid, self.targets, self.segments])

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, index) -> Rows:
        return Rows(*(getattr(self, f.name)[index] for f in dataclasses.fields(Rows)))

    @staticmethod
    def concat(*parts: Rows) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Rows)))


@dataclasses.dataclass(frozen=True)
class Splits:
    train: Rows  # finetuning rows mixed with pretraining rows
    eval_ft: Rows | None  # held-out finetuning examples
    eval_pt: Rows | None  # held-out pretraining texts (None without pretraining texts)


def read_jsonl(path: str | Path) -> list[dict]:
    """Examples of a JSONL file, each `{"text": str}` or `{"messages": [{"role", "content"}, ...]}`.
    Checked here, line by line, so a bad example is reported by its line rather than mid-training."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"finetuning data {path} does not exist")
    rows = []
    for i, row in io.jsonl_rows(path.read_text().splitlines(), path):
        _check_example(row, f"{path}:{i}")
        rows.append(row)
    if not rows:
        raise ValueError(f"finetuning data {path} is empty: it needs one JSON object per line")
    return rows


def read_examples(spec: str | Path) -> list[dict]:
    """Examples of a JSONL file, or of an `hf:NAME[:split]` / `tfds:NAME[:split]` dataset whose rows have a
    `text` or a `messages` field (other fields are left out), in the dataset's order."""
    if not is_dataset(str(spec)):
        return read_jsonl(spec)
    examples = []
    for i, row in enumerate(records(str(spec))):
        _check_example(row, f"{spec} row {i}")
        examples.append({"text": row["text"]} if "text" in row else {"messages": row["messages"]})
    if not examples:
        raise ValueError(f"finetuning data {spec} has no rows")
    return examples


def _check_example(row, where: str) -> None:
    if not isinstance(row, dict) or not ("text" in row or "messages" in row):
        fields = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{where} has neither a 'text' nor a 'messages' field (it has {fields})")
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError(f"{where}: 'text' must be a non-empty string")
        return
    messages = row["messages"]
    well_formed = lambda m: isinstance(m, dict) and {"role", "content"} <= set(m)
    if not isinstance(messages, list) or not all(map(well_formed, messages)):
        raise ValueError(f"{where}: 'messages' must be a list of {{'role': ..., 'content': ...}} objects")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: the conversation has no assistant turn, so nothing would be trained on")


def encode_document(text: str, tokenizer) -> tuple[list[int], list[bool]]:
    """Tokens with special tokens (BOS) plus EOS; every token but the first is a target."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id]:
        ids.append(tokenizer.eos_token_id)
    return ids, [False] + [True] * (len(ids) - 1)


def encode_chat(messages: list[dict], tokenizer) -> tuple[list[int], list[bool]]:
    """Tokens of the rendered chat; targets are the tokens of the assistant turns (with their end-of-turn).

    Each assistant turn's characters are found by rendering the conversation up to it (with the
    generation prompt) and up to its end; tokens starting inside those spans are targets. This needs
    no `{% generation %}` markers in the template, only that it renders conversations prefix-consistently.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat examples need a tokenizer with a chat template; this tokenizer has none")
    if not tokenizer.is_fast:
        raise ValueError("chat examples need a fast tokenizer (character offsets locate the assistant turns)")
    render = lambda msgs, prompt: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)
    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start, end = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(start) and full.startswith(end)):
            raise ValueError(
                "the chat template does not render conversations prefix-consistently, so assistant "
                "turns cannot be located; train on documents or use another template"
            )
        spans.append((len(start), len(end)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    targets = [any(a <= s < b for a, b in spans) for s, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), targets


def encode(example: dict, tokenizer) -> tuple[list[int], list[bool]]:
    if "text" in example:
        return encode_document(example["text"], tokenizer)
    return encode_chat(example["messages"], tokenizer)


def pad_rows(encoded: Sequence[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> Rows:
    """Right-pad (or truncate) to `seq_len`. Rows left without any target are dropped, with a warning."""
    n = len(encoded)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    valid = np.zeros((n, seq_len), bool)
    targets = np.zeros((n, seq_len), bool)
    truncated = 0
    for r, (ids, tgt) in enumerate(encoded):
        k = min(len(ids), seq_len)
        truncated += len(ids) > seq_len
        tokens[r, :k], valid[r, :k], targets[r, :k] = ids[:k], True, tgt[:k]
    keep = targets.any(axis=1)
    if truncated or not keep.all():
        warnings.warn(
            f"{truncated} of {n} examples truncated to {seq_len} tokens; "
            f"{int((~keep).sum())} dropped for having no target token left",
            stacklevel=3,
        )
    return Rows(tokens[keep], valid[keep], targets[keep])


def pieces(ids: list[int], targets: list[bool], seq_len: int) -> list[tuple[list[int], list[bool]]]:
    """An example cut into pieces of at most `seq_len` tokens that overlap by one: each piece starts with the
    last token of the one before as context (no target), so every target token keeps its loss."""
    if len(ids) <= seq_len:
        return [(ids, [False] + targets[1:])]  # a row's first token is never scored; packed, it must not be
    step = seq_len - 1
    return [(ids[s : s + seq_len], [False] + targets[s + 1 : s + seq_len]) for s in range(0, len(ids) - 1, step)]


def pack_rows(encoded: Sequence[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> Rows:
    """Examples placed whole, in the given order, each into the first row with room (first fit); one longer
    than `seq_len` is split into `pieces` first, with a warning counting them. Pieces without a target
    token (e.g. a chat's user turn) are dropped, also counted."""
    if seq_len < 2:
        raise ValueError(f"packing needs seq_len >= 2, not {seq_len}")
    split = [p for ids, tgt in encoded for p in pieces(ids, tgt, seq_len)]
    kept = [p for p in split if any(p[1])]
    n = len(kept)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    targets = np.zeros((n, seq_len), bool)
    segments = np.zeros((n, seq_len), np.int32)
    used = np.zeros(n, np.int64)  # tokens placed per row; rows 0..rows-1 are open
    count = np.zeros(n, np.int32)  # segments per row
    rows = 0
    for ids, tgt in kept:
        fits = np.flatnonzero(used[:rows] + len(ids) <= seq_len)
        r = fits[0] if len(fits) else rows
        rows += not len(fits)
        a, b = used[r], used[r] + len(ids)
        count[r] += 1
        tokens[r, a:b], targets[r, a:b], segments[r, a:b] = ids, tgt, count[r]
        used[r] = b
    long = sum(len(ids) > seq_len for ids, _ in encoded)
    if long or len(kept) < len(split):
        warnings.warn(
            f"{long} of {len(encoded)} examples longer than {seq_len} tokens split into pieces; "
            f"{len(split) - len(kept)} pieces dropped for having no target token",
            stacklevel=3,
        )
    segments = segments[:rows]
    return Rows(tokens[:rows], segments > 0, targets[:rows], segments)


def build_splits(
    examples: Sequence[dict],
    tokenizer,
    seq_len: int,
    *,
    pretrain_texts: Sequence[str] = (),
    mix_ratio: float = 0.0,
    eval_fraction: float = 0.1,
    seed: int = 0,
    pack: bool = False,
) -> Splits:
    """Hold out `eval_fraction` of the finetuning examples, and add round(mix_ratio * n_train) pretraining
    texts to the training rows (1:r finetuning to pretraining samples). Held-out pretraining texts as
    many as finetuning eval examples are kept for the eval loss on pretraining data. `pack`: rows of
    concatenated examples (`pack_rows`, in the seeded order) instead of one padded example a row."""
    if not examples:
        raise ValueError("no finetuning examples")
    for i, ex in enumerate(examples):
        _check_example(ex, f"example {i}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    n_eval, n_pt_train = _split_sizes(len(examples), mix_ratio, eval_fraction)
    ft = [encode(examples[i], tokenizer) for i in order]
    n_pt_eval = n_eval if len(pretrain_texts) else 0
    if n_pt_train + n_pt_eval > len(pretrain_texts):
        raise ValueError(
            f"mix ratio {mix_ratio} over {len(ft) - n_eval} finetuning examples needs {n_pt_train} pretraining "
            f"texts plus {n_pt_eval} held out, but {len(pretrain_texts)} were given"
        )
    pt_order = rng.permutation(len(pretrain_texts))[: n_pt_train + n_pt_eval]
    pt = [encode_document(pretrain_texts[i], tokenizer) for i in pt_order]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = lambda enc: (pack_rows if pack else pad_rows)(enc, seq_len, pad_id) if enc else None
    train = rows(ft[n_eval:] + pt[n_pt_eval:])
    if not len(train):
        raise ValueError(f"no training example keeps a target token within seq_len={seq_len}")
    return Splits(train=train, eval_ft=rows(ft[:n_eval]), eval_pt=rows(pt[:n_pt_eval]))


def _split_sizes(n_examples: int, mix_ratio: float, eval_fraction: float) -> tuple[int, int]:
    """(held-out finetuning examples, pretraining texts mixed into training)."""
    n_eval = min(round(eval_fraction * n_examples), n_examples - 1)
    return n_eval, round(mix_ratio * (n_examples - n_eval))


def pretrain_texts_needed(n_examples: int, mix_ratio: float, eval_fraction: float) -> int:
    """How many pretraining texts `build_splits` uses: the mixed-in ones plus as many held out as
    finetuning examples are held out."""
    return sum(_split_sizes(n_examples, mix_ratio, eval_fraction))


def batch_at(rows: Rows, cursor: int, size: int, seed: int) -> Rows:
    """Samples cursor .. cursor+size-1 of the endless stream that visits all rows once per epoch, each
    epoch in its own seeded order."""
    n = len(rows)
    index = [_epoch_order(n, seed, j // n)[j % n] for j in range(cursor, cursor + size)]
    return rows.take(np.asarray(index))


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)
