"""Offline judges, for when no LLM grader endpoint is configured. Every output they feed is labelled
"offline" so nobody mistakes them for the paper's LLM graders.

Coherence: a text is judged by the unsteered model itself. Its mean per-token loss must stay within the
range of the unsteered model's own samples for the same prompt, and it must not be a degenerate loop
(repetition makes loss *low*, so it needs its own check).
Relevance as dataset overlap: the share of lens tokens among the finetuning data's most frequent
non-generic tokens.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from adl_jax.method.likelihood import continuation_nll
from adl_jax.judging.verdicts import COHERENT, INCOHERENT, UNKNOWN
from adl_jax.method.steer import format_prompt
from adl_jax.models.load import Model

OFFLINE = "offline"


def diversity(tokens, window: int = 64) -> float:
    """Share of distinct tokens among the first `window`: low for loops and for token soups that cycle a
    few tokens, whose loss can still be low because the model copies them in context."""
    head = list(tokens[:window])
    return len(set(head)) / len(head) if head else 0.0


class OfflineCoherence:
    """Judge texts against the unsteered model's own samples for the same prompt.

    A text is INCOHERENT when its loss exceeds the reference samples' 90th percentile by more than
    `margin` nats per token, or when its token diversity is below `min_diversity` times the references'
    10th percentile; UNKNOWN when it has fewer than `min_tokens` tokens (nothing to judge).
    """

    name = OFFLINE

    def __init__(
        self,
        model: Model,
        references: dict[str, list[str]],
        margin: float = 1.0,
        min_diversity: float = 0.5,
        min_tokens: int = 3,
    ):
        self.model, self.min_tokens = model, min_tokens
        prompts = [p for p, refs in references.items() for _ in refs]
        ids = {p: format_prompt(model.tokenizer, p) for p in references}
        losses = continuation_nll(model, [ids[p] for p in prompts], [t for refs in references.values() for t in refs])
        self.limits = {p: float(np.quantile(losses[np.array(prompts) == p], 0.9)) + margin for p in references}
        self.min_diversity = {
            p: min_diversity * float(np.quantile([diversity(self._ids(t)) for t in refs], 0.1))
            for p, refs in references.items()
        }

    def _ids(self, text: str) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, prompts: list[str], texts: list[str]) -> list[str]:
        unknown = sorted(set(prompts) - set(self.limits))
        if unknown:
            raise ValueError(f"the offline coherence judge has no references for the prompt(s) {unknown}")
        ids = {p: format_prompt(self.model.tokenizer, p) for p in set(prompts)}
        losses = continuation_nll(self.model, [ids[p] for p in prompts], texts)
        out = []
        for prompt, text, loss in zip(prompts, texts, losses):
            tokens = self._ids(text)
            if len(tokens) < self.min_tokens:
                out.append(UNKNOWN)
            elif loss > self.limits[prompt] or diversity(tokens) < self.min_diversity[prompt]:
                out.append(INCOHERENT)
            else:
                out.append(COHERENT)
        return out


_WORD = re.compile(r"(?=.*[^\W\d_])\w{3,}")  # 3+ word characters, one a letter: no punctuation, numbers, fragments


def normalise(token: str) -> str:
    return token.strip().lower()


def frequent_tokens(
    texts: list[str], tokenizer, generic_texts: list[str], top: int = 100, min_count: int = 10, generic_top: int = 1000
) -> list[str]:
    """The `top` most frequent word tokens of `texts` (count >= min_count) that are not generic, i.e. not
    among the `generic_top` most frequent tokens of `generic_texts` (pretraining-like text)."""

    def counts(ts):
        c = Counter()
        for ids in tokenizer(list(ts), add_special_tokens=False)["input_ids"]:
            c.update(normalise(tokenizer.decode([i])) for i in ids)
        return Counter({t: n for t, n in c.items() if _WORD.fullmatch(t)})

    generic = {t for t, _ in counts(generic_texts).most_common(generic_top)}
    return [t for t, n in counts(texts).most_common() if n >= min_count and t not in generic][:top]


def dataset_overlap(tokens: list[str], frequent: list[str]) -> tuple[int, float]:
    """(count, share) of `tokens` whose normalised form is among the frequent dataset tokens."""
    freq = set(frequent)
    hits = sum(normalise(t) in freq for t in tokens)
    return hits, hits / max(len(tokens), 1)
