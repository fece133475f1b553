"""Corpus sources and preprocessing, including the chat variant's alignment on the assistant turn; HF and
TFDS datasets built offline against the same texts from JSONL; each process's share of a corpus."""

import json
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from adl_jax.method.corpus import corpus_texts, local_texts, process_share, records, tokenize_chats, tokenize_texts
from conftest import random_texts, tiny_tokenizer

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


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def hf_hub_dataset(cache, repo: str, texts) -> None:
    """`texts` as one parquet file of a dataset repo in the HF hub-cache layout, as a download leaves it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = cache / f"datasets--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40) / "data").mkdir(parents=True)
    pq.write_table(
        pa.table({"text": texts}), folder / "snapshots" / ("0" * 40) / "data" / "train-00000-of-00001.parquet"
    )


def tfds_dataset(data_dir, texts) -> str:
    """`texts` as a prepared TFDS dataset in array_record format (the format `tfds.data_source` reads), kept in
    their order (TFDS otherwise stores examples in the order of their keys' hashes)."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyTexts(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            return ((i, {"text": t}) for i, t in enumerate(texts))

    TinyTexts(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_texts"


def test_hf_and_tfds_corpora_give_the_jsonl_token_matrix(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    texts = random_texts(np.random.RandomState(0), 60, words=(2, 20))
    jsonl = tokenize_texts(corpus_texts(str(write_jsonl(tmp_path / "c.jsonl", texts))), tiny_tokenizer(), 8, 30)
    hf_hub_dataset(tmp_path / "hub", "someone/tiny", texts)
    for module, name, value in [
        (huggingface_hub.constants, "HF_HUB_OFFLINE", True),
        (huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub")),
        (datasets.config, "HF_HUB_OFFLINE", True),
        (datasets.config, "HF_DATASETS_CACHE", tmp_path / "arrow"),
    ]:
        monkeypatch.setattr(module, name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    name = tfds_dataset(tmp_path / "tfds", texts)
    for spec in ("hf:someone/tiny", "hf:someone/tiny:train", f"tfds:{name}", f"tfds:{name}:train"):
        np.testing.assert_array_equal(tokenize_texts(corpus_texts(spec), tiny_tokenizer(), 8, 30), jsonl, err_msg=spec)
    assert [r["text"] for r in records("hf:someone/tiny")] == [r["text"] for r in records(f"tfds:{name}")] == texts
    with pytest.raises(ValueError, match="no field 'body'"):
        corpus_texts("hf:someone/tiny", column="body")[0]
    with pytest.raises(ValueError, match="not in the hub cache"):
        corpus_texts("hf:someone/else")
    with pytest.raises(ValueError, match="tfds build missing --file_format=array_record"):
        corpus_texts("tfds:missing")


class Reads(Sequence):
    """A list of texts that records which ones were read."""

    def __init__(self, texts):
        self.texts, self.read = texts, set()

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, index):
        self.read.update(range(len(self.texts))[index])
        return self.texts[index]


def shares(texts, processes: int, n: int, count: int, chunk: int, **kw):
    """`process_share` in `processes` threads standing for processes, the count exchange through a barrier;
    returns each one's share and the texts it read."""
    barrier, said, out = threading.Barrier(processes), [None] * processes, [None] * processes

    def one(p):
        def gather(k):
            said[p] = k
            barrier.wait()
            counts = list(said)
            barrier.wait()
            return counts

        reads = Reads(texts)
        share = process_share(
            reads, tiny_tokenizer(), n, count, chunk=chunk, process=(p, processes), gather=gather, **kw
        )
        out[p] = share, reads.read

    threads = [threading.Thread(target=one, args=(p,)) for p in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("processes", [1, 3])
def test_the_shares_of_all_processes_are_the_one_process_matrix(processes):
    texts = random_texts(np.random.RandomState(1), 100, words=(2, 16))  # about a third shorter than 8 tokens
    for count in (10, 50):
        single = tokenize_texts(texts, tiny_tokenizer(), 8, count)
        out = shares(texts, processes, 8, count, chunk=4)
        rows = np.concatenate([share.rows for share, _ in out])
        np.testing.assert_array_equal(np.sort(rows), np.arange(count))  # every row once
        matrix = np.zeros_like(single)
        for share, _ in out:
            assert share.total == count and (np.diff(share.rows) > 0).all()
            matrix[share.rows] = share.tokens
        np.testing.assert_array_equal(matrix, single)
        # process p read only its chunks (p, p + P, ... of 4 texts each), none past the last round needed
        rounds = max(max(read) for _, read in out) // (4 * processes) + 1
        for p, (_, read) in enumerate(out):
            assert read == {i for c in range(p, rounds * processes, processes) for i in range(4 * c, 4 * c + 4)}
    fewer = shares(texts, processes, 8, 500, chunk=4, allow_fewer=True)
    assert (
        sum(len(s.rows) for s, _ in fewer)
        == fewer[0][0].total
        == len(tokenize_texts(texts, tiny_tokenizer(), 8, 500, allow_fewer=True))
    )
