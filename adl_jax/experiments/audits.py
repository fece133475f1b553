"""Many organisms of one base audited in one job: every delta in one pass, then each organism's audit.

`audits` measures all organisms' deltas through one `compute_deltas` pass (the base forward shared, LoRA
organisms stacked), into `OUT/<name>/` with the identity a single `audit` of that directory gives its delta,
so each organism's `audit` then finds its delta finished and runs only the later stages. Each organism's
directory is exactly a single audit's (reloadable with `adl lens` / `api.load`, resumed by `adl audit --out
OUT/<name>`); `OUT/organisms.json` and `organisms.html` set them side by side. One organism's failure (a NaN
delta, an error in a stage) is reported by name at the end and loses none of the others' results.
"""

from __future__ import annotations

from pathlib import Path

from adl_jax import io
from adl_jax.errors import AdlError, UsageError
from adl_jax.experiments.audit import AuditSettings, audit
from adl_jax.method import adl
from adl_jax.method.diff import OrganismsFailed, compute_deltas
from adl_jax.models.load import Model


class AuditsFailed(AdlError, RuntimeError):
    """Some organisms' audits failed; `failures` names them with the reason, `summaries` holds the others'."""

    def __init__(self, failures: dict[str, str], summaries: dict[str, dict]):
        lines = "; ".join(f"{name}: {why}" for name, why in failures.items())
        done = f" (the other {len(summaries)} finished)" if summaries else ""
        super().__init__(
            f"{len(failures)} organism(s) failed: {lines}{done}; fix them and rerun the same command to resume"
        )
        self.failures, self.summaries = failures, summaries


def deltas(
    base: Model, organisms: dict[str, Model], dirs: dict[str, Path], *, texts, settings: AuditSettings, progress
):
    """Every organism's delta in one pass into its run directory `dirs[name]`, with the token matrix and
    identity that `measure` of that directory computes, so it finds the delta finished. Returns the reasons
    of the organisms whose delta failed (NaN/inf)."""
    if settings.chat_before is not None and len(organisms) > 1:
        raise UsageError(f"--chat-before {settings.chat_before}: the chat variant audits one --finetuned model")
    ft = next(iter(organisms.values()))
    tokens = adl.token_matrix(texts, base, ft, settings.n, settings.samples, chat_before=settings.chat_before)
    meta = adl.run_meta(None, settings.seed, settings.chat_before)
    try:
        compute_deltas(base, organisms, tokens, settings.delta_settings(), dirs, meta=meta, progress=progress)
    except OrganismsFailed as e:
        return dict(e.failures)
    return {}


def audits(
    base: Model,
    organisms: dict[str, Model],
    out: str | Path,
    *,
    texts,
    settings: AuditSettings = AuditSettings(),
    descriptions: dict[str, str | None] | None = None,
    finetune_texts: dict[str, list[str] | None] | None = None,
    encoder=None,
    grader=None,
    progress: bool = True,
    placebo_runs=(),
) -> dict[str, dict]:
    """`audit` of every organism (name -> loaded model) against `base` over the corpus `texts`, into
    `out`/NAME, the deltas in one pass; then `out`/organisms.json and organisms.html. `descriptions` and
    `finetune_texts` are per organism (name -> value; a missing name has none). Returns name -> summary;
    raises `AuditsFailed` after the others finished when an organism failed."""
    from adl_jax.experiments.organisms import cross_organism

    out = Path(out)
    descriptions, finetune_texts = descriptions or {}, finetune_texts or {}
    unknown = sorted((set(descriptions) | set(finetune_texts)) - set(organisms))
    if unknown:
        raise UsageError(f"data or description given for {', '.join(unknown)}, which is no organism of this audit")
    dirs = {name: out / name for name in organisms}
    with io.run_lock(out):  # organisms.json is this job's; each organism's directory is locked by its stages
        failures = deltas(base, organisms, dirs, texts=texts, settings=settings, progress=progress)
        summaries = {}
        for name, ft in organisms.items():
            if name in failures:
                continue
            try:
                summaries[name] = audit(
                    base,
                    ft,
                    dirs[name],
                    texts=texts,
                    settings=settings,
                    description=descriptions.get(name),
                    finetune_texts=finetune_texts.get(name),
                    encoder=encoder,
                    grader=grader,
                    progress=progress,
                    placebo_runs=placebo_runs,
                )
            except Exception as e:  # one organism's failure is reported with the others' at the end
                failures[name] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                if progress:
                    print(f"[audit] {name} failed: {failures[name]}", flush=True)
        if summaries:
            cross_organism(out, [name for name in organisms if name in summaries])
    if failures:
        raise AuditsFailed({name: failures[name] for name in organisms if name in failures}, summaries)
    return summaries
