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
    kind: str | None = None  # the agent's rubric: false_fact for the toolkit's SDF organisms, else not known


RUBRICS = {"sdf": "false_fact"}  # organism types whose rubric is known: synthetic documents of false facts
MIX_PREFIX = "mix1-"  # the toolkit's mixing variants: mix1-0p5 = finetuning:pretraining 1:0.5


def is_organism_file(spec: str | None) -> bool:
    """An --organism value that names a toolkit YAML file rather than a shipped organism."""
    return bool(spec) and str(spec).endswith((".yaml", ".yml"))


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
    variants = _variants(org, path, model_key)
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
    kind = RUBRICS.get(str(org.get("type", "")).lower())
    name = str(org.get("name", path.stem))
    return Organism(name, str(base), str(finetuned), description, dataset, column, is_chat, kind)


def _variants(org: dict, path: Path, model_key: str) -> dict:
    """The variants of the organism `org` (read from `path`) finetuned from the base model `model_key`."""
    models = org.get("finetuned_models")
    if not isinstance(models, dict):
        raise ValueError(
            f"{path} has no finetuned_models mapping ({{model key: {{variant: {{adapter_id | model_id}}}}}}); "
            "pass --base and --finetuned instead"
        )
    if model_key not in models:
        raise ValueError(f"{path} has no model key {model_key!r}; it has {', '.join(map(str, models))}")
    return models[model_key] or {}


def mix_variants(path: str | Path, model_key: str) -> dict[float, str]:
    """Ratio r -> variant of the organism's mixing sweep for `model_key`: its `mix1-*` variants (mix1-0p5 is
    1:0.5) and, as 1:0, its `default` variant (trained without pretraining text)."""
    models = _variants(_yaml(Path(path)), Path(path), model_key)
    ratios = {0.0: "default"} if "default" in models else {}
    for variant in models:
        if str(variant).startswith(MIX_PREFIX):
            number = str(variant)[len(MIX_PREFIX) :].replace("p", ".")
            try:
                ratios[float(number)] = str(variant)
            except ValueError:
                raise ValueError(
                    f"{path}: variant {variant!r} is not a mixing ratio (mix1-<r> with p for the point, e.g. mix1-0p5)"
                ) from None
    if not any(v.startswith(MIX_PREFIX) for v in ratios.values()):
        raise ValueError(
            f"{path}: model key {model_key!r} has no {MIX_PREFIX}* variants (a mixing sweep); it has "
            f"{', '.join(map(str, models)) or 'none'}"
        )
    return dict(sorted(ratios.items()))
