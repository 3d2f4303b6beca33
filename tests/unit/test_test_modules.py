"""The test suite's own layout.

- Builders and fakes that several test modules share live in helper modules (tests/builders.py,
  tests/unit/webhooks/certificates.py, tests/e2e/objects.py...), never in a test module that
  another imports: a change to one test file would break another.
- `make test-unit` is the fast loop (`-m "not e2e and not slow"`): every hypothesis property is
  marked slow, as setup.cfg and docs/testing.md say (so are the tests that start a server, fuzz,
  or build and run Go, by hand).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from tests.e2e import test_credentials` names the module as an imported name.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    modules = sorted(TESTS.rglob("test_*.py"))
    assert len(modules) > 50
    offenders = {
        str(path.relative_to(TESTS.parent)): sorted(
            name for name in imported_modules(path)
            if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_"))
        for path in modules}
    assert {path: names for path, names in offenders.items() if names} == {}


def marks_slow(decorators: list[ast.expr]) -> bool:
    return any(ast.unparse(decorator) == "pytest.mark.slow" for decorator in decorators)


def is_property(function: ast.FunctionDef) -> bool:
    return any(ast.unparse(decorator).startswith(("given(", "hypothesis.given("))
               for decorator in function.decorator_list)


def test_every_hypothesis_property_is_marked_slow() -> None:
    unmarked: list[str] = []
    for path in sorted((TESTS / "unit").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module_slow = any(
            isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "pytestmark"
            and "pytest.mark.slow" in ast.unparse(node.value) for node in tree.body)
        unmarked.extend(
            f"{path.relative_to(TESTS.parent)}::{node.name}" for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            and is_property(node) and not module_slow and not marks_slow(node.decorator_list))
    assert unmarked == []
