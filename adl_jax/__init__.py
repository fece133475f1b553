"""adl-jax: read what a language model was finetuned on from its activations (the Activation Difference Lens).

What a notebook needs, importable from here:

    import adl_jax as adl
    base, ft = adl.load_model("gemma-3-270m"), adl.load_model("runs/cake_bake/final")
    res = adl.diff(base, ft, corpus="pretraining.jsonl", samples=2000, out="runs/diff")
    adl.logit_lens(ft.params, ft.cfg, res.diff.delta, ft.tokenizer)

The names resolve on first use, so `import adl_jax` (and the `adl` command) does not pay for JAX, the
tokenizers and the experiments until they are needed.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

__version__ = "0.1.0"

# XLA:CPU's YNNPACK fuses a reduction into the dot that feeds it: a softmax over the 262k-token vocabulary
# then ran 3x slower than the dot and the softmax apart (90 rows: 700 vs 230 ms), the patchscope 2x slower
# and the delta loop 12% (jaxlib 0.10.2, 2 AMD EPYC cores). Reductions stay out of its fusions. The flag
# exists from jaxlib 0.9 on and an unknown XLA flag aborts the process, so only releases known to take it
# get it; a user's own setting of it wins.
YNN_FLAG, YNN_NO_REDUCE = "--xla_cpu_experimental_ynn_fusion_type", "-reduce"
YNN_JAXLIB = ((0, 9), (0, 11))  # [first, past last) minor release known to take the flag


def _keep_reductions_out_of_ynn_fusions() -> None:
    """Add YNN_FLAG=-reduce to XLA_FLAGS, before jax starts its backend (which reads them once)."""
    try:
        release = tuple(int(x) for x in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_JAXLIB[0] <= release < YNN_JAXLIB[1] and YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={YNN_NO_REDUCE}".strip()


_keep_reductions_out_of_ynn_fusions()

# public name -> the module that defines it (each declared once, there)
_EXPORTS = {
    "Model": "adl_jax.models.load",
    "load_model": "adl_jax.models.load",
    "ModelConfig": "adl_jax.models.config",
    "forward": "adl_jax.models.transformer",
    "Intervention": "adl_jax.models.transformer",
    "generate": "adl_jax.models.generate",
    "DiffSettings": "adl_jax.method.diff",
    "compute_delta": "adl_jax.method.diff",
    "compute_deltas": "adl_jax.method.diff",
    "logit_lens": "adl_jax.method.lens",
    "patchscope": "adl_jax.method.lens",
    "LensResult": "adl_jax.method.lens",
    "steering_vector": "adl_jax.method.steer",
    "steered_samples": "adl_jax.method.steer",
    "SteeringSettings": "adl_jax.judging.alpha_search",
    "find_alpha": "adl_jax.judging.alpha_search",
    "ADLResult": "adl_jax.method.adl",
    "diff": "adl_jax.method.adl",
    "diffs": "adl_jax.method.adl",
    "load": "adl_jax.method.adl",
    "AuditSettings": "adl_jax.experiments.audit",
    "audit": "adl_jax.experiments.audit",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adl_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
