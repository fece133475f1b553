"""HF safetensors checkpoints <-> our param pytree.

One table maps each of our parameter names to the HF tensor name (per layer where stacked) and says
whether the matrix is transposed (torch's Linear stores (out, in); we store (in, out)). Loading checks
every name and shape against the config before reading a byte, then reads shard by shard through
`sharding.materialize`, so no process ever holds more than its devices' shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from adl_jax.models.config import ModelConfig, is_multimodal
from adl_jax.models.transformer import Params, param_shapes
from adl_jax.sharding import Rules, materialize

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


def hf_layer_names(cfg: ModelConfig) -> dict[str, str]:
    """Our per-layer name -> HF name under `model.layers.{i}.`."""
    names = {
        "attn_norm": "input_layernorm.weight",
        "q": "self_attn.q_proj.weight",
        "k": "self_attn.k_proj.weight",
        "v": "self_attn.v_proj.weight",
        "o": "self_attn.o_proj.weight",
        "q_bias": "self_attn.q_proj.bias",
        "k_bias": "self_attn.k_proj.bias",
        "v_bias": "self_attn.v_proj.bias",
        "o_bias": "self_attn.o_proj.bias",
        "q_norm": "self_attn.q_norm.weight",
        "k_norm": "self_attn.k_norm.weight",
        "gate": "mlp.gate_proj.weight",
        "up": "mlp.up_proj.weight",
        "down": "mlp.down_proj.weight",
    }
    if cfg.sandwich_norms:  # Gemma: post_attention_layernorm is the norm *after* attention
        names.update(
            post_attn_norm="post_attention_layernorm.weight",
            mlp_norm="pre_feedforward_layernorm.weight",
            post_mlp_norm="post_feedforward_layernorm.weight",
        )
    else:
        names["mlp_norm"] = "post_attention_layernorm.weight"
    return {k: v for k, v in names.items() if k in param_shapes(cfg)["layers"]}


_TOP_NAMES = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}
_TRANSPOSED = {"q", "k", "v", "o", "gate", "up", "down", "lm_head"}


def hf_tensor_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """Our name -> the HF tensor names it is made of (one per layer for stacked tensors)."""
    shapes = param_shapes(cfg)
    out = {k: [_TOP_NAMES[k]] for k in shapes if k != "layers"}
    for ours, hf in hf_layer_names(cfg).items():
        out[ours] = [f"model.layers.{i}.{hf}" for i in range(cfg.num_layers)]
    return out


def _expected_hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    per = shape[1:] if name not in _TOP_NAMES else shape
    return tuple(reversed(per)) if name in _TRANSPOSED else tuple(per)


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


def check_tensors(cfg: ModelConfig, tensors: SafetensorsDir) -> None:
    """Every expected tensor present with the right shape, nothing unexplained left over."""
    shapes = param_shapes(cfg)
    expected = hf_tensor_names(cfg)
    problems = []
    for ours, names in expected.items():
        want = _expected_hf_shape(ours, shapes["layers"][ours] if ours in shapes["layers"] else shapes[ours])
        for n in names:
            if n not in tensors.location:
                problems.append(f"missing tensor {n}")
            elif tensors.shape(n) != want:
                problems.append(f"tensor {n} has shape {tensors.shape(n)}, config implies {want}")
    known = {n for names in expected.values() for n in names} | {"lm_head.weight"}
    extra = [n for n in tensors.location if n not in known and not n.endswith(_IGNORED_TENSORS)]
    if extra:
        problems.append(f"{len(extra)} tensor(s) the config does not explain, e.g. {extra[:3]}")
    if problems:
        raise ValueError(
            f"checkpoint {tensors.path} does not match its config.json:\n  "
            + "\n  ".join(problems[:10])
            + ("\n  ..." if len(problems) > 10 else "")
        )


def load_hf_dir(
    path, dtype=jnp.float32, mesh=None, rules: Rules = Rules(), ignore_keys=()
) -> tuple[ModelConfig, Params]:
    """Load a local HF model directory (config.json + safetensors) onto `mesh` (default: one device)."""
    cfg = ModelConfig.from_json(path, ignore_keys=tuple(ignore_keys))
    tensors = SafetensorsDir(path, text_tower=is_multimodal(json.loads((Path(path) / "config.json").read_text())))
    check_tensors(cfg, tensors)
    names = hf_tensor_names(cfg)

    def read(ours: str, index: tuple[slice, ...]) -> np.ndarray:
        transposed = ours in _TRANSPOSED
        if ours in _TOP_NAMES:
            return _orient(tensors.read(names[ours][0], index[::-1] if transposed else index), transposed)
        layer_slice, rest = index[0], index[1:]
        per_layer = [
            _orient(tensors.read(names[ours][i], rest[::-1] if transposed else rest), transposed)
            for i in range(*layer_slice.indices(cfg.num_layers))
        ]
        return np.stack(per_layer)

    return cfg, materialize(cfg, read, dtype, mesh, rules)


def _orient(arr: np.ndarray, transposed: bool) -> np.ndarray:
    return arr.T if transposed else arr


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
        full = params["layers"][ours] if ours in params["layers"] else params[ours]
        for i, name in enumerate(names):
            arr = full if ours in _TOP_NAMES else full[i]
            tensors[name] = jnp.asarray(_orient(arr, ours in _TRANSPOSED))
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
