"""Directories laid out as the kubelet lays out a Secret or ConfigMap volume, for tests.

Each key is a symlink `<key> -> ..data/<key>`; `..data` is a symlink to a directory that holds
one version of every key. An update writes a new version's directory and swaps `..data` to it
with one rename (the kubelet's atomic writer), so a reader sees the old files or the new ones,
never a mix, and a file's identity (inode) changes though its path does not.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path


def link_keys(directory: Path, names: Iterable[str]) -> None:
    """Make each name a symlink into `..data`; a plain file of that name is replaced at once."""
    for name in names:
        path = directory / name
        if path.is_symlink():
            continue
        staged = directory / f".{name}.link"
        staged.symlink_to(f"..data/{name}")
        staged.replace(path)


def swap_data(directory: Path, files: Mapping[str, bytes], *, private: Iterable[str] = ()) -> None:
    """Write a new version holding `files` and swap `..data` to it with one rename; the previous
    version's directory is removed. `private` files are made readable by their owner only."""
    fresh = Path(tempfile.mkdtemp(prefix="..", dir=directory))
    fresh.chmod(0o755)
    for name, data in files.items():
        (fresh / name).write_bytes(data)
    for name in private:
        (fresh / name).chmod(0o600)
    data_link = directory / "..data"
    previous = data_link.resolve() if data_link.is_symlink() else None
    staged = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    staged.symlink_to(fresh.name)
    staged.replace(data_link)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
