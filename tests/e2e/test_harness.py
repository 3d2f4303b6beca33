"""The suite in a real cluster: requests reach it, it fails closed, its scope holds, Tekton works."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    TEKTON_CONTROLLER_USER,
    ControlPlane,
    Suite,
    point_at,
    project_webhook_configurations,
    wait_for,
)
from tests.e2e.objects import (
    delete_runs,
    pipelinerun,
    pod_manifest,
    unique,
)

ANYWHERE_IMAGE = "docker-registry.tools.wmflabs.org/toolforge-python311-sssd-base:latest"
REVIEWS = "toolforge_admission_reviews_total"










def test_a_pod_create_reaches_the_suite_and_is_admitted(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    before = live_suite.metric(REVIEWS, endpoint="validate-pods", operation="CREATE",
                               decision="allowed")
    name = unique("app")
    result = control_plane.kubectl("create", "-f", "-", input=pod_manifest(name, "tool-mytool"),
                                   user=mytool)
    assert f"pod/{name} created" in result.stdout
    entry = live_suite.wait_review(endpoint="validate-pods", namespace="tool-mytool", name=name)
    assert entry["operation"] == "CREATE"
    assert entry["user"] == "mytool"
    assert entry["decision"] == "allowed", entry
    after = live_suite.metric(REVIEWS, endpoint="validate-pods", operation="CREATE",
                              decision="allowed")
    assert after >= before + 1


def test_a_pod_from_an_unknown_registry_is_refused_by_the_real_api_server(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    name = unique("evil")
    result = control_plane.kubectl(
        "create", "-f", "-", input=pod_manifest(name, "tool-mytool", "docker.io/library/nginx"),
        user=mytool, check=False)
    assert result.returncode != 0
    assert 'admission webhook "pods.toolforge-admission.toolforge.org" denied the request' \
        in result.stderr, result.stderr
    assert live_suite.wait_review(endpoint="validate-pods", name=name)["decision"] == "denied"


def test_a_pipelinerun_create_reaches_the_suite_and_is_admitted(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    before = live_suite.metric(REVIEWS, endpoint="validate-pipelineruns", operation="CREATE")
    name = unique("mytool-buildpacks-pipelinerun")
    try:
        result = control_plane.kubectl("create", "-f", "-",
                                       input=yaml.safe_dump(pipelinerun(name, "mytool")),
                                       user=mytool, check=False)
        assert result.returncode == 0, result.stderr
        entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=name,
                                       operation="CREATE")
        assert entry["user"] == "mytool"
        assert entry["namespace"] == BUILD_NAMESPACE
        assert entry["decision"] in ("allowed", "warned"), entry
        assert live_suite.metric(REVIEWS, endpoint="validate-pipelineruns",
                                 operation="CREATE") >= before + 1
    finally:
        delete_runs(control_plane, "mytool")


def test_with_the_suite_stopped_creates_fail_closed(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    live_suite.stop()
    try:
        name = unique("app")
        result = control_plane.kubectl(
            "create", "-f", "-", input=pod_manifest(name, "tool-mytool"), user=mytool,
            check=False)
        assert result.returncode != 0
        assert "failed calling webhook" in result.stderr, result.stderr
        assert "pods.toolforge-admission.toolforge.org" in result.stderr
        assert control_plane.kubectl("-n", "tool-mytool", "get", "pod", name,
                                     check=False).returncode != 0

        run = unique("mytool-buildpacks-pipelinerun")
        result = control_plane.kubectl("create", "-f", "-",
                                       input=yaml.safe_dump(pipelinerun(run, "mytool")),
                                       user=mytool, check=False)
        assert result.returncode != 0
        assert "failed calling webhook" in result.stderr, result.stderr
    finally:
        live_suite.start()
    # And once it is back, the same create goes through.
    name = unique("app")
    control_plane.kubectl("create", "-f", "-", input=pod_manifest(name, "tool-mytool"),
                          user=mytool)


def test_kube_system_is_never_sent_to_the_suite(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    name = unique("system")
    control_plane.kubectl("create", "-f", "-",
                          input=pod_manifest(name, "kube-system", "docker.io/library/busybox"))
    # A request that was sent would be logged by now: make one that is, and wait for it.
    marker = unique("app")
    control_plane.kubectl("create", "-f", "-", input=pod_manifest(marker, "tool-mytool"))
    live_suite.wait_review(endpoint="validate-pods", name=marker)
    assert live_suite.reviews(namespace="kube-system") == []
    assert live_suite.reviews(name=name) == []


def test_tekton_makes_a_build_pod_that_reaches_the_mutating_webhook(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    tool_kubeconfig = control_plane.tool_kubeconfig("other")
    name = unique("other-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-",
                              input=yaml.safe_dump(pipelinerun(name, "other")),
                              user=tool_kubeconfig)

        def pods() -> list[dict[str, Any]]:
            control_plane.tekton.check_alive()
            items: list[dict[str, Any]] = control_plane.get_json(
                "-n", BUILD_NAMESPACE, "pods", "-l", f"tekton.dev/pipelineRun={name}")["items"]
            return items

        pod = wait_for(f"Tekton to make the pod of {name}", pods, timeout=120)[0]
        pod_name = pod["metadata"]["name"]
        taskruns = control_plane.get_json("-n", BUILD_NAMESPACE, "taskruns", "-l",
                                          f"tekton.dev/pipelineRun={name}")["items"]
        assert [t["metadata"]["name"] for t in taskruns] == [f"{name}-build-from-git"]

        mutated = live_suite.wait_review(endpoint="mutate-build-pods", name=pod_name)
        assert mutated["user"] == TEKTON_CONTROLLER_USER
        assert mutated["decision"] in ("allowed", "mutated"), mutated
        validated = live_suite.wait_review(endpoint="validate-pods", name=pod_name)
        assert validated["decision"] in ("allowed", "warned"), validated

        # The build pod keeps registry credentials in the trusted steps only.
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        assert "step-export" in containers
        for step in ("step-detect", "step-build"):
            mounts = [m["mountPath"] for m in containers[step].get("volumeMounts", [])]
            assert not any(p.startswith("/tekton/creds-secrets") for p in mounts), (step, mounts)
    finally:
        delete_runs(control_plane, "other")


def broken_copy(name: str, namespace: str, *, url: str, ca_pem: bytes) -> dict[str, Any]:
    """The pods webhook, registered again under another name, limited to one namespace."""
    source = next(c for c in project_webhook_configurations()
                  if c["metadata"]["name"] == "toolforge-admission-pods")
    configuration = point_at(source, url, ca_pem)
    configuration["metadata"] = {"name": name}
    for webhook in configuration["webhooks"]:
        webhook["name"] = f"broken.{webhook['name']}"
        webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return configuration


def test_a_wrong_ca_bundle_or_path_makes_creates_fail(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    import datetime

    from certs.issue import new_ca

    namespace = unique("e2e-broken")
    control_plane.create_namespace(namespace)
    control_plane.wait_service_account(namespace)
    other_ca = new_ca("not the suite's CA", datetime.datetime.now(datetime.UTC),
                      datetime.timedelta(days=1)).cert_pem
    cases = {
        "wrong-ca": (live_suite.base_url, other_ca, "x509"),
        # The suite answers an unknown path with a JSON Status, which the API server relays.
        "wrong-path": (f"{live_suite.base_url}/no-such", live_suite.ca_pem,
                       "no such path; the admission endpoints are"),
    }
    try:
        for case, (url, ca_pem, expected) in cases.items():
            name = f"e2e-{case}-{namespace}"
            control_plane.apply([broken_copy(name, namespace, url=url, ca_pem=ca_pem)])
            try:
                # Allowed in any namespace, so only the broken copy can refuse it; it takes
                # effect once the API server's watch delivers it.
                def refused(namespace: str = namespace) -> Any:
                    result = control_plane.kubectl(
                        "create", "-f", "-",
                        input=pod_manifest(unique("app"), namespace, ANYWHERE_IMAGE),
                        check=False)
                    return result if result.returncode != 0 else None

                result = wait_for(f"the {case} configuration to take effect", refused, 20)
                assert "failed calling webhook" in result.stderr, (case, result.stderr)
                assert "broken.pods.toolforge-admission.toolforge.org" in result.stderr
                assert expected in result.stderr, (case, result.stderr)
            finally:
                control_plane.kubectl("delete", "validatingwebhookconfiguration", name)
        # With the broken copies gone (the API server's view of webhook configurations follows a
        # watch, so it takes a moment), the same create goes through the real configuration.
        wait_for("the broken configurations to be gone", lambda: control_plane.kubectl(
            "create", "-f", "-", input=pod_manifest(unique("app"), namespace, ANYWHERE_IMAGE),
            check=False).returncode == 0, timeout=20)
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_person_named_like_a_tool_cannot_start_its_builds(
        control_plane: ControlPlane, live_suite: Suite, person: pathlib.Path) -> None:
    name = unique("mytool-buildpacks-pipelinerun")
    try:
        result = control_plane.kubectl("create", "-f", "-",
                                       input=yaml.safe_dump(pipelinerun(name, "mytool")),
                                       user=person, check=False)
        assert result.returncode != 0
        assert "denied the request" in result.stderr, result.stderr
        assert "toolforge" in result.stderr
    finally:
        delete_runs(control_plane, "mytool")


def test_a_policy_edit_reaches_every_worker(
        control_plane: ControlPlane, default_policy: Suite, mytool: pathlib.Path) -> None:
    policy = yaml.safe_load(default_policy.default_policy)
    policy["registries"]["mode"] = "warn"
    text = yaml.safe_dump(policy)
    default_policy.set_policy(text)
    name = unique("warned")
    result = control_plane.kubectl(
        "create", "-f", "-", input=pod_manifest(name, "tool-mytool", "docker.io/library/nginx"),
        user=mytool)
    assert "Warning:" in result.stderr, result.stderr
    assert default_policy.wait_review(endpoint="validate-pods", name=name)["decision"] == "warned"
