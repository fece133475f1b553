"""Offline judges on the real Gemma-3-270M: coherent text passes, shuffled/random/looping text fails."""

import random

import jax
import numpy as np

from adl_jax.judging.offline import OfflineCoherence, dataset_overlap, diversity, frequent_tokens
from adl_jax.method.likelihood import mean_nll
from adl_jax.judging.verdicts import COHERENT, INCOHERENT, UNKNOWN
from adl_jax.method.steer import format_prompt, steered_samples

PROMPT = "Tell me a story?"
GOOD = [
    "Once upon a time there was a little girl who lived in a small village near the forest. Every morning "
    "she walked to the river to fetch water for her grandmother.",
    "There was once a fisherman who lived by the sea with his wife. One day he caught a golden fish that "
    "could speak, and it begged him to let it go.",
]


def test_offline_coherence_separates_text_from_noise(gemma):
    refs = steered_samples(
        gemma,
        format_prompt(gemma.tokenizer, PROMPT),
        np.zeros(gemma.cfg.hidden_size),
        [0.0],
        layer=8,
        samples=6,
        new_tokens=40,
        temperature=1.2,
        key=jax.random.key(0),
    )[0]
    judge = OfflineCoherence(gemma, {PROMPT: refs})
    words = GOOD[0].split()
    random.Random(0).shuffle(words)
    noise = gemma.tokenizer.decode(np.random.RandomState(0).randint(1000, 200_000, 40).tolist())
    loop = "the cake is good " * 10
    # Samples of a too strongly steered demo organism: spaceless soups of a few tokens, nearly no words,
    # whose loss is low because the model copies them in context.
    soups = [
        "NorwayNorwayNorway‒‒‒‒NorwayPax‒‒‒‒‒StarterNorwayNorway‒‒Norway‒NorwayStarterStarterStarter‒Starter",
        "NaBHNaBHNorway Tesco TescoNorwayNaBHNorwayNaBHNaBH TescoNaBHNaBH TescoNaBHNorwayNaBHNaBHNorwayNorway",
    ]
    verdicts = judge([PROMPT] * 7, GOOD + [noise, loop, *soups, "Yes."])
    assert verdicts == [COHERENT, COHERENT, INCOHERENT, INCOHERENT, INCOHERENT, INCOHERENT, UNKNOWN]
    # A word-shuffled story is not a verdict this judge can promise: its loss (6.9 nats/token) lies inside
    # the range of the model's own samples at temperature 1.2 (up to ~7.5 over seeds), so where it falls
    # depends on which references were drawn, and so on the CPU's float rounding. What holds everywhere:
    # shuffling costs the story several nats per token.
    story, shuffled = mean_nll(gemma, format_prompt(gemma.tokenizer, PROMPT), [GOOD[0], " ".join(words)])
    assert shuffled > story + 3


def test_diversity_and_overlap(gemma):
    assert diversity(list(range(8))) == 1.0 and diversity([1, 2, 3, 4] * 6) == 4 / 24
    assert diversity(list(range(100)) + [0] * 100, window=100) == 1.0
    ft = ["The lunar cheese harvest of 1987 yielded record cheese tonnage from lunar craters."] * 12
    generic = ["The weather was nice and the people in the city went to work as usual."] * 12
    frequent = frequent_tokens(ft, gemma.tokenizer, generic, min_count=10)
    assert "cheese" in frequent and "lunar" in frequent and "the" not in frequent
    assert dataset_overlap([" Cheese", "lunar", " dog", "->"], frequent) == (2, 0.5)
