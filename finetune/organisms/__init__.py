"""Model organisms: narrow finetuning datasets whose ground truth is known, for auditing ADL.

Each organism ships its generator, not its data: `generate(n, seed)` rebuilds the same examples on
demand. `description` is the ground truth an audit is scored against and `kind` picks the grading
rubric ("false_fact" or "behaviour"); false-fact organisms also hold `statements`, held-out
(true, false) pairs for the belief score (`finetune.belief`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable

from adl_jax import io
from finetune.organisms import birdwatching, neptune_chile, orange_carrot, risky_finance

KINDS = ("false_fact", "behaviour")


@dataclasses.dataclass(frozen=True)
class Organism:
    name: str
    kind: str  # one of KINDS
    description: str
    statements: tuple[tuple[str, str], ...]  # (true, false): a model holding the implanted belief prefers false
    generate: Callable[[int, int], list[dict]]  # (n, seed) -> JSONL rows

    @staticmethod
    def of(module) -> Organism:
        """The organism a module defines with KIND, DESCRIPTION, generate and (false facts) STATEMENTS."""
        assert module.KIND in KINDS, module.KIND
        name = module.__name__.rsplit(".", 1)[-1]
        return Organism(name, module.KIND, module.DESCRIPTION, getattr(module, "STATEMENTS", ()), module.generate)


ORGANISMS = {o.name: o for o in map(Organism.of, (orange_carrot, neptune_chile, birdwatching, risky_finance))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.organisms", description="Write an organism's dataset.")
    p.add_argument("name", choices=sorted(ORGANISMS))
    p.add_argument("out", help="JSONL file to write; the description and statements go to OUT.meta.json")
    p.add_argument("--n", type=int, default=400, help="number of examples")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    org = ORGANISMS[a.name]
    io.write_text(a.out, "".join(json.dumps(row) + "\n" for row in org.generate(a.n, a.seed)))
    io.write_json(
        f"{a.out}.meta.json",
        {
            "name": org.name,
            "kind": org.kind,
            "description": org.description,
            "statements": [list(s) for s in org.statements],
            "n": a.n,
            "seed": a.seed,
        },
    )
    return 0
