"""Pods of the build namespace as stored: who made them.

The pods are the captured ones (tests/fixtures/tekton), mutated as the API server stores them;
the PipelineRun they belong to is made from the pod's own references (tests/buildruns.py).
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from policies.buildruns import POD_NOT_FROM_CONTROLLER
from policies.credentials import CREDENTIAL_LEAK, check_build_pod, strip_build_credentials
from policies.identity import User
from policies.model import Policy, parse_policy
from tests.buildruns import CONTROLLER, PIPELINERUN_POD, captured_pod
from tests.conftest import EXAMPLE_POLICY

POLICY = parse_policy(EXAMPLE_POLICY.read_bytes())
NAMESPACE = "image-build"
TEKTON = User(CONTROLLER, ("system:serviceaccounts", "system:authenticated"))
TOOL = User("mytool", ("toolforge", "system:authenticated"))


def stored(scenario: str = PIPELINERUN_POD, policy: Policy = POLICY) -> dict[str, Any]:
    """The captured pod, with the build-pod mutation applied (as the validator sees it)."""
    pod = captured_pod(scenario)
    decision = strip_build_credentials(pod, NAMESPACE, "CREATE", policy)
    assert decision.allowed
    assert decision.patched is not None
    patched: dict[str, Any] = jsonpatch.make_patch(pod, decision.patched).apply(pod)
    return patched


def step(pod: dict[str, Any], name: str) -> dict[str, Any]:
    container: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    return container


def check(pod: dict[str, Any], *, operation: str = "CREATE", user: User = TEKTON) -> Any:
    return check_build_pod(pod, NAMESPACE, operation, user, policy=POLICY)


# --- who makes and changes pods -----------------------------------------------------------------


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_only_the_tekton_controller_makes_or_changes_build_pods(operation: str) -> None:
    pod = stored()
    decision = check(pod, operation=operation, user=TOOL)
    assert not decision.allowed
    assert decision.reason == POD_NOT_FROM_CONTROLLER
    verb = "creates" if operation == "CREATE" else "changes"
    assert decision.message.startswith(
        f"only the Tekton controller ({CONTROLLER}) {verb} pods in the build namespace "
        'image-build; user "mytool" may not')


def test_pods_elsewhere_are_not_this_rules() -> None:
    pod = stored()
    assert check_build_pod(pod, "tool-mytool", "CREATE", TOOL, policy=POLICY).allowed
    assert check(pod, operation="DELETE", user=TOOL).allowed


def test_a_plain_pod_mounting_the_registry_secret_is_refused_even_from_the_controller() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "plain", "namespace": NAMESPACE},
           "spec": {"volumes": [{"name": "creds", "secret": {"secretName": "basic-user-pass"}}],
                    "containers": [{"name": "step-export", "image": "busybox",
                                    "volumeMounts": [{"name": "creds", "mountPath": "/c"}]}]}}
    decision = check(pod)
    assert not decision.allowed
    assert decision.reason == CREDENTIAL_LEAK
    assert decision.message.startswith("untrusted container step-export: mount /c can read")
    assert check(pod, user=TOOL).reason == POD_NOT_FROM_CONTROLLER


def test_the_controllers_own_update_of_a_stored_build_pod_passes() -> None:
    """Tekton swaps finished sidecars' images for its nop image: a spec change, by it."""
    pod = stored()
    step(pod, "step-results")["image"] = "ghcr.io/tektoncd/pipeline/nop:v1.15.1"
    assert check(pod, operation="UPDATE").allowed
