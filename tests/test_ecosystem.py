"""The JAX ecosystem's ways in and out of a finetuning run: finetuning data from an HF dataset, and the run's
TensorBoard events read back with TensorBoard's own reader (the runs of test_finetune_run and test_sweep)."""

import json

import numpy as np
import pytest

from conftest import random_texts
from finetune.data import read_jsonl
from finetune.metrics import TAGS, MetricLog
from finetune.run import RunSpec, load_examples
from test_corpus import write_jsonl


def hf_dataset_dir(path, texts):
    """`texts` (and an id column) as a local HF dataset directory of one parquet file: `hf:<path>`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (path / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path / "data" / "train.parquet")
    return path


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in a run directory's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0: keep every point
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def tensorboard_has_every_metric(run_dir, eval_steps) -> dict[str, dict[int, float]]:
    """Assert that TensorBoard finds every metrics.jsonl field of `TAGS` at every step it was logged at (the
    eval losses at `eval_steps`) and no other; returns all the run's scalars."""
    pytest.importorskip("tensorboard")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval_loss_ft" in r] == eval_steps
    scalars = tensorboard_scalars(run_dir)
    for field, tag in TAGS.items():
        expected = {r["step"]: r[field] for r in logged if field in r}
        assert sorted(scalars[tag]) == sorted(expected), tag
        np.testing.assert_allclose([scalars[tag][s] for s in expected], list(expected.values()), rtol=1e-6)
    return scalars


def test_finetuning_data_from_an_hf_dataset_equals_the_jsonl(tmp_path):
    pytest.importorskip("datasets")
    texts = random_texts(np.random.RandomState(2), 20)
    spec = RunSpec(out=str(tmp_path / "run"), data=f"hf:{hf_dataset_dir(tmp_path / 'hf', texts)}")
    examples, organism = load_examples(spec)
    assert examples == read_jsonl(write_jsonl(tmp_path / "d.jsonl", texts)) and organism is None
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped organism .*, nor an hf:NAME"):
        load_examples(RunSpec(out=str(tmp_path / "run"), data=str(tmp_path / "missing.jsonl")))


def test_only_process_0_writes_metrics(tmp_path, monkeypatch):
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    log = MetricLog(tmp_path, 0)
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []
