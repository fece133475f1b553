"""The paper's search for the strongest steering alpha a coherence judge still passes.

A binary search on [low, high]; its 3-level lookahead (the 7 alphas of the next three levels) is one
batched generation instead of seven, since rows of a batch may carry different alphas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from adl_jax.judging.verdicts import Judge, passes
from adl_jax.method.steer import STEERING_PROMPTS, format_prompt, steered_samples
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


def search_alpha(
    model: Model,
    prompt: str,
    vector,
    judge: Judge,
    settings: SteeringSettings,
    *,
    layer: int,
    steps: int,
    high: float,
    key,
    bar: tqdm | None = None,
) -> tuple[float, list[SearchStep]]:
    """Binary search on [low, high] for the largest coherent alpha, `lookahead` levels per batched call;
    `bar` advances by the steps each call settles."""
    lo, hi = settings.low, high
    ids = format_prompt(model.tokenizer, prompt)
    path: list[SearchStep] = []
    done = 0
    while done < steps:
        levels = min(settings.lookahead, steps - done)
        alphas = _lookahead_alphas(lo, hi, levels)
        key, sub = jax.random.split(key)
        texts = steered_samples(
            model,
            ids,
            vector,
            alphas,
            layer=layer,
            samples=settings.samples,
            new_tokens=settings.new_tokens,
            temperature=settings.temperature,
            key=sub,
        )
        verdicts = [judge([prompt] * len(t), t) for t in texts]
        outcome = {a: passes(v, settings.pass_rate) for a, v in zip(alphas, verdicts)}
        by_alpha = dict(zip(alphas, zip(verdicts, texts)))
        for _ in range(levels):  # walk the tree down the branch the verdicts choose
            mid = (lo + hi) / 2
            path.append(SearchStep(mid, outcome[mid], *by_alpha[mid]))
            lo, hi = (mid, hi) if outcome[mid] else (lo, mid)
        done += levels
        if bar is not None:
            bar.update(levels)
    return lo, path


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
    thresholds, paths = {}, {}
    total = settings.first_steps + settings.other_steps * (len(prompts) - 1)
    bar = tqdm(total=total, unit="step", desc=desc, disable=not progress)
    for i, prompt in enumerate(prompts):
        steps = settings.first_steps if i == 0 else settings.other_steps
        high = settings.high if i == 0 else 2 * thresholds[prompts[0]]
        key, sub = jax.random.split(key)
        if high <= settings.low:  # the first prompt found nothing coherent: nothing to search
            thresholds[prompt], paths[prompt] = settings.low, []
            bar.update(steps)
            continue
        thresholds[prompt], paths[prompt] = search_alpha(
            model, prompt, vector, judge, settings, layer=layer, steps=steps, high=high, key=sub, bar=bar
        )
    bar.close()
    return AlphaSearch(float(np.mean(list(thresholds.values()))), thresholds, paths)
