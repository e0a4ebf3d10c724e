"""The shape of the package code (docs/architecture.md): imports point one way, armor_serve -> compress ->
model_executors, and no function runs longer than 80 lines."""
import ast

import pytest

from conftest import ROOT

LAYERS = ["armor_serve", "compress", "model_executors"]  # top to bottom


def imported_packages(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_a_layer_above_it(package):
    above = set(LAYERS[: LAYERS.index(package)])
    offenders = {f"{path.relative_to(ROOT)} imports {name}"
                 for path in (ROOT / package).rglob("*.py") for name in imported_packages(path) if name in above}
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("package", LAYERS)
def test_no_function_in_package_code_is_longer_than_80_lines(package):
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in (ROOT / package).rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not long, long
