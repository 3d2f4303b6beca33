"""The policy in force: read from the mounted ConfigMap file, reloaded when it changes.

The file is compared by identity (`webhooks.mounts`) and content, not watched by name. A change
that does not parse is refused, logged and counted; the last good policy stays in force. With no
good policy at all, the service is not ready rather than guessing one.

Each accepted policy is also saved to a file shared by the pod's workers, so that a worker that
starts (or is restarted) while the mounted file is bad serves the same last good policy as its
siblings instead of being unready.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from policies.model import Policy, PolicyError, parse_policy
from webhooks import metrics, mounts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What the source last saw on disk, and whether it was usable."""

    identity: mounts.Identity | None
    digest: str = ""
    error: str = ""


class PolicySource:
    """Keeps the newest valid policy read from one file."""

    def __init__(self, path: str | os.PathLike[str], *, interval: float = 2.0,
                 last_good: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.last_good = Path(last_good) if last_good else None
        self.interval = interval
        self._policy: Policy | None = None
        self._seen = Snapshot(identity=None)
        self._generation = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> Policy | None:
        """The policy in force, or None before a valid one was ever read."""
        return self._policy

    @property
    def generation(self) -> int:
        """How many valid policies this source has put in force."""
        return self._generation

    @property
    def error(self) -> str:
        """Why the file on disk is not in force, or "" when it is."""
        return self._seen.error

    def refresh(self) -> bool:
        """Reread the file if it changed; True when a new policy was put in force."""
        with self._lock:
            try:
                identity = mounts.identity(self.path)
            except OSError as error:
                return self._refuse(None, "", f"cannot read {self.path}: {error.strerror}")
            if identity == self._seen.identity:
                return False
            try:
                text = self.path.read_bytes()
            except OSError as error:
                return self._refuse(identity, "", f"cannot read {self.path}: {error.strerror}")
            digest = hashlib.sha256(text).hexdigest()
            if self._policy is not None and digest == self._policy.digest:
                if self._seen.error:
                    logger.info("policy file valid again; the policy in force is unchanged",
                                extra={"fields": {"path": str(self.path), "digest": digest[:12]}})
                self._seen = Snapshot(identity, digest)
                metrics.POLICY_VALID.set(1)
                return False
            try:
                policy = parse_policy(text)
            except PolicyError as error:
                return self._refuse(identity, digest, "; ".join(error.problems))
            except Exception as error:
                # Garbage the parser does not diagnose itself (YAML nested deeper than Python's
                # recursion limit raises RecursionError) is refused like any other: escaping
                # here would crash a starting worker, and in the poll it would leave the
                # metrics and /readyz saying the file is fine.
                return self._refuse(identity, digest,
                                    f"cannot parse the policy: {type(error).__name__}: {error}")
            self._put_in_force(policy)
            self._seen = Snapshot(identity, digest)
            if self.last_good is not None:
                mounts.save_last_good(self.last_good, text, "policy")
            metrics.POLICY_VALID.set(1)
            logger.info("policy loaded", extra={"fields": {
                "path": str(self.path), "digest": digest[:12], "generation": self._generation}})
            return True

    def _put_in_force(self, policy: Policy) -> None:
        previous = self._policy.digest if self._policy is not None else None
        self._policy = policy
        self._generation += 1
        metrics.POLICY_GENERATION.set(self._generation)
        metrics.policy_in_force(policy.digest, previous)

    def _load_last_good(self) -> None:
        if self.last_good is None or self._policy is not None:
            return
        try:
            policy = parse_policy(self.last_good.read_bytes())
        except (OSError, PolicyError):
            return
        self._put_in_force(policy)
        logger.warning("serving the last good policy of this pod while the file is refused",
                       extra={"fields": {"path": str(self.last_good),
                                         "digest": policy.digest[:12]}})

    def _refuse(self, identity: mounts.Identity | None, digest: str, error: str) -> bool:
        # Log and count a bad file once, not on every poll.
        if (identity, error) != (self._seen.identity, self._seen.error):
            metrics.POLICY_RELOAD_ERRORS.inc()
            logger.error("policy refused; keeping the last good policy", extra={"fields": {
                "path": str(self.path), "error": error,
                "in_force": self._policy.digest[:12] if self._policy else None}})
        self._seen = Snapshot(identity, digest, error)
        metrics.POLICY_VALID.set(0)
        self._load_last_good()
        return False

    def start(self) -> None:
        """Load now, then poll in a daemon thread (one per worker process)."""
        self.refresh()
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="policy-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # keep polling whatever happens; the last good policy stays
                logger.exception("policy refresh failed")
