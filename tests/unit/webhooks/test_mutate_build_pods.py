"""`POST /mutate/build-pods`: the captured Tekton reviews in, a JSON patch that strips credentials out."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.builders import EXAMPLE_POLICY
from tests.buildruns import RUN_IMAGE, captured_review
from webhooks.app import EXTENSION, create_app

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "tekton"
PATH = "/mutate/build-pods"
SCENARIOS = {
    "a-taskrun-phases-0.2-basic-auth": {"step-analyze", "step-restore", "step-export"},
    "b-taskrun-phases-0.3-basic-auth": {"step-analyze", "step-export"},
    "c-pipelinerun-phases-0.2-basic-auth": {"step-analyze", "step-restore", "step-export"},
    "d-taskrun-phases-0.2-dockerconfigjson": {"step-analyze", "step-restore", "step-export"},
}
UNTRUSTED = ("step-detect", "step-build")


def body_of(scenario: str) -> bytes:
    """The AdmissionReview exactly as the kube-apiserver POSTed it."""
    return (FIXTURES / scenario / "pod.create.admissionreview.json").read_bytes()


def policy_text(namespace: str, mode: str = "enforce", registries_mode: str = "enforce") -> str:
    """The example policy with its build namespace moved to the scenario's, and chosen modes."""
    text = EXAMPLE_POLICY.read_text()
    text = text.replace("  namespace: image-build\n", f"  namespace: {namespace}\n")
    head, _, rest = text.partition("\nregistries:\n")
    registries, _, credentials = rest.partition("\ncredentials:\n")
    registries = registries.replace("  mode: enforce\n", f"  mode: {registries_mode}\n")
    credentials = credentials.replace("  mode: enforce\n", f"  mode: {mode}\n")
    return f"{head}\nregistries:\n{registries}\ncredentials:\n{credentials}"


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Any]:
    apps: list[Flask] = []

    def make(namespace: str, mode: str = "enforce",
             registries_mode: str = "enforce") -> FlaskClient:
        path = tmp_path / f"{len(apps)}" / "policy.yaml"
        path.parent.mkdir()
        path.write_text(policy_text(namespace, mode, registries_mode))
        app = create_app({"POLICY_FILE": str(path), "POLICY_RELOAD_SECONDS": 0, "TESTING": True})
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions[EXTENSION].source.stop()


def post(client: FlaskClient, body: bytes) -> dict[str, Any]:
    response = client.post(PATH, data=body, content_type="application/json")
    assert response.status_code == 200
    assert response.json is not None
    result: dict[str, Any] = response.json["response"]
    return result


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def reads_credentials(container: dict[str, Any]) -> bool:
    args = container.get("args", [])
    flags = args[: args.index("--")] if "--" in args else args
    return (any(m["mountPath"].startswith("/tekton/creds") for m in container["volumeMounts"])
            or any("docker" in f for f in flags))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_captured_build_pod_gets_a_json_patch_that_strips_untrusted_steps(
        make_client: Any, scenario: str) -> None:
    body = body_of(scenario)
    request = json.loads(body)["request"]
    response = post(make_client(request["namespace"]), body)

    assert response["uid"] == request["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    pod = jsonpatch.apply_patch(request["object"], patch)

    before, after = containers(request["object"]), containers(pod)
    for name in UNTRUSTED:
        assert reads_credentials(before[name])
        assert not reads_credentials(after[name])
    for name in SCENARIOS[scenario]:
        assert after[name] == before[name]


def test_the_patched_pod_sent_again_gets_no_patch(make_client: Any) -> None:
    scenario = "a-taskrun-phases-0.2-basic-auth"
    review = json.loads(body_of(scenario))
    client = make_client(review["request"]["namespace"])
    patch = json.loads(base64.b64decode(post(client, body_of(scenario))["patch"]))
    review["request"]["object"] = jsonpatch.apply_patch(review["request"]["object"], patch)

    response = post(client, json.dumps(review).encode())
    assert response["allowed"] is True
    assert "patch" not in response
    assert "patchType" not in response


def test_an_update_of_a_build_pod_gets_no_patch(make_client: Any) -> None:
    review = json.loads(body_of("a-taskrun-phases-0.2-basic-auth"))
    review["request"]["operation"] = "UPDATE"
    review["request"]["oldObject"] = review["request"]["object"]
    response = post(make_client(review["request"]["namespace"]), json.dumps(review).encode())
    assert response["allowed"] is True
    assert "patch" not in response


def test_a_build_pod_in_another_namespace_gets_no_patch(make_client: Any) -> None:
    response = post(make_client("elsewhere"), body_of("a-taskrun-phases-0.2-basic-auth"))
    assert response["allowed"] is True
    assert "patch" not in response


def test_warn_mode_admits_without_a_patch_and_returns_warnings(make_client: Any) -> None:
    body = body_of("a-taskrun-phases-0.2-basic-auth")
    namespace = json.loads(body)["request"]["namespace"]
    response = post(make_client(namespace, mode="warn"), body)
    assert response["allowed"] is True
    assert "patch" not in response
    assert any("step-detect" in w for w in response["warnings"])


def test_the_creator_task_is_refused_with_the_task_to_use(make_client: Any) -> None:
    review = json.loads(body_of("a-taskrun-phases-0.2-basic-auth"))
    pod = review["request"]["object"]
    create = containers(pod)["step-build"]
    create["name"] = "step-create"
    create["args"][create["args"].index("-entrypoint") + 1] = "/cnb/lifecycle/creator"
    pod["spec"]["containers"] = [create]
    response = post(make_client(review["request"]["namespace"]), json.dumps(review).encode())
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "buildpacks-phases" in response["status"]["message"]
    assert "patch" not in response


# --- defence in depth: /validate/pods refuses a build pod that still carries credentials -------


def test_validate_pods_refuses_a_build_pod_the_mutation_did_not_reach(make_client: Any) -> None:
    body = body_of("a-taskrun-phases-0.2-basic-auth")
    review = json.loads(body)
    # Registry findings only warn here, so the credential rule's verdict is the one returned.
    client = make_client(review["request"]["namespace"], registries_mode="warn")
    response = client.post("/validate/pods", data=body, content_type="application/json").json
    assert response is not None
    assert response["response"]["allowed"] is False
    assert "step-detect" in response["response"]["status"]["message"]
    assert response["response"]["auditAnnotations"]["reason"] == "BuildCredentialLeak"


@pytest.mark.parametrize("run_image", [RUN_IMAGE, None], ids=["run-image", "no-run-image"])
def test_validate_pods_admits_the_build_pod_once_mutated(make_client: Any,
                                                         run_image: str | None) -> None:
    """The pod of a run with RUN_IMAGE; without it (as captured) the export step would take
    its run image from /layers/stack.toml, which the tool's code can write, and is refused."""
    review = captured_review("a-taskrun-phases-0.2-basic-auth", run_image=run_image)
    client = make_client(review["request"]["namespace"], registries_mode="warn")
    patch = json.loads(base64.b64decode(post(client, json.dumps(review).encode())["patch"]))
    review["request"]["object"] = jsonpatch.apply_patch(review["request"]["object"], patch)
    response = client.post("/validate/pods", json=review).json
    assert response is not None
    if run_image is not None:
        assert response["response"]["allowed"] is True
        return
    assert response["response"]["allowed"] is False
    assert response["response"]["status"]["message"].startswith(
        "trusted step step-export names no run image, so the lifecycle would pull the one named "
        'in "/layers/stack.toml", which is on volume layers-dir')


@pytest.mark.parametrize("sub_resource", ["", "ephemeralcontainers"])
def test_validate_pods_refuses_an_update_that_gives_a_container_the_credentials(
        make_client: Any, sub_resource: str) -> None:
    """`kubectl debug` (the pods/ephemeralcontainers subresource) or a plain UPDATE: the pod as
    it would be stored is judged, not only a new one."""
    review = json.loads(body_of("a-taskrun-phases-0.2-basic-auth"))
    client = make_client(review["request"]["namespace"], registries_mode="warn")
    patch = json.loads(base64.b64decode(post(client, body_of(
        "a-taskrun-phases-0.2-basic-auth"))["patch"]))
    stored = jsonpatch.apply_patch(review["request"]["object"], patch)
    updated = json.loads(json.dumps(stored))
    updated["spec"]["ephemeralContainers"] = [{
        "name": "debugger", "image": "docker.io/library/busybox:1",
        "volumeMounts": [{"name": "tekton-creds-57c13d6b", "mountPath": "/s"}]}]
    review["request"].update({"operation": "UPDATE", "object": updated, "oldObject": stored,
                              "subResource": sub_resource})
    response = client.post("/validate/pods", json=review).json
    assert response is not None
    assert response["response"]["allowed"] is False
    assert response["response"]["status"]["message"].startswith(
        "untrusted container debugger: mount /s can read registry credentials")
