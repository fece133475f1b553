"""What a run's numbers depend on, by content: an input named by a local path is identified by its resolved
path and a fingerprint of its files, so a model retrained at the same path is another run, and the same
model typed as a relative or an absolute path is the same run."""

from __future__ import annotations

from pathlib import Path

from adl_jax import io
from adl_jax.models.load import EMBEDDED, cache_root


def source(spec: str, name: str) -> dict:
    """{name: the resolved path (or the spec itself when it names no local file: the embedded model, a hub id,
    hf:/tfds: corpora, an in-memory model), f"{name}_sha256": the fingerprint of its files, or None}."""
    path = Path(str(spec)).expanduser()
    if str(spec) == EMBEDDED or not path.exists():
        return {name: str(spec), f"{name}_sha256": None}
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")) if path.is_dir() else [path]
    return {name: str(path.resolve()), f"{name}_sha256": io.fingerprint(files, cache_root() / "fingerprints.json")}
