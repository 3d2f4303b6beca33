"""`POST /validate/pods` round trips: the registry allow-list as the API server sees it."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.builders import make_review
from webhooks.app import EXTENSION, create_app

PATH = "/validate/pods"
HARBOR = "tools-harbor.wmcloud.org"
OWN = f"{HARBOR}/tool-mytool/app:1"
NOW = datetime.datetime(2027, 6, 29, 12, 0, tzinfo=datetime.UTC)
POLICY = f"""
exemptNamespaces: [kube-system]
registries:
  allowed: ["{HARBOR}/tool-{{tool}}", "{HARBOR}/toolforge", docker-registry.svc.toolforge.org]
  exceptions:
    tool-byoc: [{{prefix: quay.io/example-org, expires: 2027-06-30}}]
"""
SHRUNK = f"""
registries:
  allowed: ["{HARBOR}/tool-{{tool}}"]
"""
KINDS = {
    "replicasets": ("apps", "v1", "ReplicaSet"),
    "statefulsets": ("apps", "v1", "StatefulSet"),
    "daemonsets": ("apps", "v1", "DaemonSet"),
    "jobs": ("batch", "v1", "Job"),
    "cronjobs": ("batch", "v1", "CronJob"),
}


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def app(policy_path: Path) -> Iterator[Flask]:
    app = create_app({"POLICY_FILE": str(policy_path), "POLICY_RELOAD_SECONDS": 0,
                      "TESTING": True, "CLOCK": lambda: NOW})
    yield app
    app.extensions[EXTENSION].source.stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def make_pod(image: str = OWN, *, ephemeral: str | None = None,
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "tool-mytool", "labels": labels or {}},
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"phase": "Running"},
    }
    if ephemeral is not None:
        pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": ephemeral}]
    return pod


def make_template_object(kind: str, image: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "app", "image": image}]}}
    spec: dict[str, Any] = ({"schedule": "@hourly", "jobTemplate": {"spec": {"template": template}}}
                            if kind == "CronJob" else {"template": template})
    return {"kind": kind, "metadata": {"name": "app"}, "spec": spec}


def post(client: FlaskClient, review: dict[str, Any]) -> dict[str, Any]:
    response = client.post(PATH, json=review)
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    answer: dict[str, Any] = body["response"]
    assert answer["uid"] == review["request"]["uid"]
    # A validating webhook never patches (the API server refuses such an answer).
    assert "patch" not in answer
    assert "patchType" not in answer
    return answer


def assert_denied(answer: dict[str, Any], *fragments: str) -> str:
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert answer["status"]["reason"] == "Forbidden"
    message: str = answer["status"]["message"]
    for fragment in fragments:
        assert fragment in message
    return message


def test_kubectl_run_with_an_image_from_the_tools_project_is_allowed(client: FlaskClient,
                                                                    ) -> None:
    answer = post(client, make_review(make_pod(OWN)))
    assert answer["allowed"] is True
    assert "status" not in answer


def test_kubectl_run_nginx_is_denied_with_what_to_change(client: FlaskClient) -> None:
    message = assert_denied(post(client, make_review(make_pod("nginx"))))
    assert message == (
        '1 image is not allowed in namespace "tool-mytool": container "app" image '
        '"nginx" (docker.io/library/nginx) is not under an allowed prefix. Use images under one '
        f"of: {HARBOR}/tool-mytool, {HARBOR}/toolforge, docker-registry.svc.toolforge.org; or "
        "ask the platform admins for an exception.")
    assert post(client, make_review(make_pod("nginx")))["auditAnnotations"] == {
        "reason": "ImageNotAllowed", "findings": "1"}


def test_kubectl_create_deployment_with_nginx_is_denied(client: FlaskClient) -> None:
    review = make_review(make_template_object("Deployment", "nginx"), resource="deployments")
    assert_denied(post(client, review), 'container "app" image "nginx"')


@pytest.mark.parametrize("resource", list(KINDS))
def test_other_workload_templates_are_checked(client: FlaskClient, resource: str) -> None:
    kind = KINDS[resource]
    denied = make_review(make_template_object(kind[2], "quay.io/x/y"), resource=resource,
                         kind=kind)
    assert_denied(post(client, denied), 'image "quay.io/x/y"')
    allowed = make_review(make_template_object(kind[2], OWN), resource=resource, kind=kind)
    assert post(client, allowed)["allowed"] is True


def test_kubectl_debug_with_a_disallowed_image_is_denied(client: FlaskClient) -> None:
    review = make_review(make_pod(OWN, ephemeral="busybox:1.36"), operation="UPDATE",
                         old=make_pod(OWN), sub_resource="ephemeralcontainers")
    assert_denied(post(client, review),
                  'ephemeralContainer "debugger" image "busybox:1.36" (docker.io/library/busybox)')


def test_kubectl_debug_with_the_tools_own_image_is_allowed(client: FlaskClient) -> None:
    review = make_review(make_pod(OWN, ephemeral=f"{HARBOR}/toolforge/debug:1"),
                         operation="UPDATE", old=make_pod(OWN), sub_resource="ephemeralcontainers")
    assert post(client, review)["allowed"] is True


def test_kubectl_set_image_to_a_disallowed_image_is_denied(client: FlaskClient) -> None:
    review = make_review(make_pod("registry.example/app:2"), operation="UPDATE",
                         old=make_pod(OWN))
    assert_denied(post(client, review), 'container "app" image "registry.example/app:2"')


def test_a_relabel_after_the_allow_list_shrank_is_allowed(app: Flask, client: FlaskClient,
                                                         policy_path: Path) -> None:
    old = make_pod("docker-registry.svc.toolforge.org/python:3.11")
    policy_path.write_text(SHRUNK)
    assert app.extensions[EXTENSION].source.refresh()
    assert_denied(post(client, make_review(old)))  # a new pod with it is refused now
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"]["team"] = "blue"
    answer = post(client, make_review(relabelled, operation="UPDATE", old=old))
    assert answer["allowed"] is True


@pytest.mark.parametrize(("clock", "allowed"), [
    pytest.param(datetime.datetime(2027, 6, 29, 23, 59, tzinfo=datetime.UTC), True,
                 id="before-expiry"),
    pytest.param(datetime.datetime(2027, 6, 30, 0, 0, tzinfo=datetime.UTC), False,
                 id="on-expiry-day"),
])
def test_an_exception_applies_until_it_expires(policy_path: Path, clock: datetime.datetime,
                                               allowed: bool) -> None:
    app = create_app({"POLICY_FILE": str(policy_path), "POLICY_RELOAD_SECONDS": 0,
                      "TESTING": True, "CLOCK": lambda: clock})
    try:
        review = make_review(make_pod("quay.io/example-org/app:1"), namespace="tool-byoc")
        assert post(app.test_client(), review)["allowed"] is allowed
    finally:
        app.extensions[EXTENSION].source.stop()


def test_an_exempt_namespace_is_not_checked(client: FlaskClient) -> None:
    review = make_review(make_pod("nginx"), namespace="kube-system", username="admin",
                         groups=("system:masters",))
    assert post(client, review)["allowed"] is True


def test_warn_mode_admits_with_warnings(app: Flask, client: FlaskClient,
                                        policy_path: Path) -> None:
    policy_path.write_text(POLICY.replace("registries:\n", "registries:\n  mode: warn\n"))
    assert app.extensions[EXTENSION].source.refresh()
    answer = post(client, make_review(make_pod("nginx")))
    assert answer["allowed"] is True
    assert "status" not in answer
    assert answer["warnings"][0].startswith('container "app" image "nginx"')
    assert answer["auditAnnotations"]["mode"] == "warn"


def test_an_unparsable_image_is_denied_with_the_reason(client: FlaskClient) -> None:
    assert_denied(post(client, make_review(make_pod(f"{HARBOR}/tool-mytool/App:1"))),
                  "is not a valid image reference (repository names must be lower case)")
