"""Toolforge's builds API through the toolforge overlay's policy, on the real control plane.

The suite serves manifests/overlays/toolforge/policy.yaml as it is shipped. The builds API's
ServiceAccount (`image-build:builds-api`, a system user there; tests/e2e/manifests/image-build.yaml
gives it RBAC for PipelineRuns) creates a run exactly as the builds API does (its
internal/build.go `Start`): generateName `<tool>-buildpacks-pipelinerun-`, label `user: <tool>`,
the `buildpacks` pipeline, a taskRunSpecs entry naming the build ServiceAccount for
`build-from-git`, its seven params and three emptyDir workspaces. The run must be admitted, hold
the tool's active-run slot, and its pod (made by the real Tekton controller, as the build
ServiceAccount) must lose the registry credentials in every untrusted step.
"""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

import pytest
import yaml

from tests.e2e.build_pods import (
    CREDS,
    CREDS_SECRETS,
    SECRET,
    TOOL_CODE,
    TRUSTED,
    credential_flags,
    mounts,
    wait_pod,
)
from tests.e2e.cluster import BUILD_NAMESPACE, REPO, TEKTON_CONTROLLER_USER, ControlPlane, Suite
from tests.pipelineruns import builds_api_run

OVERLAY_POLICY = REPO / "manifests" / "overlays" / "toolforge" / "policy.yaml"
BUILDS_API = "system:serviceaccount:image-build:builds-api"
DENIED = 'admission webhook "pipelineruns.toolforge-admission.toolforge.org" denied the request'


def create(cp: ControlPlane, run: dict[str, Any], account: pathlib.Path) -> Any:
    return cp.kubectl("create", "-o", "name", "-f", "-", input=yaml.safe_dump(run),
                      user=account, check=False)


@pytest.fixture
def builds_api(control_plane: ControlPlane, default_policy: Suite,
               ) -> tuple[Suite, pathlib.Path]:
    """The suite serving the toolforge overlay's policy (`default_policy` puts the test policy
    back afterwards), and the builds API's kubeconfig."""
    default_policy.set_policy(OVERLAY_POLICY.read_text())
    return default_policy, control_plane.service_account_kubeconfig(BUILD_NAMESPACE, "builds-api")


def test_the_builds_apis_run_is_admitted_counted_and_its_pod_stripped(
        control_plane: ControlPlane, builds_api: tuple[Suite, pathlib.Path]) -> None:
    suite, account = builds_api
    tool = f"ba{uuid.uuid4().hex[:8]}"
    try:
        result = create(control_plane, builds_api_run(tool), account)
        assert result.returncode == 0, result.stderr
        name = result.stdout.strip().removeprefix("pipelinerun.tekton.dev/")
        assert name.startswith(f"{tool}-buildpacks-pipelinerun-"), name
        entry = suite.wait_review(endpoint="validate-pipelineruns", name=name, operation="CREATE")
        assert entry["decision"] == "allowed", entry
        assert entry["user"] == BUILDS_API

        # Counted: the overlay allows one active run per tool, so the next start is refused and
        # told which run holds the slot.
        again = create(control_plane, builds_api_run(tool), account)
        assert again.returncode != 0
        assert DENIED in again.stderr, again.stderr
        assert f"the tool {tool} already has 1 active PipelineRun(s) and may have at most 1: " \
               f"{BUILD_NAMESPACE}/{name}" in again.stderr

        # Tekton runs the build-from-git task as the build ServiceAccount; its pod is stripped.
        pod = wait_pod(control_plane, name)
        assert pod["spec"]["serviceAccountName"] == "buildpacks-service-account"
        pod_name = pod["metadata"]["name"]
        mutations = suite.reviews(endpoint="mutate-build-pods", name=pod_name)
        assert {m["user"] for m in mutations} == {TEKTON_CONTROLLER_USER}, mutations
        assert "mutated" in {m["decision"] for m in mutations}, mutations
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        for step in TRUSTED:
            assert credential_flags(containers[step]["args"]), (step, containers[step]["args"])
        for step in TOOL_CODE:
            paths = mounts(containers[step])
            assert CREDS not in paths, (step, paths)
            assert not [p for p in paths if p.startswith(CREDS_SECRETS)], (step, paths)
            assert credential_flags(containers[step]["args"]) == [], containers[step]["args"]
        assert any(v.get("secret", {}).get("secretName") == SECRET
                   for v in pod["spec"]["volumes"])
        # The controller's own updates of the run (its labels) pass the owner rule.
        assert suite.reviews(name=name, operation="UPDATE", decision="denied") == []
    finally:
        # As the builds API cleans up (an admin is no system user in the overlay's policy).
        control_plane.kubectl("delete", "pipelineruns", "-n", BUILD_NAMESPACE, "-l",
                              f"user={tool}", "--wait=true", user=account, timeout=120)
