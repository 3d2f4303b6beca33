"""The HTTP edge: every endpoint answers the API server's envelope; bad requests get a 4xx."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from policies.decision import Decision
from policies.model import Policy
from policies.rule import Facts, Rule
from tests.builders import make_review
from webhooks.admission import ENDPOINTS, Endpoint, answer
from webhooks.app import create_app
from webhooks.review import build_response, read_review


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_endpoint_answers_an_admission_review_with_the_uid(
        client: FlaskClient, endpoint: Endpoint) -> None:
    review = make_review(namespace="kube-system")
    response = client.post(endpoint.path, json=review)
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["apiVersion"] == "admission.k8s.io/v1"
    assert response.json["kind"] == "AdmissionReview"
    assert response.json["response"]["uid"] == review["request"]["uid"]
    assert isinstance(response.json["response"]["allowed"], bool)
    if not endpoint.mutating:
        assert "patch" not in response.json["response"]


@pytest.mark.parametrize(("body", "content_type", "status", "reason"), [
    pytest.param(b"{not json", "application/json", 400, "BadReview", id="invalid-json"),
    pytest.param(b"\xff\xfe\x00", "application/json", 400, "BadReview", id="invalid-utf8"),
    pytest.param(b'{"kind":"AdmissionReview"}', "application/json", 400, "BadReview",
                 id="no-api-version"),
    pytest.param(b"{}", "text/plain", 415, "UnsupportedMediaType", id="wrong-content-type"),
    pytest.param(b"{" + b" " * (3 * 1024 * 1024) + b"}", "application/json", 413, "BodyTooLarge",
                 id="over-the-cap"),
])
def test_bad_requests_get_a_4xx_status_with_a_reason(
        client: FlaskClient, body: bytes, content_type: str, status: int, reason: str) -> None:
    response = client.post("/validate/pods", data=body, content_type=content_type)
    assert response.status_code == status
    assert response.json is not None
    assert response.json["reason"] == reason
    assert response.json["message"]


def test_get_on_an_admission_endpoint_is_not_allowed(client: FlaskClient) -> None:
    response = client.get("/validate/pods")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json == {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "code": 405, "reason": "MethodNotAllowed",
                             "message": "/validate/pods answers admission reviews: POST only"}


@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    ("post", "/validate/pod", 404, "NotFound"),
    ("get", "/", 404, "NotFound"),
    ("post", "/mutate/pods", 404, "NotFound"),
    ("post", "/healthz", 405, "MethodNotAllowed"),
])
def test_unknown_paths_and_methods_get_a_json_status(client: FlaskClient, method: str,
                                                     path: str, status: int, reason: str) -> None:
    response = getattr(client, method)(path, json=make_review())
    assert response.status_code == status
    assert response.content_type == "application/json"
    assert response.json["kind"] == "Status"
    assert (response.json["code"], response.json["reason"]) == (status, reason)
    if status == 404:
        assert "/validate/pods" in response.json["message"]


@pytest.mark.parametrize(("path", "resource", "kind", "expected"), [
    pytest.param("/validate/pipelineruns", "pods", ("", "v1", "Pod"),
                 "validate-pipelineruns expected a PipelineRun (tekton.dev), got a Pod (v1)",
                 id="pod-to-pipelineruns"),
    pytest.param("/validate/pods", "services", ("", "v1", "Service"),
                 "validate-pods expected one of Pod, PodTemplate, ReplicationController, "
                 "Deployment (apps), ReplicaSet (apps), StatefulSet (apps), DaemonSet (apps), Job "
                 "(batch), CronJob (batch), got a Service (v1)", id="service-to-pods"),
    pytest.param("/validate/pods", "deployments", ("example.org", "v1", "Deployment"),
                 "got a Deployment (example.org/v1)", id="same-kind-other-group"),
    pytest.param("/mutate/build-pods", "configmaps", ("", "v1", "ConfigMap"),
                 "mutate-build-pods expected a Pod, got a ConfigMap (v1)", id="configmap-to-mutate"),
    pytest.param("/validate/policy", "secrets", ("", "v1", "Secret"),
                 "validate-policy expected a ConfigMap, got a Secret (v1)", id="secret-to-policy"),
    # A forged review names what it likes: the message stays one printable line.
    pytest.param("/validate/pipelineruns", "pipelineruns", ("tekton\n.dev", "v1\x1b[2J", "Pipe\nRun"),
                 'got a Pipe\\nRun (tekton\\n.dev/v1\\x1b[2J): the webhook', id="forged-kind-escaped"),
])
def test_a_kind_the_endpoint_does_not_understand_is_refused_naming_it(
        client: FlaskClient, path: str, resource: str, kind: tuple[str, str, str],
        expected: str) -> None:
    # Fail closed: a rule that does not know the kind would find nothing wrong with it.
    obj = {"apiVersion": "v1", "kind": kind[2], "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "a", "image": "quay.io/evil/x:1"}]}}
    response = client.post(path, json=make_review(obj, resource=resource, kind=kind))
    assert response.status_code == 200
    assert response.json is not None
    answer_ = response.json["response"]
    assert answer_["allowed"] is False
    assert expected in answer_["status"]["message"]
    assert "patch" not in answer_


def test_a_failing_rule_denies_instead_of_answering_500(example_policy: Policy) -> None:
    def broken_rule(*_: object) -> Decision:
        raise KeyError("spec")  # fault injection: a rule breaks on an unforeseen object

    review = make_review()
    request = read_review(review)
    facts = Facts(example_policy, datetime.datetime.now(datetime.UTC))
    rule = Rule(broken_rule, operations=frozenset({"CREATE"}))
    endpoint = Endpoint("broken", "/broken", False, (rule,), (("", "Pod"),))
    decision, patch = answer(endpoint, request, facts)
    payload = build_response(request.uid, decision, patch)
    assert decision.allowed is False
    assert payload["response"]["uid"] == review["request"]["uid"]
    assert review["request"]["uid"] in payload["response"]["status"]["message"]


def test_validate_policy_refuses_a_broken_policy_with_every_problem(client: FlaskClient) -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "toolforge-admission-policy",
                              "namespace": "toolforge-admission"},
                 "data": {"policy.yaml": "builds: {maxActiveRuns: 0}\nbogus: 1\n"}}
    review = make_review(configmap, resource="configmaps", namespace="toolforge-admission",
                         username="admin", groups=("system:masters",))
    result = client.post("/validate/policy", json=review).json["response"]  # type: ignore[index]
    assert result["allowed"] is False
    assert result["status"]["message"] == (
        "policy.yaml is not a valid policy: builds.maxActiveRuns: must be an integer >= 1; "
        "bogus: unknown key; the keys here are tools, exemptNamespaces, builds, registries, "
        "credentials")


def test_validate_policy_admits_a_valid_policy_and_other_configmaps(client: FlaskClient) -> None:
    good = {"metadata": {"name": "toolforge-admission-policy"},
            "data": {"policy.yaml": "builds: {maxActiveRuns: 2}\n"}}
    other = {"metadata": {"name": "something-else"}, "data": {"policy.yaml": "bogus: 1"}}
    for configmap in (good, other):
        review = make_review(configmap, resource="configmaps", namespace="toolforge-admission")
        assert client.post("/validate/policy", json=review).json["response"]["allowed"]  # type: ignore[index]


@pytest.mark.parametrize(("text", "warning"), [
    pytest.param("builds: {mode: warn}\n",
                 "builds.mode is warn: that rule admits what it would refuse and only warns; set "
                 "enforce once its warnings are understood", id="one"),
    pytest.param("registries: {mode: warn}\ncredentials: {mode: warn}\n",
                 "registries.mode, credentials.mode are warn: those rules admit what they would "
                 "refuse and only warn; set enforce once their warnings are understood", id="two"),
])
def test_validate_policy_admits_warn_mode_saying_which_rules_only_warn(
        client: FlaskClient, text: str, warning: str) -> None:
    configmap = {"metadata": {"name": "toolforge-admission-policy"}, "data": {"policy.yaml": text}}
    review = make_review(configmap, resource="configmaps", namespace="toolforge-admission")
    result = client.post("/validate/policy", json=review).json["response"]  # type: ignore[index]
    assert result["allowed"] is True
    assert result["warnings"] == [warning]


def test_validate_policy_refuses_keys_given_twice_and_an_exempt_build_namespace(
        client: FlaskClient) -> None:
    text = "builds:\n  mode: enforce\n  mode: warn\nexemptNamespaces: [image-build]\n"
    configmap = {"metadata": {"name": "toolforge-admission-policy"}, "data": {"policy.yaml": text}}
    review = make_review(configmap, resource="configmaps", namespace="toolforge-admission")
    result = client.post("/validate/policy", json=review).json["response"]  # type: ignore[index]
    assert result["allowed"] is False
    assert result["status"]["message"] == (
        "policy.yaml is not a valid policy: not valid YAML (line 3, column 3): the key 'mode' is "
        "given twice in one mapping (first at line 2); YAML would keep only the last")
    configmap["data"]["policy.yaml"] = "exemptNamespaces: [image-build]\n"
    result = client.post("/validate/policy", json=review | {"request": review["request"] | {
        "object": configmap}}).json["response"]  # type: ignore[index]
    assert result["allowed"] is False
    assert "exemptNamespaces lists the build namespace image-build" in result["status"]["message"]


def test_validate_policy_refuses_a_configmap_without_the_policy_key(client: FlaskClient) -> None:
    review = make_review({"metadata": {"name": "toolforge-admission-policy"}, "data": {}},
                         resource="configmaps", namespace="toolforge-admission")
    result = client.post("/validate/policy", json=review).json["response"]  # type: ignore[index]
    assert result["allowed"] is False
    assert "policy.yaml" in result["status"]["message"]


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.text.startswith("ok: policy ")


def test_without_a_valid_policy_the_service_is_not_ready_and_refuses(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("builds: {maxActiveRuns: 0}\n")
    client = create_app({"POLICY_FILE": str(policy), "POLICY_RELOAD_SECONDS": 0}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "builds.maxActiveRuns" in ready.text
    result = client.post("/validate/pods", json=make_review()).json["response"]  # type: ignore[index]
    assert result["allowed"] is False
    assert "no valid policy" in result["status"]["message"]


def test_each_review_is_counted_and_logged_as_one_json_line(
        client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('toolforge_admission_reviews_total{') and \
                    'endpoint="validate-policy"' in line and 'operation="CREATE"' in line \
                    and 'decision="allowed"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    review = make_review({"metadata": {"name": "x"}}, resource="configmaps")
    with caplog.at_level(logging.INFO, logger="webhooks.app"):
        client.post("/validate/policy", json=review)
    assert count() == before + 1
    (record,) = [r for r in caplog.records if r.getMessage() == "review"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["uid"] == review["request"]["uid"]
    assert (fields["endpoint"], fields["decision"], fields["reason"]) == (
        "validate-policy", "allowed", "Allowed")
    assert "object" not in json.dumps(fields, default=str)
