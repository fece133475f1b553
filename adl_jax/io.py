"""Atomic result files: a crash mid-write never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    _atomic(Path(path), lambda tmp: save_file(arrays, tmp, metadata=metadata))


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    return load_file(str(path))


def write_npy(path: str | Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(Path(path), write)


def plain(obj):
    """`obj` as a JSON file holds it (tuples -> lists, keys -> strings), to compare with what comes back
    from disk."""
    return json.loads(json.dumps(obj))


def cache_root() -> Path:
    """Where every cached file lives (models, samples, tokenizers, LLM-grader replies): `$ADL_CACHE`,
    default `~/.cache/adl-jax`."""
    return Path(os.environ.get("ADL_CACHE") or Path.home() / ".cache" / "adl-jax")
