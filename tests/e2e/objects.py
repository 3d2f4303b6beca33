"""The objects the end-to-end tests create, built the way a tool would write them."""

from __future__ import annotations

import uuid
from typing import Any

import yaml

from tests.e2e.cluster import BUILD_NAMESPACE, ControlPlane

TOOL_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/app:1"
BUILDER = "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"
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
