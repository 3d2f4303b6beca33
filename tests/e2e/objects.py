"""The objects the end-to-end tests create, built the way a tool would write them."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import yaml

from tests.e2e.cluster import BUILD_NAMESPACE, SUITE_NAMESPACE, ControlPlane, wait_for
from webhooks.slots import RESERVATIONS_ANNOTATION, lease_name

TOOL_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/app:1"
BUILDER = "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"
RUN_IMAGE = "tools-harbor.wmcloud.org/toolforge/heroku-run:22"
TOOL_LABEL = "toolforge.org/tool"
BUILD_SERVICE_ACCOUNT = "buildpacks-service-account"
"""The build ServiceAccount (tests/e2e/manifests/image-build.yaml): the registry Secret's, and
with `automountServiceAccountToken: false`, as docs/security.md recommends."""
API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


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
                # Without it the export step would take its run image from /layers/stack.toml,
                # which the tool's code can write: such a pod is refused.
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


def api_token_volumes(pod: dict[str, Any]) -> set[str]:
    """The pod's projected volumes with a ServiceAccount token (Kubernetes' kube-api-access-*)."""
    return {volume["name"] for volume in pod["spec"].get("volumes", [])
            if any("serviceAccountToken" in source
                   for source in volume.get("projected", {}).get("sources", []))}


def build_pods_get_a_token(cp: ControlPlane) -> bool:
    """Whether Kubernetes adds the build ServiceAccount's API token to a pod made now: the pod
    a server dry-run of a Tekton-shaped pod as the controller would store."""
    probe = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": unique("token-probe"), "namespace": BUILD_NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "tekton-pipelines"},
                     "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                                          "name": "token-probe", "uid": str(uuid.uuid4()),
                                          "controller": True}]},
        "spec": {"serviceAccountName": BUILD_SERVICE_ACCOUNT, "restartPolicy": "Never",
                 "containers": [{"name": "step-probe", "image": BUILDER}]},
    }
    stored = json.loads(cp.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                   input=json.dumps(probe), user=cp.tekton_kubeconfig).stdout)
    return bool(api_token_volumes(stored))


def set_build_token_automount(cp: ControlPlane, automount: bool) -> None:
    """Turn the build ServiceAccount's automountServiceAccountToken on or off, and wait until
    the API server's ServiceAccount admission (which reads a cache) applies it to new pods."""
    cp.kubectl("-n", BUILD_NAMESPACE, "patch", "serviceaccount", BUILD_SERVICE_ACCOUNT,
               "--type=merge", "-p", json.dumps({"automountServiceAccountToken": automount}))
    wait_for(f"build pods to {'get' if automount else 'lose'} the API token",
             lambda: build_pods_get_a_token(cp) is automount, timeout=30, interval=0.25)


@contextlib.contextmanager
def build_token_automounted(cp: ControlPlane) -> Iterator[None]:
    """The build ServiceAccount as Kubernetes defaults it (and Toolforge has it today): every
    container of a build pod gets its API token. Back to the harness's setting afterwards."""
    set_build_token_automount(cp, True)
    try:
        yield
    finally:
        set_build_token_automount(cp, False)
