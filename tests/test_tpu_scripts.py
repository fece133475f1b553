"""tpu_scripts: shellcheck-clean, and in dry-run mode each prints exactly the gcloud commands it would run."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "tpu_scripts"
ENV = {
    "TPU_NAME": "t1",
    "TPU_ZONE": "z1",
    "TPU_TYPE": "v5litepod-16",
    "TPU_VERSION": "v2-alpha-tpuv5-lite",
    "TPU_PROJECT": "p1",
    "TPU_DIR": "adl",
}
AT = "--zone=z1 --project=p1"
SSH = f"gcloud compute tpus tpu-vm ssh t1 {AT} --worker=all"
SCP = "gcloud compute tpus tpu-vm scp"
CASES = {
    "create.sh": [
        f"gcloud compute tpus tpu-vm create t1 {AT} --accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite"
    ],
    "create.sh --queued --spot": [
        f"gcloud compute tpus queued-resources create t1 {AT} --node-id=t1 --accelerator-type=v5litepod-16 "
        "--runtime-version=v2-alpha-tpuv5-lite --spot",
        f"gcloud compute tpus queued-resources describe t1 {AT} '--format=value(state.state)'",
    ],
    "install.sh": [f"{SSH} \"--command=mkdir -p adl && python3 -m pip install -U 'adl-jax[tpu]'\""],
    "copy.sh configs/models data.jsonl": [
        f"{SSH} '--command=mkdir -p adl'",
        f"{SCP} --recurse configs/models data.jsonl t1:adl/ {AT} --worker=all",
    ],
    "launch.sh adl audit --base Qwen/Qwen3-32B --mesh fsdp=2,model=8 --out runs/a": [
        f"{SSH} '--command=cd adl && mkdir -p logs && ADL_MULTIHOST=1 adl audit --base Qwen/Qwen3-32B "
        "--mesh fsdp=2,model=8 --out runs/a 2>&1 | tee logs/worker-$(hostname).log'"
    ],
    "fetch.sh runs/a results": [f"{SCP} --recurse t1:adl/runs/a results {AT} --worker=0"],
    "teardown.sh": [f"gcloud compute tpus tpu-vm delete t1 {AT} --quiet"],
    "teardown.sh --queued": [f"gcloud compute tpus queued-resources delete t1 {AT} --force --quiet"],
}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    out = subprocess.run(
        ["shellcheck", "-x", "-P", "SCRIPTDIR", *sorted(SCRIPTS.glob("*.sh"))], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout


def dry_run(tmp_path, line: str, flag: bool = True) -> list[str]:
    """The lines a script prints dry, with a gcloud on PATH that fails: a dry run must never call it."""
    (tmp_path / "gcloud").write_text("#!/bin/sh\nexit 99\n")
    (tmp_path / "gcloud").chmod(0o755)
    script, *args = line.split()
    env = {**os.environ, **ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}", "DRY_RUN": "0" if flag else "1"}
    out = subprocess.run(
        [SCRIPTS / script, *args, *(["--dry-run"] if flag else [])],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("line", CASES)
def test_dry_run_prints_the_gcloud_commands(tmp_path, line):
    assert dry_run(tmp_path, line) == CASES[line]


def test_dry_run_from_the_environment_and_a_local_wheel(tmp_path):
    assert dry_run(tmp_path, "teardown.sh", flag=False) == CASES["teardown.sh"]
    wheel = tmp_path / "adl_jax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert dry_run(tmp_path, f"install.sh {wheel}") == [
        f"{SCP} {wheel} t1: {AT} --worker=all",
        f"{SSH} \"--command=mkdir -p adl && python3 -m pip install -U 'adl_jax-0.1.0-py3-none-any.whl[tpu]'\"",
    ]


def test_a_dry_run_line_is_the_command_that_runs(tmp_path):
    """Quoting: bash reading the printed line passes gcloud the very arguments the real run passes."""
    (tmp_path / "gcloud").write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\n')
    (tmp_path / "gcloud").chmod(0o755)
    args = [str(SCRIPTS / "launch.sh"), "adl", "audit", "--description", 'it\'s "x" $HOME `a` \\b', "--mesh", "fsdp=2"]
    env = {**os.environ, **ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    real = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    line = subprocess.run([*args, "--dry-run"], env=env, capture_output=True, text=True, check=True).stdout
    assert subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True).stdout == real
