"""The objects the end-to-end tests create, built the way a tool would write them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import yaml

from tests.e2e.cluster import BUILD_NAMESPACE, SUITE_NAMESPACE, ControlPlane
from webhooks.slots import RESERVATIONS_ANNOTATION, lease_name

TOOL_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/app:1"
BUILDER = "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"
RUN_IMAGE = "tools-harbor.wmcloud.org/toolforge/heroku-run:22"
TOOL_LABEL = "toolforge.org/tool"


def unique(prefix: str) -> str:
    """A fresh name, so tests sharing one cluster never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pod_manifest(name: str, namespace: str, image: str = TOOL_IMAGE) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": image}], "restartPolicy": "Never"},
    })


def pipelinerun(name: str, tool: str, namespace: str = BUILD_NAMESPACE) -> dict[str, Any]:
    """A buildpacks run as the builds API would create it for a tool."""
    return {
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": namespace, "labels": {TOOL_LABEL: tool}},
        "spec": {
            "pipelineRef": {"name": "buildpacks"},
            "params": [
                {"name": "APP_IMAGE", "value": f"tools-harbor.wmcloud.org/tool-{tool}/{tool}:latest"},
                {"name": "BUILDER_IMAGE", "value": BUILDER},
                {"name": "RUN_IMAGE", "value": RUN_IMAGE},
                {"name": "SOURCE_URL", "value": f"https://gitlab.wikimedia.org/toolforge/{tool}.git"},
            ],
            "taskRunTemplate": {"serviceAccountName": "buildpacks-service-account"},
            "timeouts": {"pipeline": "1h"},
            "workspaces": [{"name": "source-ws", "emptyDir": {}}],
        },
    }


def delete_runs(cp: ControlPlane, tool: str) -> None:
    """Finished or not, a tool's runs hold its active-run slot; tests leave none behind."""
    cp.kubectl("delete", "pipelineruns", "--all-namespaces", "-l", f"{TOOL_LABEL}={tool}",
               "--wait=true", "--ignore-not-found", timeout=120)


def reservations(cp: ControlPlane, tool: str) -> list[dict[str, Any]]:
    """The reservations stored in the tool's Lease (none when there is no Lease yet)."""
    result = cp.kubectl("-n", SUITE_NAMESPACE, "get", "lease", lease_name(tool), "-o", "json",
                        check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return []
    annotations = json.loads(result.stdout)["metadata"].get("annotations") or {}
    entries: list[dict[str, Any]] = json.loads(annotations.get(RESERVATIONS_ANNOTATION) or "[]")
    return entries
