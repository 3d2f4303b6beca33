"""Tekton build pods as the e2e tests read them: the credentials the controller hands their
steps, and waiting for a run's pod."""

from __future__ import annotations

from typing import Any

from tests.e2e.cluster import BUILD_NAMESPACE, ControlPlane, wait_for

SECRET = "basic-user-pass"
CREDS_SECRETS = "/tekton/creds-secrets"
CREDS = "/tekton/creds"
TRUSTED = ("step-analyze", "step-restore", "step-export")
TOOL_CODE = ("step-detect", "step-build")
FLAG_NAMES = ("basic-docker", "docker-config", "docker-cfg")


def credential_flags(args: list[str]) -> list[str]:
    """The entrypoint's credential flags (before the first `--`), each as written."""
    before = args[:args.index("--")] if "--" in args else args
    found = []
    for i, token in enumerate(before):
        name = token.lstrip("-").partition("=")[0]
        if token.startswith("-") and name in FLAG_NAMES:
            has_value = "=" in token or i + 1 >= len(before)
            found.append(token if has_value else f"{token} {before[i + 1]}")
    return found


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """mountPath → volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def wait_pod(cp: ControlPlane, run: str, timeout: float = 120) -> dict[str, Any]:
    def pods() -> list[dict[str, Any]]:
        cp.tekton.check_alive()
        items: list[dict[str, Any]] = cp.get_json(
            "-n", BUILD_NAMESPACE, "pods", "-l", f"tekton.dev/pipelineRun={run}")["items"]
        return items

    found: list[dict[str, Any]] = wait_for(f"Tekton to make the pod of {run}", pods, timeout)
    assert len(found) == 1, [p["metadata"]["name"] for p in found]
    name = found[0]["metadata"]["name"]
    stored: dict[str, Any] = cp.get_json("-n", BUILD_NAMESPACE, "pod", name)
    return stored
