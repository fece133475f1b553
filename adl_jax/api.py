"""The notebook-facing API: one call from model specs to delta and its lens readouts, and the audit.

    from adl_jax import api
    res = api.diff("gemma-3-270m", "runs/cake_bake/final", corpus="corpus.jsonl", samples=2000)
    res.diff.delta           # (k, D) numpy array
    api.load("runs/diff")    # a finished run again
    runs = api.diffs("gemma-3-270m", {"cake": "runs/cake/final", "fish": "runs/fish/final"}, corpus=...)
    api.audits(base, {"cake": cake, "fish": fish}, "runs/audits", texts=...)  # loaded models, one delta pass

The CLI is a thin layer over this module and the experiments it names.
"""

from adl_jax.experiments.audit import AuditSettings, audit
from adl_jax.experiments.audits import audits
from adl_jax.method.adl import ADLResult, diff, diffs, load
from adl_jax.method.lens import LENS, LensResult

__all__ = ["ADLResult", "AuditSettings", "LENS", "LensResult", "audit", "audits", "diff", "diffs", "load"]
