"""LoRA adapters in PEFT's format, so `peft.PeftModel.from_pretrained(base, dir)` loads what we trained.

PEFT keeps lora_A (r, in) and lora_B (out, r) per layer and module, torch-style (out, in), and adds
(alpha / r) * B @ A to each target's weight, which is our W + scale * A @ B transposed: A and B of
every layer are written transposed under PEFT's names for the HF modules our table maps them to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adl_jax import io
from adl_jax.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, peft_module
from adl_jax.models.config import ModelConfig
from adl_jax.models.params import hf_tensor_names
from finetune.lora import Adapters, LoraConfig


def peft_tensors(adapters: Adapters, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """PEFT state dict: `base_model.model.<module>.lora_A.weight` (r, in), `...lora_B.weight` (out, r)."""
    names = hf_tensor_names(cfg)
    out = {}
    for target, (a, b) in adapters.items():
        for i, name in enumerate(names[target]):
            module = peft_module(name)
            out[f"{module}.lora_A.weight"] = np.asarray(a[i], np.float32).T
            out[f"{module}.lora_B.weight"] = np.asarray(b[i], np.float32).T
    return out


def save_peft_adapter(
    adapters: Adapters, lcfg: LoraConfig, cfg: ModelConfig, path: str | Path, base_model: str
) -> None:
    """Write `adapter_model.safetensors` and `adapter_config.json` (for a causal LM) into `path`."""
    names = hf_tensor_names(cfg)
    modules = sorted({names[t][0].removesuffix(".weight").rsplit(".", 1)[-1] for t in adapters})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lcfg.rank,
        "lora_alpha": lcfg.alpha,
        "lora_dropout": lcfg.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    path = Path(path)
    io.write_arrays(path / ADAPTER_WEIGHTS, peft_tensors(adapters, cfg), metadata={"format": "pt"})
    io.write_json(path / ADAPTER_CONFIG, config)
