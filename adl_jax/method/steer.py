"""Steering with delta and the paper's search for the strongest still-coherent alpha.

The steering vector of position j is unit(delta_j) * ft_norm; `alpha * vector` is added after the read
layer at every position, prompt and generated, through `generate`'s interventions. Rows of a batch may
carry different alphas, so the binary search's 3-level lookahead (the 7 alphas of the next three levels)
is one batched generation instead of seven.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
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
    rows = np.repeat(np.asarray(alphas, np.float32), samples)[:, None] * vector[None, :]
    edit = Intervention(layer=layer, mode="add", vector=jnp.asarray(rows))
    gen = generate(
        model.params,
        model.cfg,
        [prompt_ids] * len(rows),
        max_new_tokens=new_tokens,
        key=key,
        temperature=temperature,
        interventions=(edit,),
    )
    texts = [
        model.tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(gen.tokens.tolist(), gen.lengths.tolist())
    ]
    return [texts[i * samples : (i + 1) * samples] for i in range(len(alphas))]
