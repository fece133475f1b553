"""`adl plan`: will an audit or a finetuning run fit on a slice, and if not, what would? From the config alone.

Weights, trainable copies and optimizer moments are counted exactly: every parameter's shape split by the
PartitionSpec our loader places it with (`params.param_specs`), so the figure is what the loader and
trainer allocate per device. The KV cache, gradients, merged LoRA weights and activations are estimates of
the peak working set of our code, with the assumptions stated next to each; for the train step they come
to 0.7-0.9 of XLA's own count of its temporaries (`memory_analysis`, tests/test_plan.py). A plan fits when
its total is at most 90% of a device's memory: the rest is left to XLA, fragmentation and the runtime.
Shipped configs are package data (adl_jax/configs/models), read through importlib.resources, so an installed
wheel finds them too.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from importlib import resources
from collections.abc import Mapping
from pathlib import Path

from adl_jax.experiments.audit import AuditSettings
from adl_jax.models.adapters import adapter_specs, is_adapter, read_adapter_config
from adl_jax.method.diff import organism_shards, resolve_layer
from adl_jax.method.lens import PATCHSCOPE_PROMPTS, PATCHSCOPE_SCALES
from adl_jax.models.config import ModelConfig
from adl_jax.models.params import param_shapes, param_specs
from adl_jax.sharding import MESH_AXES, Rules, device_memory, layouts, parse_mesh
from adl_jax.method.steer import STEERING_PROMPTS
from finetune.lora import LoraConfig, resolve_targets
from adl_jax.models.loss import TILE_BYTES
from finetune.train import TrainConfig

USABLE = 0.9
GIB = 2**30
CONFIGS = resources.files("adl_jax") / "configs" / "models"  # installed with the package
PROMPT_TOKENS = 64  # a chat-formatted steering or patchscope prompt, at most
DTYPES = {"float32": 4, "f32": 4, "bfloat16": 2, "bf16": 2}


@dataclasses.dataclass(frozen=True)
class Device:
    """One accelerator. Slice names count TensorCores on v4/v5p (2 per chip, one JAX device per chip) and
    chips or GPUs elsewhere; `sizes` are the device counts of slices one can create."""

    label: str
    hbm_gib: float
    bf16_tflops: float  # dense peak
    hbm_gbps: float
    usd_per_hour: float | None  # on-demand list price per chip, us-central1, 2025; None: not priced here
    cores_per_chip: int
    sizes: tuple[int, ...]


_TPU_POD = tuple(2**i for i in range(2, 13))
_LITE_POD = (1, 4, 8, 16, 32, 64, 128, 256)
_GPUS = (1, 2, 4, 8, 16, 32, 64)
DEVICES = {
    "v4": Device("TPU v4", 32, 275, 1200, 3.22, 2, _TPU_POD),
    "v5e": Device("TPU v5e", 16, 197, 819, 1.20, 1, _LITE_POD),
    "v5p": Device("TPU v5p", 95, 459, 2765, 4.20, 2, _TPU_POD),
    "v6e": Device("TPU v6e", 32, 918, 1640, 2.70, 1, _LITE_POD),
    "h100": Device("NVIDIA H100 80GB", 80, 989, 3350, None, 1, _GPUS),
    "h200": Device("NVIDIA H200", 141, 989, 4800, None, 1, _GPUS),
}
_ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}


def parse_devices(spec: str) -> tuple[str, Device, int]:
    """'v5e-16' -> ('v5e', device, 16 chips); 'v4-32' -> 16 chips (named by TensorCores); 'h100-8' -> 8."""
    kind, _, count = spec.lower().rpartition("-") if "-" in spec else (spec.lower(), "", "1")
    kind = _ALIASES.get(kind, kind)
    if kind not in DEVICES or not count.isdigit():
        raise ValueError(f"unknown devices {spec!r}: write KIND-COUNT, KIND one of {', '.join(DEVICES)} (e.g. v5e-16)")
    device = DEVICES[kind]
    n = int(count) // device.cores_per_chip
    if n not in device.sizes:
        raise ValueError(f"{spec}: {device.label} slices have {', '.join(map(str, device.sizes))} chips")
    return kind, device, n


def slice_name(kind: str, n_devices: int) -> str:
    return f"{kind}-{n_devices * DEVICES[kind].cores_per_chip}"


def model_config(spec: str) -> ModelConfig:
    """A shipped config (file name or hub id, any case), an HF directory or config.json, a GGUF file or
    the embedded model, or a hub id whose config.json alone is downloaded."""
    name = spec.rsplit("/", 1)[-1].lower()
    shipped = {Path(p.name).stem.lower(): p for p in CONFIGS.iterdir() if p.name.endswith(".json")}
    if name in shipped and not Path(spec).exists():
        return ModelConfig.from_hf(json.loads(shipped[name].read_text()))
    path = Path(spec).expanduser()
    if path.is_dir() and is_adapter(path):  # a PEFT adapter runs on its base's architecture
        return model_config(read_adapter_config(path)["base_model_name_or_path"])
    if path.is_dir() or path.suffix == ".json":
        return ModelConfig.from_json(path)
    from adl_jax.models.load import EMBEDDED, resolve_spec

    if spec == EMBEDDED or path.suffix == ".gguf":
        from adl_jax.models.gguf import gguf_config

        return gguf_config(resolve_spec(spec))
    if spec.count("/") == 1 and not path.exists():
        from huggingface_hub import hf_hub_download

        return ModelConfig.from_json(hf_hub_download(spec, "config.json"))
    names = ", ".join(sorted(Path(p.name).stem for p in shipped.values()))
    raise FileNotFoundError(
        f"model {spec!r}: not a shipped config ({names}), an HF directory, a config.json, a .gguf file or a hub id"
    )


def _shard(shape, spec, sizes: Mapping[str, int]) -> int:
    """Elements of one device's shard of a tensor of `shape` split by PartitionSpec `spec`."""
    n = 1
    for size, axes in itertools.zip_longest(shape, tuple(spec)):
        axes = (axes,) if isinstance(axes, str) else axes or ()
        n *= size // math.prod(sizes[a] for a in axes)
    return n


def weight_bytes(
    cfg: ModelConfig,
    sizes: Mapping[str, int],
    nbytes: int,
    rules: Rules = Rules(),
    names: tuple[str, ...] | None = None,
) -> int:
    """Bytes per device of the parameters (or of the layer matrices `names`) as the loader places them."""
    shapes, specs = param_shapes(cfg), param_specs(cfg, sizes, rules)
    flat = {
        **{k: (v, specs[k]) for k, v in shapes.items() if k != "layers"},
        **{k: (v, specs["layers"][k]) for k, v in shapes["layers"].items()},
    }
    return nbytes * sum(_shard(shape, spec, sizes) for k, (shape, spec) in flat.items() if names is None or k in names)


def adapter_bytes(cfg: ModelConfig, sizes: Mapping[str, int], tc: TrainConfig, rules: Rules = Rules()) -> int:
    """Float32 LoRA adapters per device: A (L, in, r) split like its weight's input axis, B like its output."""
    shapes, specs = param_shapes(cfg)["layers"], param_specs(cfg, sizes, rules)["layers"]
    total = 0
    for name in resolve_targets(tc.lora.targets, {"layers": shapes}):
        (layers, d_in, d_out), (a, b) = shapes[name], adapter_specs(specs[name])
        total += _shard((layers, d_in, tc.lora.rank), a, sizes) + _shard((layers, tc.lora.rank, d_out), b, sizes)
    return 4 * total


def _split(n: int, ways: int) -> int:
    """A dimension the rules split over `ways` devices when it divides evenly (else replicated)."""
    return n // ways if n % ways == 0 else n


def activation_bytes(
    cfg: ModelConfig,
    sizes: Mapping[str, int],
    rows: int,
    tokens: int,
    keys: int,
    nbytes: int,
    *,
    layers: int = 1,
    logit_tokens: int = 0,
    logit_copies: int = 2,
    batch_split: bool = True,
) -> int:
    """Working set of a forward over rows x tokens attending to `keys` positions: per token and layer the
    residual, norms and block outputs (4 D), q/k/v and gate/up/act (3 F) in the compute dtype, the two
    norms' f32 inputs (2 D), and per head and key the f32 scores and probabilities plus the probabilities in
    the compute dtype; for `layers` layers (1 for inference, all for a backward pass without
    rematerialisation); plus `logit_copies` f32 copies of the logits at `logit_tokens` positions per row.
    Heads, MLP and vocabulary split over `model`; rows over data x fsdp when `batch_split`."""
    m = sizes["model"]
    rows = -(-rows // (sizes["data"] * sizes["fsdp"])) if batch_split else rows
    q, kv = _split(cfg.num_heads, m) * cfg.head_dim, _split(cfg.num_kv_heads, m) * cfg.head_dim
    per_token = (4 * cfg.hidden_size + q + 2 * kv + 3 * _split(cfg.intermediate_size, m)) * nbytes
    per_token += 2 * cfg.hidden_size * 4 + _split(cfg.num_heads, m) * keys * (8 + nbytes)
    return rows * (layers * tokens * per_token + logit_copies * 4 * logit_tokens * _split(cfg.vocab_size, m))


@dataclasses.dataclass(frozen=True)
class Run:
    """What is planned: an audit with its settings, or a finetuning run with its TrainConfig."""

    task: str = "audit"  # audit | finetune
    dtype: str = "bfloat16"
    audit: AuditSettings = AuditSettings()
    train: TrainConfig = TrainConfig()
    rules: Rules = Rules()
    adapter_rank: int = 0  # audit of a PEFT LoRA of this rank: the base's weights once, plus the adapter
    organisms: int = 1  # audited in one job (`adl audit --finetuned NAME=SPEC ...`): N adapters or N models

    def __post_init__(self):
        if self.organisms < 1:
            raise ValueError(f"--organisms {self.organisms}: plan at least 1 organism")
        if self.task not in ("audit", "finetune"):
            raise ValueError(f"task must be 'audit' or 'finetune', not {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")

    @classmethod
    def of(
        cls,
        task: str = "audit",
        dtype: str = "bfloat16",
        mode: str = "lora",
        batch_size: int | None = None,
        seq_len: int | None = None,
        adapter_rank: int = 0,
        organisms: int = 1,
    ) -> Run:
        """The default audit or finetuning run, with the batch (and finetuning mode and length) overridden."""
        audit, train = AuditSettings(), TrainConfig(mode=mode)
        audit = dataclasses.replace(audit, batch_size=batch_size or audit.batch_size)
        train = dataclasses.replace(train, batch_size=batch_size or train.batch_size, seq_len=seq_len or train.seq_len)
        return cls(task, dtype, audit, train, adapter_rank=adapter_rank, organisms=organisms)

    @property
    def batch(self) -> int:
        """Rows per batch, split over data x fsdp: the delta batch, or the finetuning micro-batch."""
        return self.audit.batch_size if self.task == "audit" else self.train.batch_size


@dataclasses.dataclass(frozen=True)
class Plan:
    model: str
    run: Run
    kind: str
    n_devices: int
    sizes: dict[str, int]
    rows: dict[str, tuple[int, str]]  # what a device holds -> (bytes, how it is counted)
    chosen: bool = False  # the mesh is the planner's choice (no --mesh given)

    @property
    def total(self) -> int:
        return sum(b for b, _ in self.rows.values())

    @property
    def capacity(self) -> int:
        return int(USABLE * DEVICES[self.kind].hbm_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def mesh(self) -> str:
        return ",".join(f"{a}={self.sizes[a]}" for a in MESH_AXES)

    def table(self) -> str:
        device = DEVICES[self.kind]
        task = "audit" if self.run.task == "audit" else f"{self.run.train.mode} finetuning"
        lines = [
            f"{self.model}: {task} in {self.run.dtype} on {slice_name(self.kind, self.n_devices)} "
            f"({self.n_devices} x {device.label}), mesh {self.mesh}"
            + (" (no --mesh: the fitting mesh with the most data parallelism)" if self.chosen else "")
            + "; per device:"
        ]
        lines += [f"  {name:<36}{b / GIB:8.2f} GiB  {how}" for name, (b, how) in self.rows.items()]
        lines.append(
            f"  {'total':<36}{self.total / GIB:8.2f} GiB  of {self.capacity / GIB:.1f} GiB usable "
            f"({USABLE:.0%} of {device.hbm_gib:g} GiB)"
        )
        return "\n".join(lines)


def plan(cfg: ModelConfig, devices: str, mesh: str | None = None, run: Run = Run(), model: str = "model") -> Plan:
    """Per-device bytes of `run` for `cfg` on `devices` (e.g. 'v5e-16') with `mesh` (default: the planner's
    choice, `default_sizes`, as every command makes it without --mesh; where no mesh fits, the layout with
    the most data parallelism, which `check` then refuses)."""
    kind, device, n = parse_devices(devices)
    sizes = None if mesh else default_sizes(cfg, n, run, int(USABLE * device.hbm_gib * GIB))
    chosen = sizes is not None
    sizes = sizes or parse_mesh(mesh, n, run.batch)
    return Plan(model, run, kind, n, sizes, plan_rows(cfg, sizes, run), chosen)


def plan_rows(cfg: ModelConfig, sizes: Mapping[str, int], run: Run) -> dict[str, tuple[int, str]]:
    """What a device holds of `run` on a mesh of these axis sizes -> (bytes, how it is counted)."""
    return _audit(cfg, sizes, run) if run.task == "audit" else _finetune(cfg, sizes, run)


def default_sizes(cfg: ModelConfig, n_devices: int, run: Run, capacity: int) -> dict[str, int] | None:
    """The mesh a run takes without --mesh: the first of `layouts` (most data parallelism first) whose
    per-device total fits `capacity` bytes; None if none does."""
    for sizes in layouts(n_devices, run.batch):
        if sum(b for b, _ in plan_rows(cfg, sizes, run).values()) <= capacity:
            return sizes
    return None


def runtime_mesh(model: str, run: Run, n_devices: int) -> str | None:
    """`default_sizes` for `model` (a spec: the planner reads only its config) on `n_devices` devices of the
    memory `device_memory` gives, as a --mesh string; None where the memory is unknown (CPU: then every
    layout fits, and the default layout has the most data parallelism) or no layout fits."""
    memory = device_memory()
    if memory is None:
        return None
    sizes = default_sizes(model_config(model), n_devices, run, int(USABLE * memory))
    return sizes and ",".join(f"{a}={sizes[a]}" for a in MESH_AXES)


def _audit(cfg: ModelConfig, sizes, run: Run) -> dict[str, tuple[int, str]]:
    b, st, s = DTYPES[run.dtype], run.audit, run.audit.steering
    search_rows = (2**s.lookahead - 1) * s.samples  # one batched call carries a lookahead's alphas
    gen = [(search_rows, PROMPT_TOKENS + s.new_tokens), (s.final_samples, PROMPT_TOKENS + s.final_tokens)]
    kv_heads = _split(cfg.num_kv_heads, sizes["model"])
    kv = max(2 * cfg.num_layers * r * length * kv_heads * cfg.head_dim * b for r, length in gen)
    scope_rows = len(PATCHSCOPE_SCALES) * len(PATCHSCOPE_PROMPTS)
    n = run.organisms
    act = max(
        # delta: to the middle layer, no logits; the organisms' forwards of a batch run in one step
        activation_bytes(cfg, sizes, n * st.batch_size, st.n, st.n, b),
        activation_bytes(
            cfg, sizes, search_rows, PROMPT_TOKENS, gen[0][1], b, logit_tokens=1, logit_copies=6, batch_split=False
        ),  # steering prefill: the sampler sorts and sums the vocabulary
        # patchscope: the last token of all scales x prompts in one batch, each row reading its prompt's prefix
        # from a KV cache of its own (the prefix itself runs once, a few rows)
        activation_bytes(cfg, sizes, scope_rows, 1, PROMPT_TOKENS, b, logit_tokens=1, batch_split=False)
        + 2 * cfg.num_layers * scope_rows * PROMPT_TOKENS * kv_heads * cfg.head_dim * b,
    )
    weights = weight_bytes(cfg, sizes, b, run.rules)
    if run.adapter_rank:  # the adapter is applied unmerged on the base's own arrays (models/adapters.py)
        lora = dataclasses.replace(run.train, lora=LoraConfig(rank=run.adapter_rank))
        held = n // organism_shards(sizes, n)  # stacked adapters split over `data` where it divides them
        stored = {
            "weights (base, shared by the adapter)": (weights, "exact"),
            f"PEFT adapter{f's ({held} of {n})' if n > 1 else ''} (rank {run.adapter_rank}, f32)": (
                held * adapter_bytes(cfg, sizes, lora, run.rules),
                "exact with every projection adapted, at most",
            ),
        }
    elif n > 1:
        stored = {f"weights (base + {n} finetuned)": ((1 + n) * weights, "exact")}
    else:
        stored = {"weights (base + finetuned)": (2 * weights, "exact")}
    return {
        **stored,
        "KV cache (steering)": (
            kv,
            f"estimate: {gen[0][0]} rows x {gen[0][1]} or {gen[1][0]} x {gen[1][1]} tokens, rows not split",
        ),
        "activations (peak forward)": (act, "estimate: max of delta, steering prefill, patchscope batches"),
    }


def max_organisms(cfg: ModelConfig, p: Plan, limit: int = 1 << 16) -> int:
    """The most organisms an audit of `p`'s run fits on `p`'s slice and mesh (0: not one), in multiples of the
    `data` size when adapters split over it (a count it does not divide replicates them on every device)."""
    step = p.sizes["data"] if p.run.adapter_rank else 1
    fits = lambda count: (
        sum(b for b, _ in plan_rows(cfg, p.sizes, dataclasses.replace(p.run, organisms=count)).values()) <= p.capacity
    )
    lo, hi = 0, limit // step  # fits(lo * step) or lo == 0; the largest multiple is found by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid - 1)
    return lo * step if lo else int(fits(1))


def kept_bytes(cfg: ModelConfig, sizes: Mapping[str, int], rows: int, tokens: int, nbytes: int, remat: str) -> int:
    """What rematerialised layers keep for the backward pass, all layers: each block's input ("full"), or
    the outputs of its weight matmuls q, k, v, o, gate, up, down ("dots"); 0 without remat (then
    `activation_bytes` counts every layer's working set)."""
    if remat == "none":
        return 0
    m = sizes["model"]
    rows = -(-rows // (sizes["data"] * sizes["fsdp"]))
    q, kv = _split(cfg.num_heads, m) * cfg.head_dim, _split(cfg.num_kv_heads, m) * cfg.head_dim
    per_token = cfg.hidden_size if remat == "full" else q + 2 * kv + 2 * cfg.hidden_size
    per_token += 0 if remat == "full" else 2 * _split(cfg.intermediate_size, m)
    return rows * tokens * cfg.num_layers * per_token * nbytes


def _finetune(cfg: ModelConfig, sizes, run: Run) -> dict[str, tuple[int, str]]:
    b, tc, rules = DTYPES[run.dtype], run.train, run.rules
    compute = b if tc.compute_dtype == "base" else DTYPES[tc.compute_dtype]
    if tc.mode == "full":
        trainable = weight_bytes(cfg, sizes, 4, rules)
        working = (
            "working copy (compute dtype)",
            (
                weight_bytes(cfg, sizes, compute, rules) if compute != 4 else 0,
                "estimate: the f32 weights cast for the forward",
            ),
        )
    else:
        trainable = adapter_bytes(cfg, sizes, tc, rules)
        targets = resolve_targets(tc.lora.targets, param_shapes(cfg))
        working = (
            "merged LoRA weights",
            (
                weight_bytes(cfg, sizes, 8 + b, rules, targets),
                "estimate: f32 A@B, merged W and f32 cotangent per adapted weight",
            ),
        )
    tile = min(tc.seq_len, max(1, TILE_BYTES // (4 * cfg.vocab_size * tc.batch_size)))  # as adl_jax.models.loss tiles
    act = activation_bytes(
        cfg,
        sizes,
        tc.batch_size,
        tc.seq_len,
        tc.seq_len,
        compute,
        layers=cfg.num_layers if tc.remat == "none" else 1,
        logit_tokens=tile,
        logit_copies=3,
    ) + kept_bytes(cfg, sizes, tc.batch_size, tc.seq_len, compute, tc.remat)
    return {
        "weights (base)": (weight_bytes(cfg, sizes, b, rules), "exact"),
        "trainable (f32)": (trainable, "exact"),
        "optimizer (2 Adam moments, f32)": (2 * trainable, "exact"),
        "gradients (f32, sum + micro-batch)": (2 * trainable, "estimate"),
        working[0]: working[1],
        "activations (saved for backward)": (
            act,
            f"estimate: {tc.batch_size} x {tc.seq_len} tokens a micro-batch, remat {tc.remat}, "
            f"f32 logits of {tile}-position tiles",
        ),
    }


def suggest(cfg: ModelConfig, kind: str, run: Run = Run()) -> Plan | None:
    """The smallest slice of `kind` with a mesh that fits, or None. Finetuning: most data parallelism, then
    fsdp (least communication). Audit: fewest bytes per device, then most fsdp: steering decodes with rows
    replicated, so only sharding shortens its memory-bound steps (XLA keeps the weight shards in place and
    all-reduces the small activations instead, in the HLO of a sharded decode step)."""
    for n in DEVICES[kind].sizes:
        meshes = [",".join(f"{a}={s[a]}" for a in MESH_AXES) for s in layouts(n, run.batch)]
        fitting = [p for mesh in meshes if (p := plan(cfg, slice_name(kind, n), mesh, run)).fits]
        if fitting:
            if run.task == "audit":
                return max(fitting, key=lambda p: (-p.total, p.sizes["fsdp"]))
            return max(fitting, key=lambda p: (p.sizes["data"], p.sizes["fsdp"]))
    return None


def check(p: Plan, cfg: ModelConfig) -> None:
    """Refuse a plan that cannot run, naming the smallest slice and mesh that would hold it."""
    dp = p.sizes["data"] * p.sizes["fsdp"]
    if p.run.batch % dp:
        raise ValueError(
            f"the batch of {p.run.batch} rows does not split over data x fsdp = {dp} devices; "
            "choose a mesh whose data x fsdp divides it"
        )
    if p.fits:
        return
    better = suggest(cfg, p.kind, p.run)
    hint = (
        f"it fits on {slice_name(p.kind, better.n_devices)} with --mesh {better.mesh} "
        f"({better.total / GIB:.1f} GiB per device)"
        if better
        else f"no {DEVICES[p.kind].label} slice holds it with these settings; try bfloat16, LoRA or a larger device"
    )
    raise ValueError(
        f"does not fit: {p.total / GIB:.1f} GiB per device > {p.capacity / GIB:.1f} GiB usable on "
        f"{DEVICES[p.kind].label}; {hint}"
    )


def audit_seconds(cfg: ModelConfig, p: Plan, mfu: float = 0.4, bandwidth: float = 0.5) -> dict[str, float]:
    """Estimated seconds of an audit's stages on the plan's slice (LLM grading not included). Delta (both
    models to the read layer) and patchscope run at `mfu` of the bf16 peak, 2 FLOPs per weight per token.
    Steering is sequential decode steps, each reading the finetuned model's weights per device at
    `bandwidth` of the HBM bandwidth (or compute-bound, whichever is slower)."""
    st, s, device = p.run.audit, p.run.audit.steering, DEVICES[p.kind]
    shapes = param_shapes(cfg)
    per_layer = sum(math.prod(shape[1:]) for shape in shapes["layers"].values())
    weights = per_layer * cfg.num_layers + sum(math.prod(v) for k, v in shapes.items() if k != "layers")
    layer = resolve_layer(st.layer, cfg)
    flops_per_s = p.n_devices * device.bf16_tflops * 1e12 * mfu
    delta = 2 * st.samples * st.n * 2 * per_layer * (layer + 1) / flops_per_s
    scope_tokens = st.k * len(PATCHSCOPE_SCALES) * len(PATCHSCOPE_PROMPTS) * PROMPT_TOKENS
    patchscope = 2 * weights * scope_tokens / flops_per_s
    rows = (2**s.lookahead - 1) * s.samples
    step = max(
        weight_bytes(cfg, p.sizes, DTYPES[p.run.dtype], p.run.rules) / (device.hbm_gbps * 1e9 * bandwidth),
        2 * weights * rows / flops_per_s,
    )
    calls = -(-s.first_steps // s.lookahead) + (len(STEERING_PROMPTS) - 1) * -(-s.other_steps // s.lookahead)
    final = len(st.final_prompts) * s.final_tokens
    steps = len(st.steer_positions or range(st.k)) * (calls * s.new_tokens + final) + final
    steps += len(STEERING_PROMPTS) * s.new_tokens  # unsteered references for the offline coherence judge
    return {"delta": delta, "patchscope": patchscope, "steering": steps * step}
