"""The registry policy in a real cluster, driven the way a tool drives it: with kubectl.

Every command here runs as the tool mytool (client certificate CN=mytool, O=toolforge) unless it
says otherwise. Pods stay Pending (there is no kubelet), which does not matter to admission.
"""

from __future__ import annotations

import datetime
import pathlib
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from tests.e2e.cluster import ControlPlane, Suite, ensure_namespaces
from tests.e2e.objects import pod_manifest, unique

NAMESPACE = "tool-mytool"
WEBHOOK = 'admission webhook "pods.toolforge-admission.toolforge.org" denied the request'
TOOL_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/app:1"
WMFLABS_IMAGE = "docker-registry.tools.wmflabs.org/toolforge-python311-sssd-base:latest"
ALLOWED_PREFIXES = (
    "tools-harbor.wmcloud.org/tool-mytool",
    "tools-harbor.wmcloud.org/toolforge",
    "docker-registry.tools.wmflabs.org",
    "docker-registry.svc.toolforge.org",
)
BYOC_PREFIX = "quay.io/example-org"
BYOC_IMAGE = f"{BYOC_PREFIX}/app:1"




def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


@pytest.fixture
def pods(control_plane: ControlPlane) -> Iterator[list[str]]:
    """Names of pods a test made in tool-mytool; deleted (as the admin) afterwards."""
    names: list[str] = []
    yield names
    if names:
        control_plane.kubectl("-n", NAMESPACE, "delete", "pod", *names, "--ignore-not-found",
                              "--wait=false", check=False)


def run_pod(cp: ControlPlane, user: pathlib.Path, name: str, image: str,
            namespace: str = NAMESPACE, check: bool = False,
            ) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("-n", namespace, "run", name, f"--image={image}", "--restart=Never",
                      user=user, check=check)


def policy_with_exception(default_text: str, expires: datetime.date) -> str:
    policy = yaml.safe_load(default_text)
    policy["registries"]["exceptions"][NAMESPACE] = [
        {"prefix": BYOC_PREFIX, "expires": expires.isoformat()}]
    return yaml.safe_dump(policy)


def avoid_midnight() -> None:
    """The exception tests compare against the suite's UTC day; do not straddle midnight."""
    now = datetime.datetime.now(datetime.UTC)
    if now.hour == 23 and now.minute >= 58:
        pytest.skip("too close to midnight UTC for a test about today's date")


def test_kubectl_run_with_a_disallowed_image_is_refused_with_a_clear_message(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    name = unique("web")
    pods.append(name)
    result = run_pod(control_plane, mytool, name, "nginx")
    assert result.returncode != 0, result.stdout
    message = result.stderr
    assert WEBHOOK in message, message
    assert f'container "{name}"' in message, message
    assert 'image "nginx"' in message, message
    assert "docker.io/library/nginx" in message, message
    assert "not under an allowed prefix" in message, message
    for prefix in ALLOWED_PREFIXES:
        assert prefix in message, (prefix, message)
    assert control_plane.kubectl("-n", NAMESPACE, "get", "pod", name,
                                 check=False).returncode != 0
    entry = live_suite.wait_review(endpoint="validate-pods", namespace=NAMESPACE, name=name)
    assert entry["decision"] == "denied", entry
    assert entry["user"] == "mytool"
    assert entry["reason"] == "ImageNotAllowed", entry


def test_kubectl_run_with_an_allowed_image_passes(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    for image in (TOOL_IMAGE, WMFLABS_IMAGE):
        name = unique("app")
        pods.append(name)
        result = run_pod(control_plane, mytool, name, image)
        assert result.returncode == 0, result.stderr
        assert f"pod/{name} created" in result.stdout
        entry = live_suite.wait_review(endpoint="validate-pods", namespace=NAMESPACE, name=name)
        assert entry["decision"] == "allowed", entry


def test_kubectl_create_deployment_with_a_disallowed_image_is_refused_at_once(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    name = unique("web")
    result = control_plane.kubectl("-n", NAMESPACE, "create", "deployment", name,
                                   "--image=nginx", user=mytool, check=False)
    try:
        assert result.returncode != 0, result.stdout
        assert WEBHOOK in result.stderr, result.stderr
        assert "docker.io/library/nginx" in result.stderr
        assert control_plane.kubectl("-n", NAMESPACE, "get", "deployment", name,
                                     check=False).returncode != 0
        entry = live_suite.wait_review(endpoint="validate-pods", namespace=NAMESPACE,
                                       name=name, kind="Deployment")
        assert entry["decision"] == "denied", entry
    finally:
        control_plane.kubectl("-n", NAMESPACE, "delete", "deployment", name,
                              "--ignore-not-found", check=False)


def test_kubectl_debug_with_a_disallowed_ephemeral_container_is_refused(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    name = unique("app")
    pods.append(name)
    run_pod(control_plane, mytool, name, TOOL_IMAGE, check=True)
    result = control_plane.kubectl("-n", NAMESPACE, "debug", name, "--image=busybox",
                                   "--container=debugger", user=mytool, check=False)
    assert result.returncode != 0, result.stdout
    assert WEBHOOK in result.stderr, result.stderr
    assert 'ephemeralContainer "debugger"' in result.stderr, result.stderr
    assert "docker.io/library/busybox" in result.stderr
    # The pods/ephemeralcontainers subresource reaches the pods endpoint as an UPDATE of the pod.
    entry = live_suite.wait_review(endpoint="validate-pods", namespace=NAMESPACE, name=name,
                                   operation="UPDATE", decision="denied")
    assert entry["kind"] == "Pod"
    assert entry["user"] == "mytool"
    pod = control_plane.get_json("-n", NAMESPACE, "pod", name)
    assert not pod["spec"].get("ephemeralContainers"), pod["spec"]


def test_an_image_volume_from_a_disallowed_registry_is_refused(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    # The kubelet pulls an image volume as it pulls a container's image.
    name = unique("models")
    pods.append(name)
    pod = yaml.safe_load(pod_manifest(name, NAMESPACE))
    pod["spec"]["volumes"] = [{"name": "weights",
                               "image": {"reference": "quay.io/someone/weights:1"}}]
    result = control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pod), user=mytool,
                                   check=False)
    assert result.returncode != 0, result.stdout
    assert WEBHOOK in result.stderr, result.stderr
    assert 'volume "weights" image "quay.io/someone/weights:1"' in result.stderr
    entry = live_suite.wait_review(endpoint="validate-pods", namespace=NAMESPACE, name=name)
    assert entry["decision"] == "denied", entry


def test_kubectl_set_image_to_a_disallowed_image_is_refused(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    name = unique("app")
    pods.append(name)
    run_pod(control_plane, mytool, name, TOOL_IMAGE, check=True)
    result = control_plane.kubectl("-n", NAMESPACE, "set", "image", f"pod/{name}",
                                   f"{name}=nginx", user=mytool, check=False)
    assert result.returncode != 0, result.stdout
    assert WEBHOOK in result.stderr, result.stderr
    assert "docker.io/library/nginx" in result.stderr
    entry = live_suite.wait_review(endpoint="validate-pods", namespace=NAMESPACE, name=name,
                                   operation="UPDATE", decision="denied")
    assert entry["user"] == "mytool"
    pod = control_plane.get_json("-n", NAMESPACE, "pod", name)
    assert [c["image"] for c in pod["spec"]["containers"]] == [TOOL_IMAGE]


def test_relabelling_a_pod_whose_registry_was_since_removed_passes(
        control_plane: ControlPlane, default_policy: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    name = unique("old")
    pods.append(name)
    run_pod(control_plane, mytool, name, WMFLABS_IMAGE, check=True)
    policy = yaml.safe_load(default_policy.default_policy)
    policy["registries"]["allowed"] = [p for p in policy["registries"]["allowed"]
                                       if p != "docker-registry.tools.wmflabs.org"]
    default_policy.set_policy(yaml.safe_dump(policy))
    # The shrunk policy is in force: a new pod from that registry is refused now.
    refused = run_pod(control_plane, mytool, unique("new"), WMFLABS_IMAGE)
    assert refused.returncode != 0, refused.stdout
    assert WEBHOOK in refused.stderr, refused.stderr
    # The old pod can still be relabelled (the spec is unchanged, so the API server does not
    # even ask the suite).
    result = control_plane.kubectl("-n", NAMESPACE, "label", "pod", name, "team=blue",
                                   user=mytool, check=False)
    assert result.returncode == 0, result.stderr
    pod = control_plane.get_json("-n", NAMESPACE, "pod", name)
    assert pod["metadata"]["labels"]["team"] == "blue"
    assert default_policy.reviews(name=name, operation="UPDATE") == []


def test_an_exception_namespace_uses_its_registry_until_the_exception_expires(
        control_plane: ControlPlane, default_policy: Suite, mytool: pathlib.Path,
        pods: list[str]) -> None:
    avoid_midnight()
    # Without an exception the image is refused.
    refused = run_pod(control_plane, mytool, unique("byoc"), BYOC_IMAGE)
    assert refused.returncode != 0, refused.stdout
    assert WEBHOOK in refused.stderr, refused.stderr

    tomorrow = utc_today() + datetime.timedelta(days=1)
    default_policy.set_policy(policy_with_exception(default_policy.default_policy, tomorrow))
    name = unique("byoc")
    pods.append(name)
    result = run_pod(control_plane, mytool, name, BYOC_IMAGE)
    assert result.returncode == 0, result.stderr
    assert default_policy.wait_review(endpoint="validate-pods", name=name)["decision"] == "allowed"

    today = utc_today()
    default_policy.set_policy(policy_with_exception(default_policy.default_policy, today))
    name = unique("byoc")
    pods.append(name)
    result = run_pod(control_plane, mytool, name, BYOC_IMAGE)
    assert result.returncode != 0, result.stdout
    assert WEBHOOK in result.stderr, result.stderr
    assert f"the exception for {BYOC_PREFIX} ended on {today.isoformat()}" in result.stderr, \
        result.stderr
    assert default_policy.wait_review(endpoint="validate-pods", name=name)["decision"] == "denied"


def test_kube_system_is_untouched(control_plane: ControlPlane, live_suite: Suite,
                                  mytool: pathlib.Path, pods: list[str]) -> None:
    name = unique("system")
    try:
        result = control_plane.kubectl("-n", "kube-system", "run", name, "--image=nginx",
                                       "--restart=Never", check=False)
        assert result.returncode == 0, result.stderr
        assert f"pod/{name} created" in result.stdout
        # A request that was sent would be logged by now: make one that is, and wait for it.
        marker = unique("app")
        pods.append(marker)
        run_pod(control_plane, mytool, marker, TOOL_IMAGE, check=True)
        live_suite.wait_review(endpoint="validate-pods", name=marker)
        assert live_suite.reviews(namespace="kube-system") == []
        assert live_suite.reviews(name=name) == []
    finally:
        control_plane.kubectl("-n", "kube-system", "delete", "pod", name, "--ignore-not-found",
                              "--wait=false", check=False)


def test_a_tool_with_a_double_dash_may_run_the_image_it_built(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    # The builds API pushes the tool a--b's images to tool-a-char.sep-b (Harbor allows no two
    # separators in a row); {harborProject} in the allow-list names that project.
    namespace = "tool-a--b"
    ensure_namespaces(control_plane, [namespace])
    control_plane.grant("a--b", [namespace])
    account = control_plane.user_kubeconfig("a--b", ["toolforge"])
    built, raw = (unique("built"), unique("raw"))
    try:
        result = run_pod(control_plane, account, built,
                         "tools-harbor.wmcloud.org/tool-a-char.sep-b/tool-a-char.sep-b:latest",
                         namespace=namespace)
        assert result.returncode == 0, result.stderr
        # The raw name is a project Harbor never has, nor is it the tool's.
        result = run_pod(control_plane, account, raw,
                         "tools-harbor.wmcloud.org/tool-a--b/app:latest", namespace=namespace)
        assert result.returncode != 0
        assert WEBHOOK in result.stderr, result.stderr
        assert "Use images under one of: tools-harbor.wmcloud.org/tool-a-char.sep-b," \
            in result.stderr
    finally:
        control_plane.kubectl("-n", namespace, "delete", "pod", built, raw, "--ignore-not-found",
                              "--wait=false", check=False)
