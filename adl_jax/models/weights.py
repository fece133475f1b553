"""HF safetensors checkpoints <-> our param pytree.

The HF name, shape and orientation of every tensor come from `params.PARAMS`. Loading checks every
name and shape against the config before reading a byte, then reads shard by shard through
`params.read_params`, so no process ever holds more than its devices' shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from adl_jax.models.config import ModelConfig, is_multimodal
from adl_jax.models.params import PARAMS, check_tensors, hf_tensor_names, read_params
from adl_jax.models.transformer import Params
from adl_jax.sharding import Rules

# HF buffers some checkpoints carry that hold nothing we need.
_IGNORED_TENSORS = ("rotary_emb.inv_freq",)
# A multimodal checkpoint (Gemma 3 4B+) keeps its text decoder under another prefix, depending on the transformers
# version that saved it (files and PEFT module names differ): read as our HF names. Its vision tower and projector
# are not loaded, and skipped by name.
TEXT_TOWER_PREFIXES = {
    "language_model.model.": "model.",
    "model.language_model.": "model.",
    "language_model.lm_head.": "lm_head.",
}
VISION_TOWER_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def text_tower_name(name: str) -> str | None:
    """A multimodal checkpoint's tensor name as the text-only name we read, None for the vision side."""
    if name.startswith(VISION_TOWER_PREFIXES):
        return None
    for prefix, ours in TEXT_TOWER_PREFIXES.items():
        if name.startswith(prefix):
            return ours + name.removeprefix(prefix)
    return name


class SafetensorsDir:
    """The tensors of an HF model directory: `model.safetensors` or a sharded index. `text_tower`: the directory
    is a multimodal checkpoint whose text decoder is read (under text-only names) and vision side skipped."""

    def __init__(self, path: str | Path, text_tower: bool = False):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif single.exists():
            weight_map = None
        else:
            raise FileNotFoundError(
                f"{self.path} has neither model.safetensors nor model.safetensors.index.json; "
                "save the model with save_pretrained(..., safe_serialization=True)"
            )
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self._handles, self.location, self._stored = {}, {}, {}
        for fname in files:
            fpath = self.path / fname
            if not fpath.exists():
                raise FileNotFoundError(f"{fpath} is listed in the index but missing; re-download the checkpoint")
            try:
                handle = safe_open(str(fpath), framework="flax")
                keys = list(handle.keys())
            except Exception as e:  # the library reports truncation as a generic error
                raise ValueError(f"{fpath} is not a readable safetensors file ({e}); it may be truncated") from e
            self._handles[fname] = handle
            for key in keys:
                name = text_tower_name(key) if text_tower else key
                if name is not None:
                    self.location[name], self._stored[name] = fname, key

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.location[name]].get_slice(self._stored[name]).get_shape())

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        with jax.default_device(jax.local_devices(backend="cpu")[0]):  # this process's own CPU
            return np.asarray(self._handles[self.location[name]].get_slice(self._stored[name])[index])


def load_hf_dir(
    path, dtype=jnp.float32, mesh=None, rules: Rules = Rules(), ignore_keys=()
) -> tuple[ModelConfig, Params]:
    """Load a local HF model directory (config.json + safetensors) onto `mesh` (default: one device)."""
    cfg = ModelConfig.from_json(path, ignore_keys=tuple(ignore_keys))
    tensors = SafetensorsDir(path, text_tower=is_multimodal(json.loads((Path(path) / "config.json").read_text())))
    names = hf_tensor_names(cfg)
    found = {n: tensors.shape(n) for n in tensors.location}
    tied_head = PARAMS["lm_head"].hf_names(cfg)  # a tied model's checkpoint may still carry its LM head
    unused_ok = lambda n: n in tied_head or n.endswith(_IGNORED_TENSORS)
    check_tensors(cfg, names, found, f"checkpoint {tensors.path}", "config", unused_ok)
    read = lambda p, name, index: tensors.read(name, index)
    return cfg, read_params(cfg, names, read, dtype, mesh, rules)


def save_hf_dir(params: Params, cfg: ModelConfig, path: str | Path) -> None:
    """Write params as an HF directory (config.json + model.safetensors) that transformers loads.

    Written into a temporary sibling directory and renamed into place, so a crash never leaves a
    half-written model behind.
    """
    import shutil
    import tempfile

    from safetensors.flax import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for ours, names in hf_tensor_names(cfg).items():
        p = PARAMS[ours]
        full = params["layers"][ours] if p.per_layer else params[ours]
        for i, name in enumerate(names):
            arr = full[i] if p.per_layer else full
            tensors[name] = jnp.asarray(arr.T if p.transposed else arr)
    config = dict(cfg.to_hf(), dtype=str(jnp.dtype(params["embed"].dtype)))
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
