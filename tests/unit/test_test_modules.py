"""The test suite's own layout: builders and fakes that several test modules share live in
helper modules (tests/builders.py, tests/unit/webhooks/certificates.py, tests/e2e/objects.py...),
never in a test module that another imports: pytest would collect its tests twice over, and a
change to one test file would break another."""

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
