"""Fakes that several webhook test modules use."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from webhooks.slots import ConflictError

LABEL = "toolforge.org/tool"


class FakeCluster:
    """Leases and PipelineRuns in memory, with the API server's resourceVersion rules."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.leases: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []
        self.version = 0
        self.delay = delay
        self.writes = 0

    def get(self, name: str, timeout: float) -> dict[str, Any] | None:
        time.sleep(self.delay)
        with self.lock:
            lease = self.leases.get(name)
            return copy.deepcopy(lease) if lease else None

    def create(self, body: dict[str, Any], timeout: float) -> None:
        time.sleep(self.delay)
        with self.lock:
            name = body["metadata"]["name"]
            if name in self.leases:
                raise ConflictError("already exists")
            self._store(name, body)

    def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
        time.sleep(self.delay)
        with self.lock:
            current = self.leases[name]["metadata"]["resourceVersion"]
            if body["metadata"].get("resourceVersion") != current:
                raise ConflictError("the object has been modified")
            self._store(name, body)

    def list(self, label_selector: str, timeout: float) -> Sequence[Mapping[str, Any]]:
        key, _, value = label_selector.partition("=")
        with self.lock:
            return [copy.deepcopy(r) for r in self.runs
                    if r["metadata"].get("labels", {}).get(key) == value]

    def add_run(self, tool: str, uid: str, status: str | None = None) -> None:
        run: dict[str, Any] = {"metadata": {"name": f"run-{uid}", "namespace": "image-build",
                                            "uid": uid, "labels": {LABEL: tool}}}
        if status is not None:
            run["status"] = {"conditions": [{"type": "Succeeded", "status": status}]}
        with self.lock:
            self.runs.append(run)

    def _store(self, name: str, body: dict[str, Any]) -> None:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
