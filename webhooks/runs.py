"""The PipelineRun a TaskRun or a build pod belongs to, read from the cluster.

A TaskRun names its PipelineRun in its controlling owner reference, and a Tekton pod names its
TaskRun the same way; each reference carries the owner's uid, so a run deleted and created
again under the same name is not the one referred to. `BuildRuns` follows those references with
GETs, all within one deadline (`DEFAULT_BUDGET_SECONDS`, well inside the pods webhook's 3 s),
and raises `RunsUnavailableError` when the API server cannot answer in time; the rule then
refuses (fail closed).

RBAC the ServiceAccount needs: get `pipelineruns.tekton.dev` and `taskruns.tekton.dev` (in the
build namespace; the ClusterRole in manifests/base/rbac-server.yaml grants it cluster-wide,
read only, so that overlays with another build namespace need no change).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from policies.owners import PIPELINERUN, TASKRUN, OwnerRef, controller_owner, matches
from policies.questions import FoundRun
from webhooks.cluster import api_client, unavailable

DEFAULT_BUDGET_SECONDS = 1.5
RESOURCES = {PIPELINERUN: "pipelineruns", TASKRUN: "taskruns"}


class RunsUnavailableError(Exception):
    """The cluster could not say which PipelineRun an object belongs to."""


class ObjectReader(Protocol):
    """tekton.dev objects of one resource by name; None when there is none."""

    def get(self, resource: str, namespace: str, name: str,
            timeout: float) -> Mapping[str, Any] | None: ...


class BuildRuns:
    """Follows owner references from pods and TaskRuns to their PipelineRun."""

    def __init__(self, reader: ObjectReader, *, budget_seconds: float = DEFAULT_BUDGET_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.reader = reader
        self.budget_seconds = budget_seconds
        self._monotonic = monotonic

    def pipelinerun(self, namespace: str, owner: OwnerRef) -> FoundRun:
        """The PipelineRun `owner` refers to, if it exists with that uid."""
        deadline = self._monotonic() + self.budget_seconds
        return self._follow(namespace, owner, deadline)

    def pipelinerun_of_pod(self, namespace: str, pod: Mapping[str, Any]) -> FoundRun:
        """The PipelineRun of the TaskRun that owns `pod`."""
        deadline = self._monotonic() + self.budget_seconds
        taskrun_ref = controller_owner(pod, TASKRUN)
        if taskrun_ref is None:
            return FoundRun(None, "the pod has no controlling owner reference to a TaskRun")
        taskrun = self._get(namespace, taskrun_ref, deadline)
        if taskrun is None:
            return FoundRun(None, f"its TaskRun {taskrun_ref.name} (uid {taskrun_ref.uid}) "
                                  "does not exist")
        run_ref = controller_owner(taskrun, PIPELINERUN)
        if run_ref is None:
            return FoundRun(None, f"its TaskRun {taskrun_ref.name} belongs to no PipelineRun")
        return self._follow(namespace, run_ref, deadline)

    def _follow(self, namespace: str, owner: OwnerRef, deadline: float) -> FoundRun:
        run = self._get(namespace, owner, deadline)
        if run is None:
            return FoundRun(None, f"PipelineRun {owner.name} (uid {owner.uid}) does not exist")
        return FoundRun(run)

    def _get(self, namespace: str, owner: OwnerRef, deadline: float) -> Mapping[str, Any] | None:
        left = deadline - self._monotonic()
        if left <= 0:
            raise RunsUnavailableError(f"the API server did not answer within "
                                       f"{self.budget_seconds:g} s")
        found = self.reader.get(RESOURCES[owner.kind], namespace, owner.name, left)
        return found if matches(found, owner) else None


class KubernetesTektonObjects:
    """ObjectReader over the kubernetes client's CustomObjectsApi (tekton.dev/v1)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def get(self, resource: str, namespace: str, name: str,
            timeout: float) -> Mapping[str, Any] | None:
        try:
            response = self.api.get_namespaced_custom_object(
                "tekton.dev", "v1", namespace, resource, name,
                _preload_content=False, _request_timeout=timeout)
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return None
            raise unavailable(f"reading {resource} {namespace}/{name}", error,
                              RunsUnavailableError) from error
        data = json.loads(response.data)
        return data if isinstance(data, dict) else None


def from_environment() -> BuildRuns:
    """The real reader: in-cluster config (or KUBECONFIG); call it in each worker process."""
    from kubernetes import client  # noqa: PLC0415 - only the service needs the client

    return BuildRuns(KubernetesTektonObjects(client.CustomObjectsApi(api_client())))
