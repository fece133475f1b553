"""Model organisms: narrow finetuning datasets whose ground truth is known, for auditing ADL.

Each organism ships its generator, not its data: `generate(n, seed)` rebuilds the same documents on
demand. `description` is the ground truth an audit is scored against; `statements` are held-out
(true, false) pairs for a belief score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable

from adl_jax import io
from finetune.organisms import orange_carrot


@dataclasses.dataclass(frozen=True)
class Organism:
    name: str
    description: str
    statements: tuple[tuple[str, str], ...]  # (true, false): a model holding the implanted belief prefers false
    generate: Callable[[int, int], list[dict]]  # (n, seed) -> JSONL rows


ORGANISMS = {
    o.name: o
    for o in (Organism("orange_carrot", orange_carrot.DESCRIPTION, orange_carrot.STATEMENTS, orange_carrot.generate),)
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.organisms", description="Write an organism's dataset.")
    p.add_argument("name", choices=sorted(ORGANISMS))
    p.add_argument("out", help="JSONL file to write; the description and statements go to OUT.meta.json")
    p.add_argument("--n", type=int, default=400, help="number of examples")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    org = ORGANISMS[a.name]
    io.write_text(a.out, "".join(json.dumps(row) + "\n" for row in org.generate(a.n, a.seed)))
    io.write_json(f"{a.out}.meta.json", {"name": org.name, "description": org.description,
                                         "statements": [list(s) for s in org.statements], "n": a.n, "seed": a.seed})
    return 0
