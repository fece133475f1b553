"""`adl finetune`: one organism run from a config file and/or flags, deterministic given its seed.

Settings are flat (`adl_jax/configs/finetune/*.json` keys = flag names with `_`; flags override the file): the
model spec, the data (a JSONL file, an hf:/tfds: dataset or a shipped organism), an optional pretraining
source mixed in 1:r, and every `TrainConfig` / `LoraConfig` field (`lora_` prefixed). The run directory holds
`run.json` (the settings it is bound to), `checkpoints/`, `metrics.jsonl` (per step), TensorBoard event files
(per step, and the belief score), `metrics.json` (final losses; for false-fact organisms the belief score
before and after), `final/` (the merged model as an HF directory) and, for LoRA, `adapter/` (PEFT format).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from adl_jax import io
from adl_jax.errors import InputError, RunDirError, UsageError, require
from adl_jax.method.identity import source
from adl_jax.models.load import EMBEDDED
from adl_jax.method.samples import BASE_SAMPLES, pretraining_texts
from finetune.lora import LoraConfig, resolve_targets
from adl_jax.io import differences
from finetune.train import BOOKKEEPING, TrainConfig

HELP = {
    "config": "a JSON file of these settings (e.g. configs/finetune/orange_carrot_lora.json; a file it names is looked up beside it); flags override it",
    "out": "run directory: checkpoints, metrics, final/ (HF dir), adapter/ (PEFT, LoRA only)",
    "model": "model spec: gemma-3-270m, an HF dir, a .gguf file or a hub id",
    "data": "a JSONL of {'text'} or {'messages'} examples, hf:NAME[:split] or tfds:NAME[:split] with such rows, a shipped organism's name, or base-samples (the base model's own samples: a placebo)",
    "examples": "examples to generate when --data is an organism or base-samples",
    "pretrain": f"pretraining texts to mix in: a corpus spec (file, hf:NAME, tfds:NAME) or {BASE_SAMPLES}",
    "column": "text field of the pretraining corpus",
    "chat_template": "a Jinja chat template file, for chat data when the tokenizer has none",
    "dtype": "the base weights' dtype (float32 or bfloat16)",
    "mesh": "e.g. data=2,model=4 (default: all devices, the layout with the most data parallelism that fits)",
    "mix_ratio": "pretraining texts per finetuning example (1:r; the paper's grid: 0, 0.1..1.0, 1.5, 2)",
    "mode": "lora or full",
    "lora_targets": "comma-separated: q,k,v,o,gate,up,down",
    "seed": "seeds the organism data, the splits, the batches and the adapters' initialisation",
    "pack": "true: examples concatenated into full rows (attention kept within each); false: one padded example a row",
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    out: str
    data: str
    model: str = EMBEDDED
    examples: int = 400
    pretrain: str | None = None
    column: str = "text"
    chat_template: str | None = None
    dtype: str = "float32"
    mesh: str | None = None
    pack: bool = True
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        """Every check that needs no model and reads no data, so a bad setting stops before anything loads."""
        if self.dtype not in ("float32", "bfloat16"):
            raise UsageError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")
        require(self.examples >= 1, "examples", self.examples, "must be at least 1")
        if self.train.mix_ratio and not self.pretrain:
            raise UsageError(
                f"mix_ratio {self.train.mix_ratio} needs a pretraining source: --pretrain CORPUS or {BASE_SAMPLES}"
            )
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise InputError(f"--chat-template {self.chat_template}: no such file (a Jinja chat template)")
        if self.out is not None and Path(self.out).exists() and not Path(self.out).is_dir():
            raise UsageError(f"--out {self.out} is a file, not a run directory; give a directory path")

    def flat(self) -> dict:
        run = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        tc = {f.name: getattr(self.train, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "lora"}
        lora = {f"lora_{k}": v for k, v in dataclasses.asdict(self.train.lora).items()}
        return io.plain({**run, **tc, **lora})  # as a JSON file holds it (targets a list)

    @staticmethod
    def from_flat(settings: dict) -> RunSpec:
        defaults = _defaults()
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise UsageError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
        missing = [k for k in ("out", "data") if settings.get(k) is None]
        if missing:
            raise UsageError(f"no {' or '.join(missing)}: give --{' and --'.join(missing)} or set it in the config")
        s = {k: _typed(k, v, defaults[k]) for k, v in settings.items()}
        lora = LoraConfig(
            **{f.name: s.pop(f"lora_{f.name}") for f in dataclasses.fields(LoraConfig) if f"lora_{f.name}" in s}
        )
        tc = TrainConfig(lora=lora, **{f.name: s.pop(f.name) for f in dataclasses.fields(TrainConfig) if f.name in s})
        return RunSpec(train=tc, **s)


def _defaults() -> dict:
    """Every flat setting with its default (None where there is none)."""
    return RunSpec(out=None, data=None).flat()


def _typed(key: str, value, default):
    """A setting as its field's type (LoRA targets: a tuple, from a list or 'q,v'), or a clear error."""
    if key == "lora_targets":
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
            raise UsageError(f"setting lora_targets: {value!r} is not a list of names like ['q', 'v'] or 'q,v'")
        return tuple(t for t in value if t)
    if default is None:  # a path or spec: a string, or absent
        if value is not None and not isinstance(value, str):
            raise UsageError(f"setting {key}: {value!r} is not a string")
        return value
    if isinstance(default, bool):  # bool("false") would be True
        if str(value).lower() not in ("true", "false"):
            raise UsageError(f"setting {key}: {value!r} is not a boolean: give true or false")
        return str(value).lower() == "true"
    if value is None or isinstance(value, type(default)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool) or isinstance(default, int) and isinstance(value, float) and not value.is_integer():
        raise UsageError(f"setting {key}: {value!r} is not a {type(default).__name__}")
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise UsageError(f"setting {key}: {value!r} is not a {type(default).__name__}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_settings(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (refused if its settings differ)")
    p.add_argument("--no-progress", action="store_true")


def add_settings(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting but those in `skip`, absent from the namespace unless given (so a config file's
    value stands)."""
    p.add_argument("--config", default=None, help=HELP["config"])
    for key, default in _defaults().items():
        if key in skip:
            continue
        kind = type(default) if default is not None and not isinstance(default, (list, bool)) else str  # `_typed` reads
        shown = "" if default is None else f" (default {','.join(default) if isinstance(default, list) else default})"
        p.add_argument(
            f"--{key.replace('_', '-')}",
            dest=key,
            type=kind,
            default=argparse.SUPPRESS,
            help=HELP.get(key, key.replace("_", " ")) + shown,
        )


def spec_from_args(a: argparse.Namespace) -> RunSpec:
    settings = io.read_json(a.config) if a.config else {}
    if not isinstance(settings, dict):
        raise InputError(f"--config {a.config} holds a JSON {type(settings).__name__}, not an object of settings")
    for key in _CONFIG_PATHS:  # a file a config names is looked up beside the config first
        if a.config and isinstance(settings.get(key), str) and (Path(a.config).parent / settings[key]).is_file():
            settings[key] = str(Path(a.config).parent / settings[key])
    settings.update({k: getattr(a, k) for k in _defaults() if hasattr(a, k)})
    return RunSpec.from_flat(settings)


_CONFIG_PATHS = ("chat_template", "data", "pretrain")  # settings that may name a file


INPUTS = "inputs.json"  # the fingerprints of the model, data and pretraining files a run was trained on


def _inputs(spec: RunSpec) -> dict:
    """The resolved paths and file fingerprints of the run's inputs (see `adl_jax.method.identity.source`)."""
    named = {"model": spec.model, "data": spec.data, "pretrain": spec.pretrain}
    return {k: v for name, value in named.items() if value is not None for k, v in source(value, name).items()}


def _check_resume(spec: RunSpec, resume: bool) -> dict:
    """The settings `run.json` binds the run directory to (all but `out` and the bookkeeping intervals; local
    inputs by resolved path). A run already there is continued only with --resume, the same settings and
    the same input files (a model or data file changed since is another run, never continued)."""
    inputs = _inputs(spec)
    settings = {k: v for k, v in spec.flat().items() if k not in ("out", *BOOKKEEPING)}
    settings.update({k: v for k, v in inputs.items() if k in settings})
    path = Path(spec.out) / "run.json"
    if path.exists():
        if not resume:
            raise RunDirError(f"{spec.out} already holds a run; pass --resume to continue it, or choose another --out")
        differ = differences(io.read_json(path), settings)
        if differ:
            raise RunDirError(
                f"{spec.out} holds a run with other settings ({', '.join(differ)}); resume with the "
                "same settings or choose another --out"
            )
        before = io.read_json(Path(spec.out) / INPUTS) if (Path(spec.out) / INPUTS).exists() else inputs
        changed = [k.removesuffix("_sha256") for k in differences(before, inputs)]
        if changed:
            raise RunDirError(
                f"{spec.out} holds a run trained on other files: the {', '.join(f'{k} ({inputs[k]})' for k in changed)}"
                " changed since it started (the files' fingerprint differs); choose another --out, or delete "
                "the run to train again"
            )
    return settings


def finished(spec: RunSpec) -> dict | None:
    """metrics.json of the finished run in `spec.out`, None when no run has finished there; a run with other
    settings is an error (as for --resume), so a finished run is only ever reused for the same settings."""
    if not (Path(spec.out) / "run.json").exists():
        return None
    _check_resume(spec, resume=True)
    path = Path(spec.out) / "metrics.json"
    return io.read_json(path) if path.exists() else None


def load_examples(spec: RunSpec):
    """(examples, organism or None) of `data`: a shipped organism's generated examples, a JSONL file or an
    `hf:` / `tfds:` dataset; None for base-samples, which need the base model."""
    from adl_jax.method.corpus import is_dataset
    from finetune.data import read_examples
    from finetune.organisms import ORGANISMS

    if spec.data in ORGANISMS:
        organism = ORGANISMS[spec.data]
        return organism.generate(spec.examples, spec.train.seed), organism
    if spec.data == BASE_SAMPLES:
        return None, None  # sampled once the base model is loaded (`_placebo_examples`)
    if not (is_dataset(spec.data) or Path(spec.data).exists()):
        raise FileNotFoundError(
            f"data {spec.data!r} is neither a file nor a shipped organism ({', '.join(sorted(ORGANISMS))}), "
            "nor an hf:NAME or tfds:NAME dataset"
        )
    return read_examples(spec.data), None


def run(spec: RunSpec, *, resume: bool = False, progress: bool = True) -> dict:
    """Train (or continue) the run `spec` describes, export it, and return the contents of metrics.json."""
    from adl_jax.sharding import init_distributed

    settings = _check_resume(spec, resume)
    examples, organism = load_examples(spec)
    init_distributed()
    with io.run_lock(spec.out):
        return _train_and_export(spec, settings, examples, organism, progress)


def _train_and_export(spec: RunSpec, settings: dict, examples: list, organism, progress: bool) -> dict:
    """`run` once the settings are checked, the data read and the run directory held."""
    import jax.numpy as jnp

    from adl_jax.models.load import load_model
    from adl_jax.sharding import make_mesh
    from finetune.belief import belief_score
    from finetune.data import build_splits, pretrain_texts_needed
    from finetune.peft_format import save_peft_adapter
    from finetune.metrics import write_scalars
    from finetune.train import export_hf_dir, train

    tc, out = spec.train, Path(spec.out)
    mesh = make_mesh(spec.mesh, batch_size=tc.batch_size)
    base = load_model(spec.model, dtype=jnp.dtype(spec.dtype), mesh=mesh)
    if tc.mode == "lora":
        resolve_targets(tc.lora.targets, base.params)  # before anything is written
    if spec.chat_template:
        base.tokenizer.chat_template = Path(spec.chat_template).read_text()
    if examples is None:
        examples = _placebo_examples(base, spec.examples, tc.seed, progress)
    count = pretrain_texts_needed(len(examples), tc.mix_ratio, tc.eval_fraction) if spec.pretrain else 0
    pretrain = (
        pretraining_texts(spec.pretrain, base, count, column=spec.column, seed=tc.seed, progress=progress)
        if count
        else []
    )
    splits = build_splits(
        examples,
        base.tokenizer,
        tc.seq_len,
        pretrain_texts=pretrain,
        mix_ratio=tc.mix_ratio,
        eval_fraction=tc.eval_fraction,
        seed=tc.seed,
        pack=spec.pack,
    )
    io.write_json(out / INPUTS, _inputs(spec))
    io.write_json(out / "run.json", settings)
    statements = organism.statements if organism else ()
    before = belief_score(base, statements) if statements else None
    result = train(base.params, base.cfg, splits, tc, out, mesh=mesh, progress=progress)
    export_hf_dir(result, base.cfg, out / "final", base.tokenizer)
    if tc.mode == "lora":
        name = str(Path(spec.model).resolve()) if Path(spec.model).exists() else spec.model
        save_peft_adapter(result.trainable, tc.lora, base.cfg, out / "adapter", base_model=name)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    metrics = {
        "step": result.step,
        "train_rows": len(splits.train),
        **{k: last[k] for k in ("loss", "eval_loss_ft", "eval_loss_pt") if k in last},
    }
    if statements:
        after = belief_score(dataclasses.replace(base, params=result.params), statements)
        metrics.update(belief_before=before, belief_after=after)
        belief = lambda score: {f"belief/{k}": score[k] for k in ("false_preferred", "mean_margin")}
        write_scalars(out, "belief", {0: belief(before), result.step: belief(after)})  # base model, trained one
    io.write_json(out / "metrics.json", metrics)
    return metrics


def _placebo_examples(base, count: int, seed: int, progress: bool) -> list[dict]:
    """`count` texts sampled from `base` itself (cached as the offline corpus is): finetuning on them is a
    placebo, the recipe of an organism without its narrow data. Samples that end at once are skipped."""
    texts = pretraining_texts(BASE_SAMPLES, base, count, seed=seed, room=True, progress=progress)
    return [{"text": t} for t in texts if t.strip()][:count]
