"""PEFT LoRA adapters as finetuned models: the base's own arrays plus low-rank updates, never merged.

A directory with `adapter_config.json` + `adapter_model.safetensors` (what `peft`'s `save_pretrained` writes)
is a finetuned model over a base. Each adapted matrix becomes a `LowRankUpdate` (W, A, B) that the decoder
applies as x W + (x A) B, with W the base model's array itself: an audit of an adapter holds the base weights
once, plus the adapter. PEFT's scale (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA; per module through
`rank_pattern` / `alpha_pattern`) is folded into B, and layers of a smaller rank are zero-padded to the largest,
so one stacked A (L, in, r) and B (L, r, out) per target carry every layer exactly (a layer without an adapter
gets zeros). What would change the computation beyond that (DoRA, trained embeddings or head, adapter biases,
other PEFT methods) is refused, and every tensor in the file is either used or refused: none is ignored, except
adapters of a multimodal model's vision tower, which a text-only forward never runs (skipped by name).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from safetensors import safe_open

from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import LowRankUpdate, Params
from adl_jax.models.weights import hf_tensor_names, text_tower_name

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = {".lora_A.weight": 0, ".lora_B.weight": 1}

# adapter_config.json keys that do not change what the saved tensors compute at inference (training, init and
# bookkeeping settings; which modules are adapted is read from the tensors themselves).
_INERT = frozenset(
    """
    task_type peft_type auto_mapping peft_version base_model_name_or_path revision inference_mode target_modules
    exclude_modules lora_dropout fan_in_fan_out layers_to_transform layers_pattern megatron_config megatron_core
    eva_config runtime_config qalora_group_size ensure_weight_tying init_lora_weights r lora_alpha rank_pattern
    alpha_pattern use_rslora bias use_dora modules_to_save
    """.split()
)
# init_lora_weights values under which PEFT rewrites the base weights too: the adapter then needs that altered base.
_BASE_ALTERING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def peft_module(hf_weight: str) -> str:
    """PEFT's state-dict prefix of the LoRA of the HF weight `hf_weight` (e.g. `model.layers.0.mlp.up_proj.weight`)."""
    return _PEFT_PREFIX + hf_weight.removesuffix(".weight")


def is_adapter(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).exists()


def read_adapter_config(path: str | Path) -> dict:
    """The adapter's config, refused (naming the setting) where it asks for what adl-jax does not compute."""
    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type={config.get('peft_type')!r}: only LoRA adapters are supported")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(f"task_type={config['task_type']!r}: only causal-LM adapters are supported")
    if config.get("use_dora"):
        problems.append("use_dora=true: DoRA rescales each weight by a learned magnitude; merge it into a full model")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save={config['modules_to_save']}: the adapter retrains whole modules (embeddings or LM "
            "head); merge it into a full model with peft's merge_and_unload and pass that directory"
        )
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r}: adapters that train biases are not supported (bias='none' is)")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_ALTERING_INITS):
        problems.append(
            f"init_lora_weights={config['init_lora_weights']!r} alters the base weights too; convert the adapter "
            "with peft's path_initial_model_for_weight_conversion or merge it into a full model"
        )
    extra = sorted(k for k, v in config.items() if k not in _INERT and v not in (None, False, {}, [], ""))
    if extra:
        problems.append(f"setting(s) {extra} are not supported by adl-jax's LoRA (merge the adapter into a full model)")
    if problems:
        raise ValueError(f"PEFT adapter {path} cannot be applied:\n  " + "\n  ".join(problems))
    if not (path / ADAPTER_WEIGHTS).exists():
        raise FileNotFoundError(
            f"PEFT adapter {path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}: an adapter without weights "
            "(save it with save_pretrained(..., safe_serialization=True))"
        )
    return config


def model_name(spec: str) -> str:
    """A model's name as base checks compare it: the last path component, lower case, so that a local copy
    (`/models/Llama-3.1-8B`) matches its hub id; without Together AI's `-Reference` suffix (its fine-tuning
    service's name for the unmodified weights, e.g. `meta-llama/Llama-3.3-70B-Instruct-Reference`) and the
    `Meta-` prefix of Meta's renamed repositories (`Meta-Llama-3.1-8B-Instruct` is `Llama-3.1-8B-Instruct`)."""
    return Path(str(spec).rstrip("/")).name.lower().removesuffix("-reference").removeprefix("meta-")


def check_base(adapter: str | Path, named: str | None, base: str) -> None:
    """Refuse a base other than the one the adapter was trained on (names compared by `model_name`)."""
    if named and model_name(named) != model_name(base):
        raise ValueError(
            f"PEFT adapter {adapter} was trained on {named!r} (its base_model_name_or_path), but the base given is "
            f"{base!r}. Pass the adapter's base (--base {named}), or, if {base!r} holds the very same weights, set "
            f"base_model_name_or_path in {Path(adapter) / ADAPTER_CONFIG} to it"
        )


def pattern_value(pattern: dict, module: str, default):
    """PEFT's per-module override: the first key of `pattern` that matches the end of `module` at a dot boundary."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def apply_adapter(path: str | Path, params: Params, cfg: ModelConfig) -> Params:
    """`params` (the base's, shared, not copied) with every matrix the adapter at `path` adapts as a
    `LowRankUpdate`, its A and B sharded like the base weight's input and output axes."""
    path = Path(path)
    config = read_adapter_config(path)
    modules = {}  # PEFT module name of our HF weight -> (target, layer)
    for target, names in hf_tensor_names(cfg).items():
        if target in TARGETS:
            modules.update({name.removesuffix(".weight"): (target, i) for i, name in enumerate(names)})

    pieces, problems = {}, []  # (target, layer) -> [A (r, in), B (out, r), module]
    with safe_open(str(path / ADAPTER_WEIGHTS), framework="numpy") as f:
        for key in f.keys():
            suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
            if suffix is None or not key.startswith(_PEFT_PREFIX):
                problems.append(key)
                continue
            module = key.removeprefix(_PEFT_PREFIX).removesuffix(suffix)
            ours = text_tower_name(module + ".weight")
            if ours is None:  # the vision tower's adapters: never run by a text-only forward
                continue
            place = modules.get(ours.removesuffix(".weight"))
            if place is None:
                problems.append(key)
                continue
            entry = pieces.setdefault(place, [None, None, module])
            entry[_LORA_SUFFIXES[suffix]] = f.get_tensor(key).astype(np.float32)
    if problems:
        raise ValueError(
            f"PEFT adapter {path}: {len(problems)} tensor(s) are no LoRA of an attention or MLP projection of this "
            f"{cfg.family} model, e.g. {problems[:3]}; adl-jax adapts q/k/v/o/gate/up/down projections only"
        )
    if not pieces:
        raise ValueError(f"PEFT adapter {path} holds no LoRA tensors")
    for a, b, module in pieces.values():
        if a is None or b is None:
            raise ValueError(f"PEFT adapter {path}: {module} has only one of lora_A and lora_B")

    layers = dict(params["layers"])
    for target in sorted({t for t, _ in pieces}):
        w = layers[target]
        n_layers, d_in, d_out = w.shape
        stacked = {i: pieces[(target, i)] for i in range(n_layers) if (target, i) in pieces}
        rank = max(a.shape[0] for a, _, _ in stacked.values())
        a_all = np.zeros((n_layers, d_in, rank), np.float32)
        b_all = np.zeros((n_layers, rank, d_out), np.float32)
        for i, (a, b, module) in stacked.items():
            r = pattern_value(config.get("rank_pattern") or {}, module, config["r"])
            alpha = pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
            if a.shape != (r, d_in) or b.shape != (d_out, r):
                raise ValueError(
                    f"PEFT adapter {path}: {module} has lora_A {a.shape} and lora_B {b.shape}; rank {r} (its config) "
                    f"over this base's ({d_out}, {d_in}) weight needs ({r}, {d_in}) and ({d_out}, {r}): a different "
                    "base model, or a config that does not describe these tensors"
                )
            scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            a_all[i, :, :r], b_all[i, :r, :] = a.T, b.T * scale
        layers[target] = LowRankUpdate(w, *_place_like(w, a_all, b_all), 1.0)
    return {**params, "layers": layers}


def adapter_specs(weight: PartitionSpec) -> tuple[PartitionSpec, PartitionSpec]:
    """A (L, in, r) is split like its weight's input axis, B (L, r, out) like its output axis."""
    layer, d_in, d_out = tuple(weight) + (None,) * (3 - len(weight))
    return PartitionSpec(layer, d_in, None), PartitionSpec(layer, None, d_out)


def _place_like(w: jax.Array, a: np.ndarray, b: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """A and B on the weight's mesh, each device given only its own shard."""
    sharding = w.sharding
    if not isinstance(sharding, NamedSharding):
        return jax.device_put(a, sharding), jax.device_put(b, sharding)
    return tuple(
        jax.make_array_from_callback(x.shape, NamedSharding(sharding.mesh, spec), lambda index, x=x: x[index])
        for x, spec in zip((a, b), adapter_specs(sharding.spec))
    )
