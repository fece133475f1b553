"""Token-id rows of different lengths as one padded batch: the one padding rule every caller shares."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(
    rows: Sequence[Sequence[int]],
    *,
    bucket: int = 1,
    pad_id: int = 0,
    left: bool = True,
    max_width: int | None = None,
    num_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32, valid bool), both (num_rows or len(rows), width): `rows` padded with `pad_id` on the
    left (each row's last token in the last column, as generation and the patchscope need) or on the right.

    The width is the longest row rounded up to a multiple of `bucket` (capped at `max_width`), so batches of
    similar lengths share one compilation; `num_rows` adds empty rows for a fixed batch size.
    """
    lengths = [len(r) for r in rows]
    width = -(-max(lengths) // bucket) * bucket
    if max_width is not None:
        width = min(width, max_width)
    if max(lengths) > width:
        raise ValueError(f"a row of {max(lengths)} tokens does not fit the batch width {width}")
    shape = (len(rows) if num_rows is None else num_rows, width)
    tokens, valid = np.full(shape, pad_id, np.int32), np.zeros(shape, bool)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        cols = slice(width - n, width) if left else slice(0, n)
        tokens[i, cols], valid[i, cols] = row, True
    return tokens, valid
