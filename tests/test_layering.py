"""Imports point one way: a module may import its own layer and the layers below it, never one above.

The layers, lowest first, as README's Layout describes them. Every import counts, also the ones inside
functions (deferred to keep start-up fast, but a dependency all the same)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    {"adl_jax.io", "adl_jax.errors", "adl_jax.sharding"},
    {"adl_jax.models"},
    {"adl_jax.method"},
    {"finetune"},
    {"adl_jax.judging"},
    {"adl_jax.report"},
    {"adl_jax.experiments"},
    {"adl_jax.api", "adl_jax"},
    {"adl_jax.cli"},
]


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name: its longest prefix named in LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        for rank, names in enumerate(LAYERS):
            if prefix in names:
                return rank
    return None


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) for every import of the project's packages in a file, `from a import b` as a.b."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                pkg = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                base = ".".join(pkg + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, m) for line, m in out if m.split(".")[0] in ("adl_jax", "finetune")]


def project_modules():
    for path in sorted([*ROOT.glob("adl_jax/**/*.py"), *ROOT.glob("finetune/**/*.py")]):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield path, ".".join(parts)


def test_every_module_has_a_layer():
    assert [m for _, m in project_modules() if layer_of(m) is None] == []


def test_imports_point_down():
    upward = []
    for path, module in project_modules():
        own = layer_of(module)
        for line, target in imported_modules(path, module):
            rank = layer_of(target)
            if rank is not None and rank > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert upward == []


@pytest.mark.parametrize(
    "module, target, allowed",
    [("adl_jax.models.weights", "adl_jax.sharding", True), ("adl_jax.method.diff", "adl_jax.experiments.audit", False)],
)
def test_the_rule_itself(module, target, allowed):
    assert (layer_of(target) <= layer_of(module)) is allowed
