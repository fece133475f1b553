"""Corpus sources and preprocessing, including the chat variant's alignment on the assistant turn."""

import json

import numpy as np
import pytest

from adl_jax.method.corpus import local_texts, tokenize_chats, tokenize_texts
from conftest import tiny_tokenizer

TEMPLATE = (
    "{% for m in messages %}w3 {{ m['role'] }} {{ m['content'] }} w4 {% endfor %}"
    "{% if add_generation_prompt %}w3 assistant {% endif %}"
)


def test_local_files_and_the_papers_cuts(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": f"w{i} " * 30}) + "\n" for i in range(5, 25)))
    texts = local_texts(tmp_path / "c.jsonl", column="body", seed=42)
    assert len(texts) == 20 and texts != local_texts(tmp_path / "c.jsonl", column="body", seed=None)
    rows = tokenize_texts(texts, tiny_tokenizer(), n=8, count=20)
    assert rows.shape == (20, 8) and (rows[:, 0] == 1).all()
    # 10*n characters: 'w5 ' * 30 is 90 characters, cut to 40 = 13 words + BOS >= 8 tokens; n=16 needs 160.
    assert tokenize_texts(texts, tiny_tokenizer(), n=14, count=20).shape == (20, 14)
    with pytest.raises(ValueError, match="only 0 usable texts"):
        tokenize_texts(texts, tiny_tokenizer(), n=40, count=2)
    with pytest.raises(ValueError, match="no field 'text'"):
        local_texts(tmp_path / "c.jsonl")
    with pytest.raises(FileNotFoundError):
        local_texts(tmp_path / "missing.txt")


def test_chat_rows_start_at_the_assistant_turn():
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.add_tokens(["user", "assistant"])
    convs = [[{"role": "user", "content": "w5 w6"}, {"role": "assistant", "content": "w7 w8 w9 w10 w11"}]] * 3
    rows = tokenize_chats(convs, tok, n=4, count=3, before=1)
    assistant = tok.convert_tokens_to_ids("assistant")
    np.testing.assert_array_equal(rows[0], [assistant, 7, 8, 9])
    with pytest.raises(ValueError, match="assistant turn"):
        tokenize_chats(convs, tok, n=10, count=3)
    with pytest.raises(ValueError, match="chat template"):
        tokenize_chats(convs, tiny_tokenizer(), n=4, count=1)
