"""Registry credentials in real Tekton build pods: only trusted steps keep them.

The Tekton controller gives every step of a buildpacks-phases pod the build ServiceAccount's
registry Secret (a `/tekton/creds-secrets/<secret>` mount, `-basic-docker=<secret>=<url>` before
`--`, a `/tekton/creds` emptyDir, the shared `/tekton/home`). The mutating webhook
`toolforge-admission-build-pods` takes all of it away from every container but the trusted steps
(analyze, restore, export with the lifecycle image, tests/e2e/policy.yaml); without it, the
validating pods webhook refuses the pod (BuildCredentialLeak), so the controller cannot make it.

Each test starts its runs as its own tool (CN=<tool>, O=toolforge, RBAC in the build namespace
only): a tool's active-run slot is held for 30 s after a run is admitted even when the run is
deleted (policies/slots.py, RESERVATION_GRACE), so sharing mytool/other with test_harness.py would
make the order of the tests matter.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    TEKTON_CONTROLLER_USER,
    ControlPlane,
    Suite,
    wait_for,
)
from tests.e2e.objects import BUILDER, delete_runs, pipelinerun, unique

SECRET = "basic-user-pass"
HARBOR = "https://tools-harbor.wmcloud.org"
CREDENTIAL_FLAG = f"-basic-docker={SECRET}={HARBOR}"
CREDS_SECRETS = "/tekton/creds-secrets"
CREDS = "/tekton/creds"
HOME = "/tekton/home"
TRUSTED = ("step-analyze", "step-restore", "step-export")
TOOL_CODE = ("step-detect", "step-build")
MUTATING = "toolforge-admission-build-pods"
FLAG_NAMES = ("basic-docker", "docker-config", "docker-cfg")




def tool_account(cp: ControlPlane, tool: str) -> pathlib.Path:
    """A tool account that may create runs in the build namespace (no tool namespace needed)."""
    cp.grant(tool, [BUILD_NAMESPACE])
    return cp.user_kubeconfig(tool, ["toolforge"])






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


def after_separator(args: list[str]) -> list[str]:
    return args[args.index("--"):] if "--" in args else []


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """mountPath → volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def probe_pod(name: str) -> str:
    """A pod shaped like a Tekton build pod whose one untrusted step carries the credentials:
    with the mutating webhook registered it is stripped and admitted, without it refused."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": BUILD_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "tekton-pipelines"},
            "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                                 "name": name, "uid": str(uuid.uuid4()),
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "creds", "secret": {"secretName": SECRET}}],
            "containers": [{
                "name": "step-detect", "image": BUILDER,
                "args": [CREDENTIAL_FLAG, "-entrypoint", "/cnb/lifecycle/detector", "--"],
                "volumeMounts": [{"name": "creds", "mountPath": f"{CREDS_SECRETS}/{SECRET}"}],
            }],
        },
    })


def mutation_in_force(cp: ControlPlane) -> bool | None:
    """True when a server dry-run of the probe is stripped and admitted, False when the
    validator refuses it as a credential leak, None for anything else."""
    result = cp.kubectl("create", "--dry-run=server", "-f", "-",
                        input=probe_pod(unique("probe")), check=False)
    if result.returncode == 0:
        return True
    if "BuildCredentialLeak" in result.stderr or "can read registry credentials" in result.stderr:
        return False
    return None


def wait_mutation(cp: ControlPlane, wanted: bool, timeout: float = 30) -> None:
    """The API server's view of webhook configurations follows a watch: wait for it."""
    wait_for(f"the build-pod mutation to be {'in force' if wanted else 'gone'}",
             lambda: mutation_in_force(cp) is wanted, timeout=timeout, interval=0.5)


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


def test_tekton_build_pod_keeps_credentials_in_trusted_steps_only(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    tool = "credstrip"
    account = tool_account(control_plane, tool)
    run = unique(f"{tool}-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, tool)),
                              user=account)
        pod = wait_pod(control_plane, run)
        pod_name = pod["metadata"]["name"]
        live_suite.wait_review(endpoint="mutate-build-pods", name=pod_name)
        # (a reinvocation, if any, finds nothing left to strip: look at every review of it)
        mutations = live_suite.reviews(endpoint="mutate-build-pods", name=pod_name)
        assert {m["user"] for m in mutations} == {TEKTON_CONTROLLER_USER}, mutations
        assert "mutated" in {m["decision"] for m in mutations}, mutations
        validated = live_suite.wait_review(endpoint="validate-pods", name=pod_name)
        assert validated["decision"] in ("allowed", "warned"), validated

        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        secret_volumes = {name for name, v in volumes.items()
                          if v.get("secret", {}).get("secretName") == SECRET}
        assert len(secret_volumes) == 1, secret_volumes
        containers = {c["name"]: c for c in spec["containers"]}
        assert set(TRUSTED) | set(TOOL_CODE) <= set(containers), list(containers)

        # The trusted steps keep exactly what Tekton gave them.
        homes = set()
        for name in TRUSTED:
            step = containers[name]
            paths = mounts(step)
            assert credential_flags(step["args"]) == [CREDENTIAL_FLAG], (name, step["args"])
            assert {p: v for p, v in paths.items() if p.startswith(CREDS_SECRETS)} == {
                f"{CREDS_SECRETS}/{SECRET}": next(iter(secret_volumes))}, (name, paths)
            assert CREDS in paths, (name, paths)
            assert "emptyDir" in volumes[paths[CREDS]], (name, paths)
            assert HOME in paths, (name, paths)
            homes.add(paths[HOME])
        assert len(homes) == 1, homes
        home = homes.pop()
        assert "emptyDir" in volumes[home]

        # Every other container, the tool's code first of all, has none of it left.
        untrusted = [c for c in spec.get("initContainers", []) + spec["containers"]
                     if c["name"] not in TRUSTED]
        assert {c["name"] for c in untrusted} >= set(TOOL_CODE)
        for container in untrusted:
            name = container["name"]
            paths = mounts(container)
            assert not [p for p in paths if p == CREDS_SECRETS
                        or p.startswith(CREDS_SECRETS + "/")], (name, paths)
            assert not secret_volumes & set(paths.values()), (name, paths)
            assert CREDS not in paths, (name, paths)
            assert home not in paths.values(), (name, paths)
            args = container.get("args") or []
            assert credential_flags(args) == [], (name, args)
        # Only the credential flag went; the rest of the step's command is Tekton's.
        for name, entrypoint in (("step-detect", "/cnb/lifecycle/detector"),
                                 ("step-build", "/cnb/lifecycle/builder")):
            args = containers[name]["args"]
            at = args.index("-entrypoint")
            assert args[at + 1] == entrypoint, args
            assert after_separator(args)[:2] == ["--", "-app=/workspace/source/"], args
    finally:
        delete_runs(control_plane, tool)


@pytest.fixture
def without_mutation(control_plane: ControlPlane, live_suite: Suite) -> Iterator[Suite]:
    """The build-pod mutating configuration deleted; registered again afterwards, whatever
    happened, and the test waits until the API server applies it again."""
    wait_mutation(control_plane, True)
    try:
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", MUTATING)
        wait_mutation(control_plane, False)
        yield live_suite
    finally:
        live_suite.register()
        wait_mutation(control_plane, True)
        assert control_plane.kubectl("get", "mutatingwebhookconfiguration",
                                     MUTATING).returncode == 0


def test_without_the_mutating_webhook_the_validator_refuses_the_build_pod(
        control_plane: ControlPlane, without_mutation: Suite) -> None:
    tool = "credleak"
    account = tool_account(control_plane, tool)
    run = unique(f"{tool}-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, tool)),
                              user=account)
        pod_name = f"{run}-build-from-git-pod"  # <run>-<pipeline task>-pod
        denied = without_mutation.wait_review(timeout=120, endpoint="validate-pods",
                                              name=pod_name, operation="CREATE")
        assert denied["user"] == TEKTON_CONTROLLER_USER
        assert denied["decision"] == "denied", denied
        assert denied["reason"] == "BuildCredentialLeak", denied
        for step in TOOL_CODE:
            assert f"untrusted container {step}:" in denied["detail"], denied
        assert without_mutation.reviews(endpoint="mutate-build-pods", name=pod_name) == []

        # The controller could not make the pod, and says so on the TaskRun.
        def refusal() -> str | None:
            control_plane.tekton.check_alive()
            taskruns = control_plane.get_json("-n", BUILD_NAMESPACE, "taskruns", "-l",
                                              f"tekton.dev/pipelineRun={run}")["items"]
            for taskrun in taskruns:
                for condition in taskrun.get("status", {}).get("conditions", []):
                    message = str(condition.get("message", ""))
                    if condition.get("type") == "Succeeded" and "denied" in message:
                        return message
            return None

        message = wait_for(f"the TaskRun of {run} to report the refusal", refusal, 60)
        assert "pods.toolforge-admission.toolforge.org" in message, message
        assert "BuildCredentialLeak" in message or "can read registry credentials" in message, \
            message
        assert control_plane.get_json("-n", BUILD_NAMESPACE, "pods", "-l",
                                      f"tekton.dev/pipelineRun={run}")["items"] == []
    finally:
        delete_runs(control_plane, tool)
