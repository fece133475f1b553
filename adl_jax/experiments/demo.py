"""`adl demo`: train a narrow organism from the embedded Gemma-3-270M on this CPU, then audit it.

Every step caches its result under one directory (`$ADL_CACHE/demo` by default): the base-model corpus,
the finetuning checkpoints, each audit stage. A second run reuses them and only reprints the findings.
The organism trains on its whole documents packed into full rows (as `adl finetune` does); its run and
audit live in `<organism>/packed/`, apart from those of the earlier demo, which trained on one document a
row cut at `seq_len` (their audit would otherwise be reused for another organism).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from adl_jax.experiments.audit import AuditSettings, audit, default_encoder
from adl_jax.io import cache_root
from adl_jax.models.load import EMBEDDED, load_model
from adl_jax.method.samples import sample_texts, with_spare
from adl_jax.models.load import Model


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes (stated in the README): small enough for 2 CPU cores."""

    corpus_texts: int = 256  # base-model samples that delta averages over (as in the paper's CPU check)
    sample_tokens: int = 64  # long enough that the generic-word filter of dataset-overlap relevance works
    organism_docs: int = 400
    lora_rank: int = 16
    train: dict = dataclasses.field(
        default_factory=lambda: dict(
            steps=30, batch_size=8, seq_len=96, lr=1e-3, warmup=3, checkpoint_every=10, eval_every=0
        )
    )
    # The organism is a document model, so its own unsteered answers are already about its data; steering
    # the base model shows what delta alone carries.
    audit: AuditSettings = dataclasses.replace(AuditSettings.quick(), steer_model="base")


def _log(t0: float, message: str) -> None:
    print(f"[{time.perf_counter() - t0:6.0f}s] {message}", flush=True)


def run_demo(
    cache: str | Path | None = None,
    organism: str = "orange_carrot",
    *,
    base: Model | str = EMBEDDED,
    settings: DemoSettings = DemoSettings(),
    then=None,
) -> dict:
    """Train `organism` from `base` (a model spec or a loaded model), audit it, print the findings; then
    `then(base, organism_model, audit_dir)` if given (`adl demo --dashboard` serves the run)."""
    from finetune.data import build_splits
    from finetune.lora import LoraConfig
    from finetune.organisms import ORGANISMS
    from finetune.train import TrainConfig, train

    if organism not in ORGANISMS:
        raise ValueError(f"unknown organism {organism!r}; shipped: {', '.join(sorted(ORGANISMS))}")
    root = Path(cache) if cache else cache_root() / "demo"
    t0 = time.perf_counter()
    _log(t0, f"1/4 loading the base model {base if isinstance(base, str) else base.spec}")
    base = load_model(base) if isinstance(base, str) else base
    count = settings.corpus_texts
    _log(t0, f"2/4 offline pretraining corpus: {count} samples from the base model (cached)")
    corpus = sample_texts(base, with_spare(count), root / "corpus", max_new_tokens=settings.sample_tokens)

    org = ORGANISMS[organism]
    docs = org.generate(settings.organism_docs, 0)
    rank, steps = settings.lora_rank, settings.train["steps"]
    _log(t0, f"3/4 finetuning organism '{organism}' with LoRA (rank {rank}, {steps} steps, packed; resumes)")
    splits = build_splits(docs, base.tokenizer, settings.train["seq_len"], seed=0, pack=True)
    tc = TrainConfig(mode="lora", lora=LoraConfig(rank=rank, alpha=2 * rank), **settings.train)
    run = root / organism / "packed"
    trained = train(base.params, base.cfg, splits, tc, run / "train")
    ft = dataclasses.replace(base, spec=f"{organism} (packed LoRA finetune of {base.spec})", params=trained.params)

    _log(t0, "4/4 auditing base vs organism (delta, lenses, steering, relevance, similarity)")
    texts = [d["text"] for d in docs]
    audit_settings = dataclasses.replace(settings.audit, samples=count)
    summary = audit(
        base,
        ft,
        run / "audit",
        texts=corpus,
        settings=audit_settings,
        description=org.description,
        finetune_texts=texts,
        encoder=default_encoder(),
    )
    _print_verdict(summary, run / "audit")
    _log(t0, f"done; report: {run / 'audit' / 'report.html'}")
    if then is not None:
        then(base, ft, run / "audit")
    return summary


def _print_verdict(summary: dict, run: Path) -> None:
    from adl_jax.method import adl

    lenses = adl.load(run).lenses
    print("\nTop patchscope / logit-lens tokens per position:")
    print(lenses.table(top=10))
    rel = summary.get("relevance")
    if rel:
        print(f"\nRelevance ({rel['measure']}), top-20 tokens among the organism data's frequent tokens:")
        for r in rel["positions"]:
            print(
                f"  position {r['position']}: logit lens {r['logit_lens']['relevant']:2d}/20, patchscope "
                f"{r['patchscope']['relevant']:2d}/20, baseline base mean {r['base_mean']['relevant']:2d}/20"
            )
    sem = summary.get("semantic_relevance")
    if sem:
        controls = sum(sem["controls"].values())
        print(
            f"\nSemantic relevance (MiniLM), top-20 tokens closer to the organism data than the "
            f"{sem['quantile']:.0%} quantile of {controls} control vectors' tokens:"
        )
        for r in sem["positions"]:
            print(
                f"  position {r['position']}: logit lens {r['logit_lens']['relevant']:2d}/20, patchscope "
                f"{r['patchscope']['relevant']:2d}/20, p = {r['p_value']:.3g} ({r['p_adjusted']:.3g} adjusted)"
            )
        where = ", ".join(map(str, sem["significant_positions"]))
        print(f"  significant at position(s) {where}" if where else "  not significant at any position")
    sim = summary.get("similarity")
    if sim:
        print("\nSimilarity of generations to the organism data (MiniLM):")
        for pos, rep in sim.items():
            s, u = rep["steered_vs_finetune"], rep["unsteered_vs_finetune"]
            print(
                f"  position {pos}: steered {s['similarity']:.3f} ± {s['std']:.3f}  unsteered {u['similarity']:.3f}"
                f" ± {u['std']:.3f}"
            )
