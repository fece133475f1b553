"""Run-directory files: atomic writes (a crash never leaves a half-written result), reads that name the
file when it is unreadable, content fingerprints of inputs, and the lock that keeps one process per run."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from adl_jax.errors import InputError, RunDirError


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
    """A JSON file's contents; an unreadable or malformed file is an InputError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); fix or delete the file") from e
    except IsADirectoryError as e:
        raise InputError(f"{path} is a directory, not a JSON file") from e


def jsonl_rows(lines: list[str], path: str | Path):
    """(line number, value) of every non-blank line of a JSONL file; a malformed line is an InputError
    naming the file and the line."""
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i} is not valid JSON ({e})") from e


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    _atomic(Path(path), lambda tmp: save_file(arrays, tmp, metadata=metadata))


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """A safetensors file's arrays; a truncated or corrupt file is an InputError naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise InputError(f"{path} is corrupt or truncated ({e})") from e


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


def digest(obj) -> str | None:
    """sha256 of an object's JSON (None for None or empty): the content of in-memory inputs, for identities."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest() if obj else None


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The keys (dotted for nested dicts) whose values differ between `a` and `b`."""
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return out


def claim(path: str | Path, identity: dict, what: str) -> None:
    """Bind a run directory to `identity` through the JSON file `path`: written on the first run; a later run
    with another identity is refused naming what differs, so staged results are reused only by their run."""
    identity = plain(identity)
    path = Path(path)
    if not path.exists():
        write_json(path, identity)
        return
    changed = differences(read_json(path), identity)
    if changed:
        raise RunDirError(
            f"{path.parent} holds {what} with other settings ({', '.join(changed)}); use a new output directory "
            "or delete this one"
        )


def fingerprint(paths: list[Path], cache: Path) -> str:
    """sha256 over the contents (and names) of `paths`, each file's hash cached in the JSON file `cache`
    keyed by resolved path, size, mtime, ctime and inode, so an unchanged 60 GB checkpoint is hashed once."""
    try:
        known = read_json(cache) if cache.exists() else {}
    except InputError:  # a damaged cache only costs rehashing
        known = {}
    total, fresh = hashlib.sha256(), False
    for path in sorted(Path(p).resolve() for p in paths):
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]  # ctime: no tool sets it back
        entry = known.get(str(path))
        if entry is None or entry["stamp"] != stamp:
            entry, fresh = {"stamp": stamp, "sha256": _file_sha256(path)}, True
            known[str(path)] = entry
        total.update(f"{path.name}\0{entry['sha256']}\0".encode())
    if fresh:  # entries of files that are gone are dropped, so the cache does not grow without bound
        write_json(cache, {k: v for k, v in known.items() if os.path.exists(k)})
    return total.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


LOCK = ".adl.lock"
_held: dict[Path, int] = {}  # run directories this process holds -> nesting depth


@contextlib.contextmanager
def run_lock(directory: str | Path):
    """Hold `directory` (created if needed) for this process: a second process is refused with the holder's
    pid. The lock is an flock on `.adl.lock`, so a killed holder's lock is free again; nested holds by one
    process are one hold. In a multi-process run only process 0 (the one that writes results) holds it."""
    import jax

    directory = Path(directory).resolve()
    if jax.process_index() != 0 or directory in _held:
        _held[directory] = _held.get(directory, 0) + 1
        try:
            yield
        finally:
            _held[directory] -= 1
            if not _held[directory]:
                del _held[directory]
        return
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"--out {directory} is a file, not a run directory; give a directory path")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{directory} is in use by another adl process (pid {holder}); wait for it to finish or "
                "give another --out"
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break  # else the holder removed the file between our open and flock: lock the new one
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[directory] = 1
    try:
        yield
    finally:
        del _held[directory]
        path.unlink(missing_ok=True)
        os.close(fd)
