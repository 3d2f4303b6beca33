"""The peers of the end-to-end benchmark check the same registries as the suite's policy."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICIES = [ROOT / "tests" / "e2e" / "policy.yaml", ROOT / "policies" / "example-policy.yaml"]


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The bench scripts import their siblings by name, with bench/ on sys.path.
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("peers")


@pytest.mark.parametrize("policy_file", POLICIES, ids=lambda p: p.parent.name)
def test_every_placeholder_is_in_the_tools_terms(peers: ModuleType, policy_file: Path) -> None:
    allow = peers.AllowList.from_policy(policy_file)
    assert all("{" not in entry.replace("{tool}", "") for entry in allow.entries), allow
    # The e2e policy allows the tool's Harbor project through {harborProject}.
    if policy_file.parent.name == "e2e":
        assert "tools-harbor.wmcloud.org/tool-{tool}" in allow.entries
    cel = peers.vap_documents(allow)[0]["spec"]["variables"][1]["expression"]
    assert "{harborProject}" not in cel
    assert "{harborProject}" not in str(peers.kyverno_policy(allow))
