"""Two JAX processes on loopback (gloo collectives, 4 CPU devices each) equal one process; each reads only its
share of the corpus."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np

from adl_jax.method.corpus import tokenize_texts
from adl_jax.method.diff import DiffSettings, compute_delta
from adl_jax.models.weights import load_hf_dir
from conftest import random_texts, tiny_hf_model, tiny_tokenizer
from conftest import tiny_pair

WORKER = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_pair_from_disk, tiny_tokenizer  # conftest asks for 8 devices: override after
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2, process_id={pid})
import numpy as np
import dataclasses
from adl_jax.method.diff import DiffSettings, compute_delta
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import make_mesh
mesh = make_mesh("data=4,model=2")
base, ft = (dataclasses.replace(m, params=load_hf_dir(m.spec, mesh=mesh)[1])
            for m in tiny_pair_from_disk({root!r}))
import json
from adl_jax.method.corpus import corpus_texts, gather_share, process_share
texts, read = corpus_texts({root!r} + "/texts.jsonl", seed=None), set()
class Recorded:  # the corpus, noting which texts this process reads
    def __len__(self):
        return len(texts)
    def __getitem__(self, index):
        read.update(range(len(texts))[index])
        return texts[index]
share = process_share(Recorded(), tiny_tokenizer(), 8, 100, chunk=16)
open({root!r} + "/share{pid}.json", "w").write(json.dumps({{"read": sorted(read), "rows": share.rows.tolist()}}))
tokens = gather_share(share)
np.save({root!r} + "/tokens{pid}.npy", tokens)
compute_delta(base, ft, tokens, DiffSettings(layer=1, n=8, batch_size=16), {root!r} + "/p{pid}", progress=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(tmp_path, script: str, **fields) -> None:
    """Run `script` (formatted with port, pid, tests and `fields`) as processes 0 and 1 of one run."""
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": "2",
    }
    logs = [open(tmp_path / f"log{pid}", "w+") for pid in (0, 1)]  # files, not pipes: a full pipe would block
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script.format(port=port, pid=pid, tests=str(Path(__file__).parent), **fields)],
            env={**env, "JAX_PROCESS_ID": str(pid)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for pid, log in zip((0, 1), logs)
    ]
    for p, log in zip(procs, logs):
        p.wait(timeout=300)
        log.seek(0)
        assert p.returncode == 0, log.read()[-3000:]


def test_two_processes_equal_one(tmp_path, rng):
    (base, ft), _ = tiny_pair(tmp_path)
    texts = random_texts(rng, 200)
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokens = tokenize_texts(texts, tiny_tokenizer(), n=8, count=100)
    single = compute_delta(
        base, ft, tokens, DiffSettings(layer=1, n=8, batch_size=16), tmp_path / "one", progress=False
    )

    _run_two(tmp_path, WORKER, root=str(tmp_path))
    from adl_jax.method.diff import DiffResult

    # each process read only its chunks of 16 texts (0, 2, ... and 1, 3, ...), and together they have the matrix
    shares = [json.loads((tmp_path / f"share{pid}.json").read_text()) for pid in (0, 1)]
    assert sorted(shares[0]["rows"] + shares[1]["rows"]) == list(range(100))
    for pid, share in enumerate(shares):
        assert {i // 16 % 2 for i in share["read"]} == {pid} and share["read"][0] == 16 * pid
        np.testing.assert_array_equal(np.load(tmp_path / f"tokens{pid}.npy"), tokens)
    two = DiffResult.load(tmp_path / "p0")
    assert not (tmp_path / "p1" / "delta.safetensors").exists()  # only process 0 writes
    np.testing.assert_allclose(two.delta, single.delta, atol=1e-5)  # model-axis sums reorder float adds
    np.testing.assert_allclose(two.ft_norm, single.ft_norm, rtol=1e-5)


# The finetuning entry point as each host of a pod runs it: `init_distributed` joins from the JAX_*
# environment variables. Each process records which rows of the data stream it draws.
FINETUNE_WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
import conftest  # asks for 8 devices: override after
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import finetune.train as train
from adl_jax.cli import main
drawn = []
draw = train.batch_at
train.batch_at = lambda rows, cursor, size, seed: drawn.append((cursor, size)) or draw(rows, cursor, size, seed)
assert main(["finetune", *{argv!r}]) == 0 and jax.process_count() == 2
open({out!r} + "/drawn{pid}.json", "w").write(json.dumps(drawn))
"""


def test_two_process_finetune_equals_one(tmp_path, rng):
    from adl_jax.cli import main

    tiny_hf_model("llama", tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(rng, 40)))
    argv = [
        "--model",
        str(tmp_path / "base"),
        "--data",
        str(tmp_path / "d.jsonl"),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--grad-accum",
        "2",
        "--seq-len",
        "16",
        "--lr",
        "1e-2",
        "--warmup",
        "1",
        "--lora-rank",
        "4",
        "--lora-dropout",
        "0.1",
        "--mesh",
        "data=2,fsdp=2,model=2",
        "--no-progress",
    ]
    assert main(["finetune", *argv, "--out", str(tmp_path / "one")]) == 0
    two = tmp_path / "two"
    _run_two(tmp_path, FINETUNE_WORKER, argv=[*argv, "--out", str(two)], out=str(two))

    drawn = [json.loads((two / f"drawn{pid}.json").read_text()) for pid in (0, 1)]
    assert sorted(row for rows in drawn for row in rows) == [[0, 8], [8, 8], [16, 8], [24, 8]]  # 8 of 16 each
    assert {tuple(r) for r in drawn[0]}.isdisjoint(tuple(r) for r in drawn[1])
    one, two_params = (load_hf_dir(d / "final")[1] for d in (tmp_path / "one", two))
    # Same dropout masks and rows on both sides; what differs is the order of float adds across devices.
    # Adam scales each entry's step by 1/sqrt(v), so where a gradient entry is near zero (a LoRA A row
    # while B is still tiny), that rounding noise becomes a visible part of the step: 1.7e-6 seen here.
    chex.assert_trees_all_close(two_params, one, atol=5e-6, rtol=1e-7)
    losses = [
        [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (tmp_path / "one", two)
    ]
    np.testing.assert_allclose(*losses, rtol=1e-6)
