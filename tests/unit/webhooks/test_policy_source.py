"""Hot reload: a valid edit takes effect, a bad one is refused and the last good policy stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import EXAMPLE_POLICY
from tests.volumes import link_keys, swap_data
from webhooks import policy_source
from webhooks.policy_source import PolicySource


def configmap_volume(root: Path, text: str) -> Path:
    """Write the file the way the kubelet updates a ConfigMap volume: a new dir, a symlink swap."""
    swap_data(root, {"policy.yaml": text.encode()})
    link_keys(root, ["policy.yaml"])
    return root / "policy.yaml"


def test_a_valid_edit_is_put_in_force(tmp_path: Path) -> None:
    path = configmap_volume(tmp_path, "builds: {maxActiveRuns: 1}\n")
    source = PolicySource(path, interval=0)
    assert source.refresh() is True
    assert source.policy is not None
    assert source.policy.builds.max_active_runs == 1
    configmap_volume(tmp_path, "builds: {maxActiveRuns: 3}\n")
    assert source.refresh() is True
    edited = source.policy
    assert edited.builds.max_active_runs == 3
    assert source.generation == 2


def test_an_unchanged_file_is_not_reparsed(tmp_path: Path) -> None:
    path = configmap_volume(tmp_path, "builds: {maxActiveRuns: 1}\n")
    source = PolicySource(path, interval=0)
    source.refresh()
    assert source.refresh() is False
    configmap_volume(tmp_path, "builds: {maxActiveRuns: 1}\n")  # same text, new file
    assert source.refresh() is False
    assert source.generation == 1


def test_an_invalid_edit_is_refused_and_the_last_good_policy_stays(tmp_path: Path) -> None:
    path = configmap_volume(tmp_path, EXAMPLE_POLICY.read_text())
    source = PolicySource(path, interval=0)
    source.refresh()
    good = source.policy
    configmap_volume(tmp_path, "builds: {maxActiveRuns: 0}\n")
    assert source.refresh() is False
    assert source.policy is good
    assert "builds.maxActiveRuns: must be an integer >= 1" in source.error
    configmap_volume(tmp_path, "builds: {maxActiveRuns: 2}\n")
    assert source.refresh() is True
    assert source.error == ""


def test_garbage_truncation_and_deletion_keep_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("builds: {maxActiveRuns: 2}\n")
    source = PolicySource(path, interval=0)
    source.refresh()
    for damage in (b"\x00\xff garbage: [", b"", None):
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage)
        source.refresh()
        assert source.policy is not None
        assert source.policy.builds.max_active_runs == 2
        assert source.error


def test_no_policy_until_a_valid_file_appears(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    source = PolicySource(path, interval=0)
    source.refresh()
    assert source.policy is None
    assert "cannot read" in source.error
    path.write_text("{}\n")
    assert source.refresh() is True
    assert source.policy is not None


def test_a_worker_started_while_the_file_is_bad_serves_its_siblings_last_good_policy(
        tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    shared = tmp_path / "last-good-policy.yaml"
    path.write_text("builds: {maxActiveRuns: 2}\n")
    first = PolicySource(path, interval=0, last_good=shared)
    first.refresh()
    path.write_text("builds: {maxActiveRuns: 0}\n")
    late = PolicySource(path, interval=0, last_good=shared)
    late.refresh()
    assert late.policy is not None
    assert late.policy.builds.max_active_runs == 2
    assert "builds.maxActiveRuns" in late.error


def test_without_a_saved_policy_a_bad_file_leaves_the_worker_without_policy(
        tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("builds: {maxActiveRuns: 0}\n")
    source = PolicySource(path, interval=0, last_good=tmp_path / "missing.yaml")
    source.refresh()
    assert source.policy is None


def test_yaml_nested_beyond_the_recursion_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("builds: {maxActiveRuns: 2}\n")
    source = PolicySource(path, interval=0)
    source.refresh()
    path.write_bytes(b"[" * 5000)
    assert source.refresh() is False
    assert source.policy is not None
    assert source.policy.builds.max_active_runs == 2
    assert source.error


def test_whatever_the_parser_raises_the_file_is_refused_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("builds: {maxActiveRuns: 2}\n")
    source = PolicySource(path, interval=0)
    source.refresh()

    def crash(_text: bytes) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(policy_source, "parse_policy", crash)
    path.write_text("builds: {maxActiveRuns: 3}\n")
    assert source.refresh() is False
    assert source.policy is not None
    assert source.policy.builds.max_active_runs == 2
    assert "RecursionError: maximum recursion depth exceeded" in source.error
    # A worker that starts on such a file is unready, not crashed.
    starting = PolicySource(path, interval=0)
    starting.start()
    assert starting.policy is None
    assert "RecursionError" in starting.error
