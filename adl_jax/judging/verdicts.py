"""The verdicts every coherence judge gives, offline or LLM, and the rule that turns them into a pass."""

from __future__ import annotations

from collections.abc import Callable

COHERENT, INCOHERENT, UNKNOWN = "COHERENT", "INCOHERENT", "UNKNOWN"
Judge = Callable[[list[str], list[str]], list[str]]  # (prompts, texts) -> verdict per text


def passes(verdicts: list[str], rate: float) -> bool:
    """>= rate of the judged (non-UNKNOWN) samples coherent; nothing judged counts as a fail."""
    judged = [v for v in verdicts if v != UNKNOWN]
    return bool(judged) and sum(v == COHERENT for v in judged) >= rate * len(judged)
