"""Files mounted from a Secret or ConfigMap, and the last good copy a pod's workers share.

The kubelet updates such a volume by swapping a symlink, so a file is compared by identity
(inode, modification time, size), not watched by name: `identity` changes whenever one of the
files is replaced or rewritten, and a caller rereads them only then.

What a worker put in force is saved with `save_last_good`, replaced atomically and readable by
the server's user only, where the pod's other workers find it: a worker that starts (or is
restarted) while the mounted files are refused serves what its siblings serve.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

POLICY_FILE = "/etc/toolforge-admission/policy/policy.yaml"
"""Where the deployment mounts the policy ConfigMap: the server's default policy file."""

Identity = tuple[tuple[int, int, int], ...]
"""Inode, modification time (ns) and size of each file, in the order they were named."""


def identity(*paths: Path) -> Identity:
    """What the files are now; OSError when one cannot be read."""
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in (path.stat() for path in paths))


def save_last_good(path: Path, data: bytes, what: str) -> None:
    """Replace `path` with `data` atomically, mode 0600; a failure is logged, not raised.

    `what` names the content in the log (`cannot save the last good policy`): a worker that
    cannot save still serves what it loaded, only its restarted siblings cannot fall back on it.
    """
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()  # left by a process of the same PID that died writing it
        # Created 0600, not chmod-ed afterwards: a private key is never readable by others.
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "wb") as file:
            file.write(data)
        os.replace(staged, path)
    except OSError as error:
        logger.warning(f"cannot save the last good {what}", extra={"fields": {
            "path": str(path), "error": error.strerror}})
