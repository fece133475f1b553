"""The one padding rule: generation, the patchscope, the likelihood judge and the sentence encoder share it."""

import numpy as np
import pytest

from adl_jax.models.batching import pad_batch


def test_left_padding_puts_every_last_token_in_the_last_column():
    tokens, valid = pad_batch([[5, 6, 7], [8]], bucket=4, pad_id=1)
    np.testing.assert_array_equal(tokens, [[1, 5, 6, 7], [1, 1, 1, 8]])
    np.testing.assert_array_equal(valid, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert tokens.dtype == np.int32 and valid.dtype == bool
    assert pad_batch([[1] * 17], bucket=16)[0].shape == (1, 32)  # rounded up to the bucket
    assert pad_batch([[1] * 16], bucket=16)[0].shape == (1, 16)


def test_right_padding_with_fixed_rows_and_a_width_cap():
    tokens, valid = pad_batch([[3, 4, 5], [6]], bucket=32, left=False, max_width=4, num_rows=3)
    np.testing.assert_array_equal(tokens, [[3, 4, 5, 0], [6, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(valid.sum(1), [3, 1, 0])
    with pytest.raises(ValueError, match="a row of 5 tokens does not fit the batch width 4"):
        pad_batch([[1] * 5], bucket=32, max_width=4)
