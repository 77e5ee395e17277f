"""The house's one-way imports (docs/architecture.md), checked on the source itself.

Every `import` and `from ... import` in the package, at module level or inside a function,
is resolved to the wing it names. A wing may import only the wings below it:

    commands, cli, experiment  (top: may import anything)
    pipeline   trainer   tasks (the three wings; none imports another)
    network                    (the T5 network and its weight readers)
    io, errors, feature_names  (the base)
"""
import ast
import pathlib

import pytest

from shared_paths import REPO_ROOT

PACKAGE = "personalize_t5x"
BASE = {"errors", "io", "feature_names", ""}
# wing -> the wings it may import (besides itself and the base)
ALLOWED = {
    "": set(),  # the package's own __init__
    "errors": set(),
    "io": set(),
    "feature_names": set(),
    "network": set(),
    "pipeline": {"network"},
    "tasks": set(),
    "trainer": {"network"},
}
TOP = {"commands", "cli", "experiment", "report", "demo"}


def _wing(module: str) -> str | None:
    """personalize_t5x.pipeline.examples -> 'pipeline'; the package root -> ''."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else ""


def _imports(path: pathlib.Path, module: str):
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == PACKAGE:
                # `from personalize_t5x import x` names the submodule x.
                for alias in node.names:
                    yield node.lineno, f"{PACKAGE}.{alias.name}"
            else:
                yield node.lineno, target


def _source_modules():
    root = REPO_ROOT / PACKAGE
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def _violations():
    found = []
    for path, module in _source_modules():
        wing = _wing(module)
        if wing in TOP:
            continue
        for line, target in _imports(path, module):
            target_wing = _wing(target)
            if target_wing is None or target_wing == wing or target_wing in BASE:
                continue
            if target_wing not in ALLOWED.get(wing, set()):
                found.append(f"{path.relative_to(REPO_ROOT)}:{line}: {wing or 'package'} imports {target}")
    # The `tasks` package users import is a thin face over the task side alone.
    for path in sorted((REPO_ROOT / "tasks").rglob("*.py")):
        for line, target in _imports(path, "tasks"):
            target_wing = _wing(target)
            if target_wing not in (None, "tasks", *BASE):
                found.append(f"{path.relative_to(REPO_ROOT)}:{line}: tasks/ imports {target}")
    return found


def test_imports_run_one_way():
    assert _violations() == []


def test_every_wing_is_known():
    """A new top-level module must be placed in the map above (and in docs/architecture.md)."""
    wings = {_wing(module) for _, module in _source_modules()}
    unknown = wings - set(ALLOWED) - TOP
    assert not unknown, f"place these in tests/test_architecture.py and docs/architecture.md: {sorted(unknown)}"


@pytest.mark.parametrize("source, module, expected", [
    ("from personalize_t5x.trainer import train\n", "personalize_t5x.pipeline.features", "personalize_t5x.trainer"),
    ("def f():\n    import personalize_t5x.pipeline.examples\n", "personalize_t5x.trainer.eval",
     "personalize_t5x.pipeline.examples"),
    ("from ..trainer import models\n", "personalize_t5x.pipeline.features", "personalize_t5x.trainer"),
    ("from personalize_t5x import trainer\n", "personalize_t5x.tasks.metrics", "personalize_t5x.trainer"),
])
def test_the_checker_sees_wrong_way_imports(tmp_path, source, module, expected):
    """The checker resolves absolute, relative, nested and `from package import x` forms."""
    path = tmp_path / "m.py"
    path.write_text(source)
    targets = [target for _, target in _imports(path, module)]
    assert expected in targets
    assert _wing(expected) not in ALLOWED[_wing(module)]
