"""The paper's search for the strongest steering alpha a coherence judge still passes.

A binary search on [low, high]; its 3-level lookahead (the 7 alphas of the next three levels) is one
batched generation instead of seven, since rows of a batch may carry different alphas. Searches that do not
wait on each other (every vector's first prompt; then every vector's other prompts) run in lockstep, one
generation and one judge call for all of them per lookahead: each search's texts are those it would sample
alone (its own keys), and a CPU decodes 112 rows at 2.2x the rows per second of 28.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from adl_jax.judging.verdicts import Judge, passes
from adl_jax.method.steer import STEERING_PROMPTS, Request, format_prompt, steered_batch
from adl_jax.models.load import Model


@dataclasses.dataclass(frozen=True)
class SteeringSettings:
    """Every number of the paper's steering protocol; `quick()` is a preset small enough for a CPU."""

    low: float = 0.0
    high: float = 100.0
    first_steps: int = 12  # binary-search steps on the first prompt
    other_steps: int = 6  # ... on the others, with upper bound 2x the first threshold
    lookahead: int = 3  # levels generated in one batched call (2**3 - 1 = 7 alphas)
    samples: int = 10  # per alpha
    new_tokens: int = 128
    temperature: float = 1.2
    pass_rate: float = 0.75  # share of judged samples that must be coherent
    final_samples: int = 5  # per prompt, for the final steered/unsteered generations
    final_tokens: int = 512
    final_temperature: float = 1.1

    @classmethod
    def quick(cls) -> SteeringSettings:
        """For a laptop CPU: 6 + 3 search steps on [0, 4], 4 samples of 48 tokens per alpha, short final
        samples. Text stays coherent only below alpha ~2 (the vector is already as long as the residual
        at alpha 1), so 6 steps on [0, 100] would never test an alpha under 1.56; on [0, 4] they resolve
        0.06, as the paper's 12 steps on [0, 100] resolve 0.02."""
        return cls(high=4.0, first_steps=6, other_steps=3, samples=4, new_tokens=48, final_samples=2, final_tokens=96)


@dataclasses.dataclass
class SearchStep:
    alpha: float
    passed: bool
    verdicts: list[str]
    texts: list[str]


@dataclasses.dataclass
class _Search:
    """One binary search for one (vector, prompt) on [lo, hi], as far as it has come."""

    prompt: str
    vector: np.ndarray
    lo: float
    hi: float
    steps: int
    key: jax.Array
    path: list[SearchStep] = dataclasses.field(default_factory=list)

    @property
    def left(self) -> int:
        return self.steps - len(self.path)


def _run(model: Model, searches: list[_Search], judge: Judge, settings: SteeringSettings, layer: int, bar) -> None:
    """Advance every search to its last step, `lookahead` levels per batched call of all unfinished ones;
    `bar` advances by the steps each call settles."""
    ids = {s.prompt: format_prompt(model.tokenizer, s.prompt) for s in searches}
    while active := [s for s in searches if s.left > 0]:
        levels = [min(settings.lookahead, s.left) for s in active]
        alphas = [_lookahead_alphas(s.lo, s.hi, n) for s, n in zip(active, levels)]
        requests = []
        for s, a in zip(active, alphas):
            s.key, sub = jax.random.split(s.key)
            requests.append(Request(ids[s.prompt], s.vector, a, sub))
        texts = steered_batch(
            model,
            requests,
            layer=layer,
            samples=settings.samples,
            new_tokens=settings.new_tokens,
            temperature=settings.temperature,
        )
        flat = [(s.prompt, x) for s, t in zip(active, texts) for per_alpha in t for x in per_alpha]
        judged = iter(judge([p for p, _ in flat], [x for _, x in flat]))  # one judge call for the whole batch
        for s, n, a, t in zip(active, levels, alphas, texts):
            by_alpha = {alpha: ([next(judged) for _ in tx], tx) for alpha, tx in zip(a, t)}
            for _ in range(n):  # walk the tree down the branch the verdicts choose
                mid = (s.lo + s.hi) / 2
                verdicts, tx = by_alpha[mid]
                passed = passes(verdicts, settings.pass_rate)
                s.path.append(SearchStep(mid, passed, verdicts, tx))
                s.lo, s.hi = (mid, s.hi) if passed else (s.lo, mid)
        bar.update(sum(levels))


def _lookahead_alphas(lo: float, hi: float, levels: int) -> list[float]:
    """Midpoints of the next `levels` levels of the binary-search tree below [lo, hi] (2**levels - 1)."""
    out, intervals = [], [(lo, hi)]
    for _ in range(levels):
        nxt = []
        for a, b in intervals:
            m = (a + b) / 2
            out.append(m)
            nxt += [(a, m), (m, b)]
        intervals = nxt
    return out


@dataclasses.dataclass
class AlphaSearch:
    alpha: float  # mean of the per-prompt thresholds
    thresholds: dict[str, float]
    paths: dict[str, list[SearchStep]]

    def to_json(self) -> dict:
        return {
            "alpha": self.alpha,
            "thresholds": self.thresholds,
            "paths": {p: [dataclasses.asdict(s) for s in path] for p, path in self.paths.items()},
        }


def find_alpha(
    model: Model,
    vector,
    judge: Judge,
    settings: SteeringSettings,
    *,
    layer: int,
    key,
    prompts: Sequence[str] = STEERING_PROMPTS,
    progress: bool = False,
    desc: str = "alpha search",
) -> AlphaSearch:
    """The paper's protocol: full search on the first prompt, shorter ones bounded by 2x its threshold.
    With `progress`, a bar counts search steps over all prompts (minutes per step on a CPU)."""
    (search,) = find_alphas(
        model, [vector], judge, settings, layer=layer, keys=[key], prompts=prompts, progress=progress, desc=desc
    )
    return search


def find_alphas(
    model: Model,
    vectors: Sequence,
    judge: Judge,
    settings: SteeringSettings,
    *,
    layer: int,
    keys: Sequence,
    prompts: Sequence[str] = STEERING_PROMPTS,
    progress: bool = False,
    desc: str = "alpha search",
) -> list[AlphaSearch]:
    """`find_alpha` for each vector with its key, the searches in lockstep: every vector's first prompt
    together, then all the other (vector, prompt) searches together. Each gives the `find_alpha` result of
    its vector alone, bar float rounding in the larger batches."""
    first, others = prompts[0], prompts[1:]
    total = len(vectors) * (settings.first_steps + settings.other_steps * len(others))
    bar = tqdm(total=total, unit="step", desc=desc, disable=not progress)
    subs = []  # each vector's key for each prompt, split in turn as one search after another would
    for key in keys:
        per_prompt = []
        for _ in prompts:
            key, sub = jax.random.split(key)
            per_prompt.append(sub)
        subs.append(per_prompt)
    vectors = [np.asarray(v, np.float32) for v in vectors]
    leads = [_Search(first, v, settings.low, settings.high, settings.first_steps, k[0]) for v, k in zip(vectors, subs)]
    _run(model, leads, judge, settings, layer, bar)
    # Each vector's other prompts search [low, 2x its first threshold]; none where the first found nothing.
    rest = [
        [_Search(p, v, settings.low, 2 * lead.lo, settings.other_steps, k) for p, k in zip(others, ks[1:])]
        for v, ks, lead in zip(vectors, subs, leads)
    ]
    skipped = [s for searches in rest for s in searches if s.hi <= settings.low]
    bar.update(sum(s.steps for s in skipped))
    _run(model, [s for searches in rest for s in searches if s.hi > settings.low], judge, settings, layer, bar)
    bar.close()
    out = []
    for lead, searches in zip(leads, rest):
        thresholds = {lead.prompt: lead.lo, **{s.prompt: s.lo for s in searches}}
        paths = {lead.prompt: lead.path, **{s.prompt: s.path for s in searches}}
        out.append(AlphaSearch(float(np.mean(list(thresholds.values()))), thresholds, paths))
    return out
