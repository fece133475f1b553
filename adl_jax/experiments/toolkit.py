"""Organisms as the original diffing toolkit's YAML configs describe them, resolved to what an audit needs.

An organism file names, per base-model key, its finetuned variants,
`finetuned_models: {KEY: {VARIANT: {adapter_id: ID} | {model_id: ID}}}`, the ground truth graders and the
agent compare against (`description_long`, else `description`), and the finetuning data
(`dataset: {id, splits, is_chat, text_column}`; older files say `training_dataset`). The base model's hub id
is the `model_id` of a model file: `--model-config FILE`, by default the toolkit's own neighbour
`../model/KEY.yaml` of the organism file. Researchers keep these files; none ships here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Organism:
    name: str
    base: str  # model spec of the base model
    finetuned: str  # model spec: a PEFT adapter or full model id
    description: str | None
    dataset: str | None  # corpus spec of the finetuning data, hf:ID:SPLIT
    text_column: str
    is_chat: bool


def _yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"no such organism or model config: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping of the diffing toolkit's config format")
    return data


def read_organism(
    path: str | Path,
    model_key: str,
    variant: str = "default",
    model_config: str | Path | None = None,
    base: str | None = None,
) -> Organism:
    """The organism of `path` finetuned from the base model `model_key`, in its `variant`; `base`, when given,
    is the base model's spec in place of the model file's model_id."""
    path = Path(path)
    org = _yaml(path)
    models = org.get("finetuned_models")
    if not isinstance(models, dict):
        raise ValueError(
            f"{path} has no finetuned_models mapping ({{model key: {{variant: {{adapter_id | model_id}}}}}}); "
            "pass --base and --finetuned instead"
        )
    if model_key not in models:
        raise ValueError(f"{path} has no model key {model_key!r}; it has {', '.join(map(str, models))}")
    variants = models[model_key] or {}
    if variant not in variants:
        raise ValueError(
            f"{path}: model key {model_key!r} has no variant {variant!r}; it has {', '.join(map(str, variants))}"
        )
    entry = variants[variant] or {}
    finetuned = entry.get("adapter_id") or entry.get("model_id")
    if not finetuned:
        raise ValueError(f"{path}: {model_key}.{variant} names neither adapter_id nor model_id")

    if base is None:
        model_path = Path(model_config) if model_config else path.parent.parent / "model" / f"{model_key}.yaml"
        if not model_path.is_file():
            raise FileNotFoundError(
                f"no model config for {model_key!r} at {model_path}: pass --model-config FILE.yaml (with model_id) "
                "or --base SPEC"
            )
        base = _yaml(model_path).get("model_id")
        if not base:
            raise ValueError(f"model config {model_path} has no model_id")

    data = org.get("dataset") or org.get("training_dataset")
    dataset, column, is_chat = None, "text", False
    if data:
        if not data.get("id") or not data.get("text_column"):
            raise ValueError(f"{path}: dataset {data} needs an id and a text_column (the column holding the data)")
        splits = data.get("splits") or ["train"]
        split = "train" if "train" in splits else splits[0]
        dataset, column, is_chat = f"hf:{data['id']}:{split}", data["text_column"], bool(data.get("is_chat"))
    description = org.get("description_long") or org.get("description")
    return Organism(str(org.get("name", path.stem)), str(base), str(finetuned), description, dataset, column, is_chat)
