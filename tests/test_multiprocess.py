"""Two JAX processes on loopback (gloo collectives, 4 CPU devices each) equal one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from adl_jax.corpus import tokenize_texts
from adl_jax.diff import DiffSettings, compute_delta
from conftest import random_texts, tiny_tokenizer
from test_diff import tiny_pair

WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_diff import tiny_pair_from_disk  # imports conftest, which asks for 8 devices: override after
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2, process_id={pid})
import numpy as np
from types import SimpleNamespace
from adl_jax.diff import DiffSettings, compute_delta
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import make_mesh
mesh = make_mesh("data=4,model=2")
base, ft = (SimpleNamespace(**{{**vars(m), "params": load_hf_dir(m.spec, mesh=mesh)[1]}})
            for m in tiny_pair_from_disk({root!r}))
tokens = np.load({root!r} + "/tokens_in.npy")
compute_delta(base, ft, tokens, DiffSettings(layer=1, n=8, batch_size=16), {out!r}, progress=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, rng):
    (base, ft), _ = tiny_pair(tmp_path)
    tokens = tokenize_texts(random_texts(rng, 200), tiny_tokenizer(), n=8, count=100)
    np.save(tmp_path / "tokens_in.npy", tokens)
    single = compute_delta(base, ft, tokens, DiffSettings(layer=1, n=8, batch_size=16), tmp_path / "one",
                           progress=False)  # fmt: skip

    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    logs = [open(tmp_path / f"log{pid}", "w+") for pid in (0, 1)]  # files, not pipes: a full pipe would block
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER.format(port=port, pid=pid, tests=str(Path(__file__).parent),
                                                             root=str(tmp_path), out=str(tmp_path / f"p{pid}"))],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
        for pid, log in zip((0, 1), logs)
    ]  # fmt: skip
    for p, log in zip(procs, logs):
        p.wait(timeout=300)
        log.seek(0)
        assert p.returncode == 0, log.read()[-3000:]
    from adl_jax.diff import DiffResult

    two = DiffResult.load(tmp_path / "p0")
    assert not (tmp_path / "p1" / "delta.safetensors").exists()  # only process 0 writes
    np.testing.assert_allclose(two.delta, single.delta, atol=1e-5)  # model-axis sums reorder float adds
    np.testing.assert_allclose(two.ft_norm, single.ft_norm, rtol=1e-5)
