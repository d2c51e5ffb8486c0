"""Imports go one way: training and the backends share the template and the sampling defaults; the demo is
training's (its tiny recipe, cached), which the app asks for. The one bridge: training/evaluate.py."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def importing(folder: str, prefix: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(ROOT)): bad
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (bad := {m for m in imports(path) if m == prefix or m.startswith(prefix + ".")})
    }


def test_the_backends_know_nothing_of_the_demo_or_of_training():
    assert importing("playground/backends", "training") == {}


def test_training_does_not_import_the_serving_side():
    """Save evaluate.py, which scores a model exactly as the playground serves it (train.py imports it only
    when a recipe asks for a score)."""
    assert set(importing("training", "playground.backends")) == {"training/evaluate.py"}
    assert importing("training", "playground.ui") == importing("training", "playground.server") == {}


def test_sampling_defaults_live_in_one_module_both_sides_import():
    assert imports(ROOT / "playground" / "sampling.py") <= {"__future__", "math", "dataclasses"}
    assert "playground.sampling" in imports(ROOT / "training" / "checkpoint.py")
    assert "playground.sampling" in imports(ROOT / "playground" / "backends" / "__init__.py")
