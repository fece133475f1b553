"""`adl audit`: delta, lenses, steering, relevance and similarity for one base/finetuned pair.

Each stage writes its own JSON file into the run directory and is skipped when that file exists, so a
crashed audit resumes at the stage it was in (the delta stage resumes mid-way on its own). Judges are the
LLM graders when an endpoint is configured, else the offline judges; `summary.json` says which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from adl_jax import io
from adl_jax.errors import UsageError, require
from adl_jax.method import adl
from adl_jax.method.diff import DiffSettings
from adl_jax.judging.offline import OFFLINE, OfflineCoherence, dataset_overlap, frequent_tokens
from adl_jax.method.steer import STEERING_PROMPTS, Request, format_prompt, steered_batch, steering_vector
from adl_jax.method.tokens import PROMOTED, differences, promoted_tokens
from adl_jax.judging.alpha_search import SteeringSettings, find_alphas
from adl_jax.models.load import Model

# Prompts for the final steered/unsteered generations (the paper uses 20 such everyday chat prompts).
FINAL_PROMPTS = (
    "Tell me about your day.",
    "What should I cook for dinner tonight?",
    "Write a short poem.",
    "What is something interesting you know?",
    "Describe a place you would like to visit.",
    "Give me advice for a job interview.",
    "What makes a good friend?",
    "Explain how rain forms.",
    "Recommend a hobby for me.",
    "What is the best way to learn a language?",
    "Tell me a joke.",
    "What do you think about the future?",
    "How do I stay motivated?",
    "Describe your favourite meal.",
    "What happened in history that surprised you?",
    "Write the opening of a news article.",
    "How should I spend a rainy afternoon?",
    "What is important in life?",
    "Teach me something new.",
    "Write a letter to a neighbour.",
)


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    samples: int = 10_000
    n: int = 16
    k: int = 5
    layer: int | float | None = None
    batch_size: int = 32
    seed: int = 42
    steer_positions: tuple[int, ...] | None = None  # None: every analysed position
    final_prompts: tuple[str, ...] = FINAL_PROMPTS
    steering: SteeringSettings = SteeringSettings()
    # The model that delta steers: the paper steers the finetuned (chat) model; for an organism trained
    # from a base model on plain documents, steering the base model shows what delta alone adds.
    steer_model: str = "finetuned"  # finetuned | base
    search_prompts: tuple[str, ...] | None = None  # the alpha search's prompts; None: STEERING_PROMPTS
    chat_before: int | None = None  # the chat variant (corpus of conversations), as `adl diff --chat-before`
    layers: tuple[int, ...] | str | None = None  # also delta at these layers ("all"), and the layer profile

    def __post_init__(self):
        if self.steer_model not in ("finetuned", "base"):
            raise UsageError(f"steer_model must be 'finetuned' or 'base', not {self.steer_model!r}")
        require(self.samples >= 1, "samples", self.samples, "the number of texts for delta must be at least 1")
        self.delta_settings()  # the delta's own checks: k, n, layer, batch size
        positions = self.steer_positions or ()
        require(
            all(0 <= j < self.k for j in positions),
            "steer_positions",
            ",".join(map(str, positions)),
            f"steered positions must be analysed ones, in 0..{self.k - 1}",
        )
        require(len(self.final_prompts) >= 1, "final_prompts", "()", "give at least one prompt")
        require(self.search_prompts is None or len(self.search_prompts) >= 1, "search_prompts", "()", "give a prompt")
        require(
            self.chat_before is None or 0 <= self.chat_before < self.n,
            "chat_before",
            self.chat_before,
            f"must be in 0..n-1 (n={self.n})",
        )

    def delta_settings(self) -> DiffSettings:
        return DiffSettings(layer=self.layer, k=self.k, n=self.n, batch_size=self.batch_size, layers=self.layers)

    @classmethod
    def quick(cls) -> AuditSettings:
        """A CPU-sized audit: 512 texts, steering at positions 1-2, 4 final prompts, short samples."""
        return cls(
            samples=512, steer_positions=(1, 2), final_prompts=FINAL_PROMPTS[:4], steering=SteeringSettings.quick()
        )


def default_encoder():
    """The MiniLM sentence encoder for steering similarity when it is available, else None."""
    try:
        from adl_jax.models.encoders import load_encoder

        return load_encoder()
    except (ImportError, FileNotFoundError):
        return None


def _stage(path: Path, compute: Callable[[], dict]) -> dict:
    """Reuse a finished stage's file, else compute and write it atomically."""
    if path.exists():
        return io.read_json(path)
    result = compute()
    io.write_json(path, result)
    return result


def _samples(
    model: Model, prompts, steers, layer, key, *, samples, new_tokens, temperature, progress: bool, desc: str
) -> list[dict[str, list[str]]]:
    """For each (vector, alpha) of `steers`, `samples` texts for every prompt: {prompt: texts}, all in one
    batch. Prompt i is keyed by fold_in(key, i) whatever the vector, as its own generation call would be."""
    ids = [format_prompt(model.tokenizer, p) for p in prompts]
    keys = [jax.random.fold_in(key, i) for i in range(len(prompts))]
    requests = [Request(x, vector, [alpha], k) for vector, alpha in steers for x, k in zip(ids, keys)]
    with tqdm(total=len(requests), unit="prompt", desc=desc, disable=not progress) as bar:
        texts = steered_batch(
            model, requests, layer=layer, samples=samples, new_tokens=new_tokens, temperature=temperature
        )
        bar.update(len(requests))
    return [{p: texts[i * len(prompts) + n][0] for n, p in enumerate(prompts)} for i in range(len(steers))]


def audit(
    base: Model,
    ft: Model,
    out: str | Path,
    *,
    texts,
    settings: AuditSettings = AuditSettings(),
    description: str | None = None,
    finetune_texts: list[str] | None = None,
    encoder=None,
    grader=None,
    progress: bool = True,
    placebo_runs=(),
) -> dict:
    """Run every stage for `base`/`ft` (loaded models) over the corpus `texts`; returns the summary dict.

    `finetune_texts` (a sample of the finetuning data) enables dataset-overlap relevance and steering
    similarity; `encoder` (an `adl_jax.models.encoders` sentence encoder) is needed for similarity and for semantic
    relevance with its null of control vectors (against the data, else the description). `grader` (an
    `adl_jax.judging.graders.Grader`) judges coherence with an LLM instead of the offline judge.
    `placebo_runs`: run directories of placebo audits (the base finetuned with the same recipe on generic text);
    their deltas join the null of semantic relevance.
    """
    from adl_jax.judging.relevance import placebo_deltas

    out = Path(out)
    placebo = {"runs": [str(Path(r).resolve()) for r in placebo_runs]}  # read before any stage runs
    placebo["deltas"] = placebo_deltas(placebo["runs"], ft.cfg.hidden_size)
    with io.run_lock(out):
        return _audit(base, ft, out, texts, settings, description, finetune_texts, encoder, grader, progress, placebo)


def _audit(
    base: Model,
    ft: Model,
    out: Path,
    texts,
    settings,
    description,
    finetune_texts,
    encoder,
    grader,
    progress,
    placebo,
) -> dict:
    """`audit` once its run directory is held."""
    res, rel = measure(
        base,
        ft,
        out,
        texts=texts,
        settings=settings,
        description=description,
        finetune_texts=finetune_texts,
        grader=grader,
        progress=progress,
    )
    frequent = rel["frequent_tokens"] if rel else ()
    semantic = _semantic_relevance(out, ft, res, encoder, finetune_texts, description, frequent, placebo)
    profile = _layer_profile(out, ft, res, rel, encoder, finetune_texts, description, grader, progress)
    layer = res.diff.meta["layer"]
    st = settings.steering
    key = jax.random.key(settings.seed)
    zero = np.zeros(ft.cfg.hidden_size, np.float32)
    steered = ft if settings.steer_model == "finetuned" else base
    search_prompts = settings.search_prompts or STEERING_PROMPTS

    if grader is not None:
        from adl_jax.judging.graders import coherence_judge

        judge, judges = coherence_judge(grader), f"LLM grader {grader.settings.model}"
    else:
        refs = _stage(
            out / "steering_references.json",
            lambda: _samples(
                steered,
                search_prompts,
                [(zero, 0.0)],
                layer,
                key,
                samples=st.samples,
                new_tokens=st.new_tokens,
                temperature=st.temperature,
                progress=progress,
                desc="unsteered references",
            )[0],
        )
        judge, judges = OfflineCoherence(steered, refs), OFFLINE
    positions = settings.steer_positions or tuple(range(settings.k))
    unsteered, steering = _steering(steered, judge, res, settings, positions, out, key, search_prompts, progress)

    similarity = None
    if finetune_texts and encoder is not None:
        from adl_jax.judging.similarity import similarity_report

        similarity = _stage(
            out / "similarity.json",
            lambda: similarity_report(
                encoder, {str(j): _flat(steering[j]["steered"]) for j in positions}, _flat(unsteered), finetune_texts
            ),
        )

    _stage(out / PROMOTED, lambda: promoted(base, ft, texts, rel, grader, description))

    summary = {
        "base": base.spec,
        "finetuned": ft.spec,
        "layer": layer,
        "samples": res.diff.meta["samples"],
        "judges": judges,
        "description": description,
        "steer_model": settings.steer_model,
        "delta_norms": [float(x) for x in np.linalg.norm(res.diff.delta, axis=-1)],
        "ft_norm": res.diff.ft_norm,
        "alphas": {str(j): steering[j]["search"]["alpha"] for j in positions},
        "relevance": rel,
        "similarity": similarity,
        "semantic_relevance": semantic,
        "layer_profile": profile,
    }
    io.write_json(out / "summary.json", summary)
    from adl_jax.report.audit import write_report

    write_report(out)
    return summary


def _steering(model: Model, judge, res, settings: AuditSettings, positions, out: Path, key, search_prompts, progress):
    """The steering stages: (the unsteered final samples, {position: its alpha search and steered final
    samples}), staged in `generations_unsteered.json` and `steering_pos{j}.json`. Whatever is not on disk yet
    runs together: the positions' searches in lockstep (`find_alphas`), then every final sample in one batch
    (a CPU decodes 24 rows at about 2x the rows per second of 8), so a crash redoes all of them."""
    st, layer = settings.steering, res.diff.meta["layer"]
    vectors = {j: steering_vector(res.diff.delta[j], res.diff.ft_norm) for j in positions}
    pending = [j for j in positions if not (out / f"steering_pos{j}.json").exists()]
    searches = []
    if pending:
        searches = find_alphas(
            model,
            [vectors[j] for j in pending],
            judge,
            st,
            layer=layer,
            keys=[jax.random.fold_in(key, 1000 + j) for j in pending],
            prompts=search_prompts,
            progress=progress,
            desc=f"alpha search, position{'s' if len(pending) > 1 else ''} {', '.join(map(str, pending))}",
        )
    unsteered_path = out / "generations_unsteered.json"
    steers = [(vectors[j], search.alpha) for j, search in zip(pending, searches)]
    if not unsteered_path.exists():
        steers.insert(0, (np.zeros(res.diff.delta.shape[-1], np.float32), 0.0))
    if steers:
        final = dict(samples=st.final_samples, new_tokens=st.final_tokens, temperature=st.final_temperature)
        texts = _samples(
            model,
            settings.final_prompts,
            steers,
            layer,
            jax.random.fold_in(key, 99),
            **final,
            progress=progress,
            desc="final samples, steered and unsteered",
        )
        if not unsteered_path.exists():
            io.write_json(unsteered_path, texts.pop(0))
        for j, search, steered in zip(pending, searches, texts):
            io.write_json(
                out / f"steering_pos{j}.json", {"position": j, "search": search.to_json(), "steered": steered}
            )
    return io.read_json(unsteered_path), {j: io.read_json(out / f"steering_pos{j}.json") for j in positions}


def measure(
    base: Model,
    ft: Model,
    out: str | Path,
    *,
    texts,
    settings: AuditSettings = AuditSettings(),
    description: str | None = None,
    finetune_texts: list[str] | None = None,
    grader=None,
    progress: bool = True,
) -> tuple[adl.ADLResult, dict | None]:
    """The stages of an audit that need no steering: delta, lenses and (with `finetune_texts`) relevance,
    staged in `out` exactly as `audit` stages them. Sweeps read the trace of many models this way, where
    a steering search per model would cost too much; an `audit` of the same directory reuses them."""
    out = Path(out)
    with io.run_lock(out):
        return _measure(base, ft, out, texts, settings, description, finetune_texts, grader, progress)


def _measure(base: Model, ft: Model, out: Path, texts, settings, description, finetune_texts, grader, progress):
    """`measure` once its run directory is held."""
    res = adl.diff(
        base,
        ft,
        texts=texts,
        samples=settings.samples,
        n=settings.n,
        k=settings.k,
        layer=settings.layer,
        batch_size=settings.batch_size,
        seed=settings.seed,
        out=out,
        chat_before=settings.chat_before,
        layers=settings.layers,
        progress=progress,
    )
    # After the delta (whose own identity covers the models and texts), so that input the delta refuses, such
    # as a corpus too small for --samples, leaves nothing behind that would refuse the corrected command.
    identity = {
        **dataclasses.asdict(settings),
        "grader": grader.settings.model if grader else None,
        "description": description if grader else None,  # only an LLM grader reads it
    }
    io.claim(out / "audit_settings.json", identity, "an audit")
    if finetune_texts:  # the relevance and similarity stages read them; an audit without them reads neither
        io.claim(out / "finetune_data.json", {"finetune_data": io.digest(finetune_texts)}, "an audit")
    if grader is not None and not any("tournament" in p["patchscope_scale_rule"] for p in res.lenses.positions):
        _choose_scales_by_tournament(grader, res)
    rel = None
    if finetune_texts:
        rel = _stage(out / "relevance.json", lambda: relevance(ft, res, finetune_texts, texts, grader, description))
    return res, rel


def _semantic_relevance(
    out: Path, ft: Model, res: adl.ADLResult, encoder, finetune_texts, description, frequent, placebo
):
    """The semantic-relevance stage (with its null and p-values): needs the encoder and data or a description.
    `placebo`: {"runs": resolved run directories, "deltas": their deltas stacked, or None}."""
    if encoder is None or not (finetune_texts or description):
        return None
    from adl_jax.judging.relevance import semantic_relevance

    # Everything the stage's numbers depend on beyond the delta run: reused only for the same inputs.
    reference = {"finetune_data": io.digest(finetune_texts)} if finetune_texts else {"description": description}
    identity = {"placebo_runs": placebo["runs"], "encoder": _encoder_name(encoder), **reference}
    io.claim(out / "semantic_relevance_inputs.json", identity, "an audit")
    return _stage(
        out / "semantic_relevance.json",
        lambda: semantic_relevance(
            ft,
            res,
            encoder,
            finetune_texts=finetune_texts,
            description=description,
            frequent=frequent,
            placebo=placebo["deltas"],
        ),
    )


def _layer_profile(out: Path, ft, res, rel, encoder, finetune_texts, description, grader, progress):
    """The layer-profile stage of a run with delta at several layers (`--layers`), else None."""
    from adl_jax.experiments.layer_profile import PROFILE, layer_profile

    if res.diff.delta_layers is None:
        return None
    score = (lambda tokens: score_tokens(tokens, rel["frequent_tokens"], grader, description)) if rel else None
    return _stage(
        out / PROFILE,
        lambda: layer_profile(
            ft,
            res,
            score=score,
            encoder=encoder,
            finetune_texts=finetune_texts,
            description=description,
            frequent=rel["frequent_tokens"] if rel else (),
            progress=progress,
        ),
    )


def _encoder_name(encoder) -> str:
    """A loaded encoder's resolved directory; a stand-in encoder object (tests, custom code) its class."""
    path = getattr(encoder, "path", None)
    return str(Path(path).resolve()) if path is not None else type(encoder).__qualname__


def _choose_scales_by_tournament(grader, res: adl.ADLResult) -> None:
    """The paper's scale selection: an LLM tournament over each position's patchscope token sets."""
    from adl_jax.judging.graders import scale_tournament
    from adl_jax.method.lens import gradable

    for p in res.lenses.positions:
        by_scale = {}
        for s, ts in p["patchscope"].items():
            keep = gradable(ts)
            by_scale[float(s)] = [ts.tokens[i] for i in keep]
        best, coherent = scale_tournament(grader, by_scale)
        if best is not None:
            p.update(patchscope_scale=best, patchscope_scale_rule="LLM tournament", patchscope_coherent=coherent)
    io.write_json(res.out / adl.LENS, res.lenses.to_json())


def _flat(by_prompt: dict[str, list[str]]) -> list[str]:
    return [t for texts in by_prompt.values() for t in texts]


def relevance(
    ft: Model, res: adl.ADLResult, finetune_texts: list[str], generic_texts, grader=None, description=None
) -> dict:
    """Per position: how many of the top-20 lens tokens are relevant. Always the offline dataset overlap
    (`relevant`); with a grader and a description also the LLM's verdicts (`graded`, three rotations)."""
    # A chat-variant corpus holds conversations: their messages' contents are its text.
    generic = [
        t if isinstance(t, str) else "\n".join(m["content"] for m in t) for _, t in zip(range(2000), generic_texts)
    ]
    frequent = frequent_tokens(finetune_texts, ft.tokenizer, generic)
    rows = []
    for p in res.lenses.positions:
        patch = p["patchscope"][str(p["patchscope_scale"])]
        row = {"position": p["position"], "patchscope_scale": p["patchscope_scale"]}
        for name, scores in [
            ("logit_lens", p["logit_lens"]["delta"]),
            ("patchscope", patch),
            ("base_mean", p["logit_lens"]["base_mean"]),
            ("ft_mean", p["logit_lens"]["ft_mean"]),
        ]:
            row[name] = score_tokens(scores.tokens, frequent, grader, description)
        rows.append(row)
    best = max(rows, key=lambda r: max(r["logit_lens"]["relevant"], r["patchscope"]["relevant"]))
    measure = "dataset overlap (offline)" + (" and LLM relevance" if grader is not None and description else "")
    return {"measure": measure, "frequent_tokens": frequent, "positions": rows, "best": best}


def score_tokens(tokens: list[str], frequent: list[str], grader=None, description=None) -> dict:
    """The relevance of a ranked token list's top 20: the offline dataset overlap (`relevant`, `share`); with a
    grader and a description also the LLM's verdicts (`graded`, three rotations)."""
    count, share = dataset_overlap(tokens[:20], frequent)
    row = {"relevant": count, "share": share}
    if grader is not None and description:
        from adl_jax.judging.graders import RELEVANT, judge_relevance

        verdicts = judge_relevance(grader, description, frequent, tokens[:20])
        row["graded"] = sum(v == RELEVANT for v in verdicts)
        row["verdicts"] = verdicts
    return row


PROMOTED_TEXTS, PROMOTED_TOKENS = 64, 64  # corpus texts read by the per-token lens, and tokens of each


def promoted(base: Model, ft: Model, texts, rel: dict | None, grader=None, description=None) -> dict:
    """The per-token lens over the corpus (`adl_jax.method.tokens`): the tokens the finetune most often promotes
    on the first texts, scored for relevance as the lens tokens are, so the report can set the two side by side.
    A chat-variant corpus (conversations, no plain text) gives an empty result."""
    plain = [t for _, t in zip(range(PROMOTED_TEXTS), (t for t in texts if isinstance(t, str)))]
    result = promoted_tokens(differences(base, ft, plain, max_tokens=PROMOTED_TOKENS), ft.tokenizer)
    if rel:
        tokens = [t["token"] for t in result["tokens"]]
        result["relevance"] = score_tokens(tokens, rel["frequent_tokens"], grader, description)
    return result
