"""`adl steer`: a finished run's delta (or a vector from a file) steering your own prompts, at several alphas
side by side with the unsteered continuation, all of it one batched generation.

Every prompt x (0, *alphas) x samples is one row of a single `generate` call, alpha 0 being the unsteered
row, so the steered and unsteered texts share one compilation and one seed. A sampled row's draws depend
on its place in the batch (as in the alpha search); the same prompts, alphas and seed give the same texts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adl_jax import io
from adl_jax.errors import InputError, UsageError, require
from adl_jax.judging.alpha_search import SteeringSettings
from adl_jax.method.diff import DiffResult
from adl_jax.method.identity import source
from adl_jax.method.steer import format_prompt, steering_vector
from adl_jax.models.generate import generate
from adl_jax.models.load import Model
from adl_jax.models.transformer import Intervention

ALPHA_RANGE = (0.0, 100.0)  # the alpha search's range: 100 is 100 times the finetuned model's activation norm
STEER_MODELS = ("finetuned", "base")


@dataclasses.dataclass(frozen=True)
class SteerSettings:
    """What `adl steer` generates; the texts depend on nothing else (with the model and the vector)."""

    alphas: tuple[float, ...] = (1.0,)
    position: int = 1
    layer: int | None = None  # None: the run's read layer
    steer_model: str = "finetuned"
    samples: int = 1
    new_tokens: int = 64
    temperature: float = SteeringSettings.final_temperature  # the audit's final samples'; 0 is greedy
    seed: int = 0

    def __post_init__(self):
        lo, hi = ALPHA_RANGE
        require(len(self.alphas) >= 1, "alpha", "", "give at least one alpha, e.g. 0.5,1,2")
        bad = [a for a in self.alphas if not lo <= a <= hi]
        require(not bad, "alpha", ",".join(map(str, bad)), f"alphas must lie in [{lo:g}, {hi:g}]")
        require(self.position >= 0, "position", self.position, "must be a position of delta, 0 or more")
        require(self.layer is None or self.layer >= 0, "layer", self.layer, "must be a layer index, 0 or more")
        require(self.steer_model in STEER_MODELS, "steer_model", self.steer_model, "must be finetuned or base")
        require(self.samples >= 1, "samples", self.samples, "must be at least 1")
        require(self.new_tokens >= 1, "new_tokens", self.new_tokens, "must be at least 1")
        require(self.temperature >= 0, "temperature", self.temperature, "must be 0 (greedy) or more")


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """The prompts of a file: JSONL (a JSON string, or an object with "prompt" or "text", per line) or
    plain text (one prompt per line); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file {path} does not exist; give a .txt (one prompt per line) or .jsonl file")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        prompts = [line.strip() for line in lines]
    else:
        prompts = []
        for i, row in io.jsonl_rows(lines, path):
            text = (
                row if isinstance(row, str) else row.get("prompt", row.get("text")) if isinstance(row, dict) else None
            )
            if not isinstance(text, str) or not text.strip():
                raise InputError(f'{path}:{i}: give a JSON string or an object with a "prompt" (or "text") string')
            prompts.append(text)
    if not prompts:
        raise InputError(f"prompts file {path} holds no prompt")
    return tuple(prompts)


def check_prompts(prompts) -> None:
    require(len(prompts) >= 1, "prompt", "", "give at least one prompt")
    for p in prompts:
        require(bool(p.strip()), "prompt", repr(p), "a prompt must hold some text")


def run_vector(run: str | Path, position: int, layer: int | None = None) -> tuple[np.ndarray, int, dict]:
    """(unit(delta_position) * ft_norm, the layer to steer at, the run's meta) of a finished delta run: at
    `layer` (default the run's read layer) with that layer's delta and norm when the run stored them
    (`--layers`), else with the read layer's."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"run directory {run} does not exist: give a directory written by adl diff or adl audit")
    res = DiffResult.load(run)
    k = res.delta.shape[0]
    require(position < k, "position", position, f"the run analysed positions 0..{k - 1}")
    layer = int(res.meta["layer"]) if layer is None else layer
    stored = res.meta.get("layers", [])
    if res.delta_layers is not None and layer in stored:
        i = stored.index(layer)
        return steering_vector(res.delta_layers[i, position], res.ft_norm_layers[i]), layer, res.meta
    return steering_vector(res.delta[position], res.ft_norm), layer, res.meta


def file_vector(path: str | Path, position: int) -> np.ndarray:
    """A steering vector from a .npy file: (D,), or (k, D) of which row `position`; added as alpha * vector."""
    path = Path(path)
    if path.suffix != ".npy" or not path.is_file():
        raise InputError(f"vector file {path}: give an existing .npy file holding a (D,) or (k, D) array")
    v = np.load(path)
    if v.ndim == 2:
        require(position < len(v), "position", position, f"{path} holds vectors for positions 0..{len(v) - 1}")
        v = v[position]
    if v.ndim != 1:
        raise InputError(f"vector file {path} holds an array of shape {v.shape}; expected (D,) or (k, D)")
    return np.asarray(v, np.float32)


def check_models(meta: dict, base: str, finetuned: str) -> None:
    """Refuse models other than the ones a run's delta was computed from (another path or other weights)."""
    for name, spec in (("base", base), ("finetuned", finetuned)):
        now = source(spec, name)
        if (now[name], now[f"{name}_sha256"]) != (meta.get(name), meta.get(f"{name}_sha256")):
            raise InputError(
                f"the run was computed from {name} {meta.get(name)}, not {spec} (or that model's files changed "
                "since): steer the models of the run, or compute a delta for these with adl diff"
            )


def steer(model: Model, prompts, vector: np.ndarray, settings: SteerSettings, layer: int) -> list[dict]:
    """Per prompt: its unsteered samples and its samples at each alpha, from one batched generation."""
    check_prompts(prompts)
    require(layer < model.cfg.num_layers, "layer", layer, f"the model has layers 0..{model.cfg.num_layers - 1}")
    if vector.shape != (model.cfg.hidden_size,):
        raise InputError(
            f"the steering vector has shape {vector.shape}; the model's residual has {model.cfg.hidden_size}"
        )
    alphas = (0.0, *settings.alphas)
    per_prompt = len(alphas) * settings.samples
    ids = [format_prompt(model.tokenizer, p) for p in prompts]
    row_alphas = np.tile(np.repeat(np.asarray(alphas, np.float32), settings.samples), len(prompts))
    edit = Intervention(layer=layer, mode="add", vector=jnp.asarray(row_alphas[:, None] * vector[None, :]))
    gen = generate(
        model.params,
        model.cfg,
        [i for i in ids for _ in range(per_prompt)],
        max_new_tokens=settings.new_tokens,
        key=jax.random.key(settings.seed),
        temperature=settings.temperature,
        interventions=(edit,),
    )
    texts = [
        model.tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(gen.tokens.tolist(), gen.lengths.tolist())
    ]
    out = []
    for p, prompt in enumerate(prompts):
        rows = texts[p * per_prompt : (p + 1) * per_prompt]
        by_alpha = [rows[i * settings.samples : (i + 1) * settings.samples] for i in range(len(alphas))]
        out.append(
            {"prompt": prompt, "unsteered": by_alpha[0], "steered": dict(zip(map(str, settings.alphas), by_alpha[1:]))}
        )
    return out


def side_by_side(results: list[dict], width: int | None = None) -> str:
    """A terminal table per prompt: unsteered and each alpha in columns, one row per sample."""
    width = width or shutil.get_terminal_size((160, 40)).columns
    blocks = []
    for r in results:
        heads = ["unsteered", *(f"alpha {a}" for a in r["steered"])]
        columns = [r["unsteered"], *r["steered"].values()]
        cell = max(12, (width - 3 * (len(heads) - 1)) // len(heads))
        lines = [
            f"prompt: {r['prompt']}",
            " | ".join(h.ljust(cell) for h in heads).rstrip(),
            "-+-".join("-" * cell for _ in heads),
        ]
        for s in range(len(columns[0])):
            wrapped = [textwrap.wrap(" ".join(c[s].split()), cell) or [""] for c in columns]
            for i in range(max(map(len, wrapped))):
                lines.append(" | ".join((w[i] if i < len(w) else "").ljust(cell) for w in wrapped).rstrip())
            lines.append("")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def steer_json(results: list[dict], settings: SteerSettings, *, model: str, layer: int, vector_from: str) -> str:
    """Everything a steering result depends on, with the texts."""
    return json.dumps(
        {**dataclasses.asdict(settings), "model": model, "vector": vector_from, "layer": layer, "results": results},
        indent=1,
        ensure_ascii=False,
    )


def run_meta(run: str | Path) -> dict:
    """The identity (meta.json) of a finished delta run: its models, layer, corpus, settings."""
    run = Path(run)
    if not (run / "meta.json").is_file():
        raise InputError(f"{run} holds no delta run (no meta.json): give a directory written by adl diff or adl audit")
    return io.read_json(run / "meta.json")


def pair_specs(meta: dict, base: str | None, finetuned: str | None) -> tuple[str, str]:
    """The base and finetuned specs to load for a run: the given ones, else the run's; either way checked
    to be the models the run's delta was computed from."""
    if bool(base) != bool(finetuned):
        raise UsageError("give both --base and --finetuned (the run's models), or neither to use the run's")
    base, finetuned = base or meta["base"], finetuned or meta["finetuned"]
    check_models(meta, base, finetuned)
    return base, finetuned
