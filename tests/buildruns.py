"""The Tekton objects behind a captured build pod, and a cluster that holds them.

The captured pod of scenario c (a PipelineRun's TaskRun, tests/fixtures/tekton) names its TaskRun
in its owner reference and its PipelineRun in Tekton's labels; `objects_of` makes the TaskRun and
PipelineRun those name, shaped as the Tekton controller stores them, so that a test can look the
run up as the service does (`webhooks.runs.BuildRuns` over `MemoryCluster`).

The captures' runs left RUN_IMAGE out, so their export steps say `-run-image=`; a run must set it
(an exporter given no run image reads one from /layers/stack.toml, which the tool's code can
write). `captured_pod` therefore gives the pod of a run with RUN_IMAGE, as Tekton makes it:
buildpacks-phases 0.2 passes `-run-image=$(params.RUN_IMAGE)`, and nothing else changes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "tekton"
PIPELINERUN_POD = "c-pipelinerun-phases-0.2-basic-auth"
TASKRUN_POD = "a-taskrun-phases-0.2-basic-auth"
CONTROLLER = "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller"
APP_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/tool-mytool:latest"
BUILDER = "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"
RUN_IMAGE = "tools-harbor.wmcloud.org/toolforge/heroku-run:22"
EMPTY_RUN_IMAGE = "-run-image="


def captured_review(scenario: str = PIPELINERUN_POD, *,
                    run_image: str | None = RUN_IMAGE) -> dict[str, Any]:
    """The captured review; its pod that of a run with `run_image` as RUN_IMAGE (None: the
    capture as it is, RUN_IMAGE left out)."""
    review: dict[str, Any] = json.loads(
        (FIXTURES / scenario / "pod.create.admissionreview.json").read_text())
    if run_image is not None:
        for container in review["request"]["object"]["spec"]["containers"]:
            args = container.get("args") or []
            container["args"] = [f"{EMPTY_RUN_IMAGE}{run_image}" if arg == EMPTY_RUN_IMAGE
                                 else arg for arg in args]
    return review


def captured_pod(scenario: str = PIPELINERUN_POD, *,
                 run_image: str | None = RUN_IMAGE) -> dict[str, Any]:
    pod: dict[str, Any] = captured_review(scenario, run_image=run_image)["request"]["object"]
    return pod


def objects_of(pod: Mapping[str, Any], *, app_image: str = APP_IMAGE,
               params: Mapping[str, Any] | None = None,
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (PipelineRun, TaskRun) the captured pod belongs to, as the controller stores them."""
    labels = pod["metadata"]["labels"]
    owner = pod["metadata"]["ownerReferences"][0]
    values = {"APP_IMAGE": app_image, "BUILDER_IMAGE": BUILDER, "RUN_IMAGE": RUN_IMAGE,
              "SOURCE_URL": "https://gitlab.example.org/mytool/app.git", **(params or {})}
    run = {
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        # A TaskRun's pod (scenarios a, b, d) names no run: give it one.
        "metadata": {"name": labels.get("tekton.dev/pipelineRun", "mytool-buildpacks-pipelinerun"),
                     "namespace": "image-build",
                     "uid": labels.get("tekton.dev/pipelineRunUID", "0c8a7d3e-run"),
                     "labels": {"toolforge.org/tool": "mytool"}},
        "spec": {"pipelineRef": {"name": "buildpacks"},
                 "params": [{"name": k, "value": v} for k, v in values.items()
                            if v is not None]},
    }
    taskrun = {
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {"name": owner["name"], "namespace": "image-build", "uid": owner["uid"],
                     "labels": {k: v for k, v in labels.items()
                                if not k.startswith("tekton.dev/taskRun")},
                     "ownerReferences": [owner_reference(run)]},
        "spec": {"taskRef": {"name": "buildpacks-phases", "kind": "Task"}},
    }
    return run, taskrun


def owner_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The controlling owner reference the Tekton controller puts on what it makes for `obj`."""
    return {"apiVersion": "tekton.dev/v1", "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def new_taskrun(run: Mapping[str, Any], name: str = "mytool-buildpacks-pipelinerun-7xk2p-build",
                ) -> dict[str, Any]:
    """A TaskRun as the controller creates it for `run` (no uid yet: it is being created)."""
    return {
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {"name": name, "namespace": "image-build",
                     "labels": {"tekton.dev/pipelineRun": run["metadata"]["name"],
                                "tekton.dev/pipelineTask": "build"},
                     "ownerReferences": [owner_reference(run)]},
        "spec": {"taskRef": {"name": "buildpacks-phases", "kind": "Task"},
                 "serviceAccountName": "buildpacks-service-account"},
    }


class MemoryCluster:
    """tekton.dev objects by (resource, namespace, name), as `webhooks.runs.ObjectReader`."""

    def __init__(self, *objects: Mapping[str, Any], error: Exception | None = None) -> None:
        self.objects: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        self.error = error
        self.gets: list[tuple[str, str, str]] = []
        for obj in objects:
            self.add(obj)

    def add(self, obj: Mapping[str, Any]) -> None:
        resource = {"PipelineRun": "pipelineruns", "TaskRun": "taskruns"}[obj["kind"]]
        metadata = obj["metadata"]
        self.objects[(resource, metadata["namespace"], metadata["name"])] = copy.deepcopy(obj)

    def get(self, resource: str, namespace: str, name: str,
            timeout: float) -> Mapping[str, Any] | None:
        assert timeout > 0
        self.gets.append((resource, namespace, name))
        if self.error is not None:
            raise self.error
        return self.objects.get((resource, namespace, name))
