"""The package's layers point down only (docs/architecture.md).

Every module is imported, and every `import` in it (module level or inside a function: a lazy
import is still a dependency) is checked against `LAYERS`: a unit (subpackage or top-level
module) may import its own layer or lower ones, never a higher one, and the units never import
each other in a cycle. The per-frame runtime, file side included, never imports training or the
losses (nor does the server above it), whatever the layers allow.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bilayer"
#: Bottom to top. A unit is a subpackage of bilayer or one of its top-level modules.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "config", "assets", "timing", "hardware"),  # foundation: one-line errors, typed configs, shipped files,
    # stage timers, what the machine computes fast
    ("io",),  # atomic files, JSON, locks, images, the video writer
    ("nets", "perceptual"),  # the five networks; pretrained feature networks
    ("checkpoint",),  # weights + the config that built them
    ("data",),  # preprocessing, dataset store, training pairs
    ("losses",),
    ("metrics",),
    ("training",),
    ("runtime",),  # avatars, folding, backends, animation
    ("evaluation", "export", "convert"),  # applications of the runtime and the checkpoints
    ("server",),  # the local web app on top of the runtime
    ("cli", "__main__"),
)
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}
NEVER = {"runtime": ("training", "losses"), "server": ("training", "losses")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bilayer"


def imports(path: Path) -> set[str]:
    """The bilayer modules `path` imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {m for m in found if m == "bilayer" or m.startswith("bilayer.")}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = {(unit(m), unit(i), m, i) for m, p in MODULES.items() for i in imports(p) if unit(m) != unit(i)}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in MODULES} - {"bilayer"}
    assert units <= set(LAYER), f"no layer for {sorted(units - set(LAYER))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_imports_point_down_only():
    upward = sorted(f"{m} -> {i}" for a, b, m, i in EDGES if b != "bilayer" and LAYER[b] > LAYER[a])
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in EDGES:
        graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(u for u in graph if u in reach(u))
    assert not cycles, f"units in an import cycle: {cycles}"


def test_runtime_never_imports_training_or_losses():
    banned = sorted(f"{m} -> {i}" for a, b, m, i in EDGES if b in NEVER.get(a, ()))
    assert not banned, "\n".join(banned)
