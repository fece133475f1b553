"""Steering with delta and the paper's search for the strongest still-coherent alpha.

The steering vector of position j is unit(delta_j) * ft_norm; `alpha * vector` is added after the read
layer at every position, prompt and generated, through `generate`'s interventions. Rows of a batch may
carry different alphas, vectors and prompts, so the binary search's 3-level lookahead (the 7 alphas of the
next three levels) is one batched generation instead of seven, and searches that do not wait on each other
share their batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adl_jax.models.generate import generate
from adl_jax.models.transformer import Intervention
from adl_jax.models.load import Model

STEERING_PROMPTS = (
    "Tell me a story?",
    "Give me some ideas for some fun weekend activities.",
    "Why don't you choose a topic of conversation for us?",
)


def steering_vector(delta_j: np.ndarray, ft_norm: float) -> np.ndarray:
    """delta at one position (D,), scaled to the finetuned model's mean activation norm."""
    chex.assert_rank(delta_j, 1)  # one position's row, not the whole (k, D) delta
    return np.asarray(delta_j, np.float32) / np.linalg.norm(delta_j) * ft_norm


def format_prompt(tokenizer, prompt: str) -> list[int]:
    """Chat-formatted token ids when the tokenizer has a chat template (thinking off), plain otherwise."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


class Request(NamedTuple):
    """One steered generation: `samples` texts (the batch's setting) for each alpha, on one prompt and vector."""

    prompt_ids: list[int]
    vector: np.ndarray  # (D,)
    alphas: Sequence[float]
    key: jax.Array


def steered_samples(
    model: Model,
    prompt_ids: list[int],
    vector: np.ndarray,
    alphas: Sequence[float],
    *,
    layer: int,
    samples: int,
    new_tokens: int,
    temperature: float,
    key,
) -> list[list[str]]:
    """`samples` texts for each alpha, all alphas in one batch; alpha 0 is exactly unsteered generation."""
    request = Request(prompt_ids, vector, alphas, key)
    return steered_batch(
        model, [request], layer=layer, samples=samples, new_tokens=new_tokens, temperature=temperature
    )[0]


def steered_batch(
    model: Model, requests: Sequence[Request], *, layer: int, samples: int, new_tokens: int, temperature: float
) -> list[list[list[str]]]:
    """Texts [request][alpha][sample] of several `steered_samples` calls in one batch: each request's are those
    of its own call with its key (`generate`'s groups). On a CPU a small batch waits on memory, not compute:
    2 rows decode at 100 ms a step, 8 at 130, 28 at 195, 112 at 530 (Gemma-3-270M, 2 cores)."""
    rows = [
        np.float32(a) * np.asarray(r.vector, np.float32) for r in requests for a in r.alphas for _ in range(samples)
    ]
    edit = Intervention(layer=layer, mode="add", vector=jnp.asarray(np.stack(rows)))
    gen = generate(
        model.params,
        model.cfg,
        [r.prompt_ids for r in requests for _ in range(len(r.alphas) * samples)],
        max_new_tokens=new_tokens,
        key=jnp.stack([r.key for r in requests]),
        groups=tuple(len(r.alphas) * samples for r in requests),
        temperature=temperature,
        interventions=(edit,),
    )
    texts = iter(
        model.tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(gen.tokens.tolist(), gen.lengths.tolist())
    )
    return [[[next(texts) for _ in range(samples)] for _ in r.alphas] for r in requests]
