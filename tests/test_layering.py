"""The package's layering: each stage imports only from itself and the stages before it, and every
package import sits at the top of its module (docs/architecture.md, "The flow")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "morphnet_onnx"

# The order of the flow, written once here and once in docs/architecture.md. A module of the package
# root other than these belongs to the basis every stage may use (errors, graph_utils, builders).
STAGES = ["ops", "loading", "analysis", "cost", "surgery", "expansion", "method", "training", "recipes", "report"]
BASIS = ["errors", "graph_utils", "builders", "stopping"]
TOP = ["__init__", "__main__", "cli"]  # the public API and the CLI (a package) sit above every stage
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def _rank(parts: list[str]) -> int:
    """0 for the basis, 1.. for the stages in order, above them the API and the CLI."""
    if parts[0] in STAGES:
        return STAGES.index(parts[0]) + 1
    if parts[0] in BASIS:
        return 0
    assert parts[0] in TOP, f"morphnet_onnx/{parts[0]}.py belongs to no stage: add it to STAGES, BASIS or TOP"
    return len(STAGES) + 1


def _target(path: Path, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        return (node.module or "").split(".")[1:]
    here = list(path.relative_to(PACKAGE).parent.parts)
    base = here[: len(here) - (node.level - 1)]
    return base + (node.module.split(".") if node.module else [])


def _package_imports(path: Path):
    """(node, target, in_function) for every import of the package, type-only imports left out."""
    tree = ast.parse(path.read_text())
    type_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for child in ast.walk(node))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(child) for child in ast.walk(node) if child is not node)
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("morphnet_onnx")):
            target = _target(path, node)
            if not target:  # `from . import __version__` in the root: the API itself
                target = ["__init__"]
            yield node, target, id(node) in in_function
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("morphnet_onnx"):
                    yield node, alias.name.split(".")[1:] or ["__init__"], id(node) in in_function


def test_the_stage_order_is_the_one_the_architecture_page_writes():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert " -> ".join(STAGES) in page


def test_every_subpackage_is_a_stage_with_a_docstring_naming_its_neighbours():
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "cli"):
        assert folder.name in STAGES, f"{folder.name}/ is not in the stage order"
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert len(doc) > 200, f"{folder.name}/__init__.py: say what the stage owns and what it may import"
        index = STAGES.index(folder.name)
        neighbours = STAGES[max(0, index - 1):index] + STAGES[index + 1:index + 2]
        for neighbour in neighbours:
            assert f"{neighbour}/" in doc, f"{folder.name}/__init__.py does not name its neighbour {neighbour}/"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_later_stage(path):
    here = _rank(_name(path))
    for node, target, _ in _package_imports(path):
        there = _rank(target)
        assert there <= here, (f"{path.relative_to(PACKAGE)}:{node.lineno} imports {'.'.join(target)}, "
                               f"a later stage")


def test_package_imports_sit_at_the_top_of_their_module_outside_the_cli():
    """The CLI imports each command's API when the command runs, so that `inspect` never loads training."""
    inside = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in _modules() if "cli" not in path.parts
              for node, _, in_function in _package_imports(path) if in_function]
    assert inside == []


def test_no_module_is_a_hub():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_package_root_keeps_the_api_the_cli_and_the_basis():
    root = sorted(p.stem for p in PACKAGE.glob("*.py")) + ["cli"]
    assert set(root) <= set(TOP + BASIS) and len(root) <= 8
