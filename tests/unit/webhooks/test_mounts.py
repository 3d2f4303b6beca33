"""Mounted files change identity when the kubelet swaps them; the last good copy is saved whole."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from webhooks import mounts


def test_identity_changes_when_a_file_is_replaced_and_not_when_it_is_only_read(
        tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    before = mounts.identity(first, second)
    first.read_bytes()
    assert mounts.identity(first, second) == before
    staged = tmp_path / "staged"
    staged.write_bytes(b"one")  # same size and content, another inode
    os.replace(staged, first)
    assert mounts.identity(first, second) != before


def test_identity_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mounts.identity(tmp_path / "missing")


def test_the_last_good_copy_is_replaced_whole_and_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "last-good"
    path.write_bytes(b"old")
    path.chmod(0o644)
    stale = tmp_path / f".last-good.{os.getpid()}"
    stale.write_bytes(b"half written by a process that died")
    mounts.save_last_good(path, b"new", "policy")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-good"]


def test_a_copy_that_cannot_be_saved_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "no-such-directory" / "last-good"
    with caplog.at_level(logging.WARNING, logger="webhooks.mounts"):
        mounts.save_last_good(path, b"data", "policy")
    assert [r.getMessage() for r in caplog.records] == ["cannot save the last good policy"]
    assert caplog.records[0].fields["path"] == str(path)  # type: ignore[attr-defined]
    assert not path.parent.exists()
