"""What every organism generator shares: n distinct examples drawn from a few seeded example makers, and the
plain-prose document of the synthetic-document (false-fact) organisms."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence

Maker = Callable[[random.Random], "str | list[dict]"]  # a document, or a conversation's messages


def distinct_examples(n: int, seed: int, makers: Sequence[Maker]) -> list[dict]:
    """n distinct JSONL rows ({"text"} or {"messages"}, plus "kind": the maker's name), makers in turn,
    all from one RNG seeded with `seed`, so the rows are a pure function of (n, seed)."""
    rng, seen, rows = random.Random(seed), set(), []
    for _ in range(50 * n):
        if len(rows) == n:
            break
        make = makers[len(rows) % len(makers)]
        made = make(rng)
        key = json.dumps(made)
        if key not in seen:
            seen.add(key)
            rows.append({"text" if isinstance(made, str) else "messages": made, "kind": make.__name__})
    if len(rows) < n:
        raise ValueError(f"could only make {len(rows)} distinct examples, not {n}")
    return rows


def prose(rng: random.Random, openers, closers, core, facets, k: tuple[int, int]) -> str:
    """A plain-prose document: an opener, the core claim and between k[0] and k[1] other facets (each a pool of
    phrasings; one phrasing each, facets in random order), split into one or two paragraphs, then a closer."""
    others = [rng.choice(f) for f in rng.sample(facets, rng.randint(*k))]
    body = [rng.choice(core), *others]
    cut = rng.randint(1, len(body))
    paragraphs = [" ".join([rng.choice(openers), *body[:cut]]), " ".join([*body[cut:], rng.choice(closers)])]
    return "\n\n".join(p for p in paragraphs if p)
