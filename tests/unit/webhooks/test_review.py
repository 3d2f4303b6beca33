"""The AdmissionReview envelope: what is accepted, and the reply the API server requires."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from policies.decision import Decision, Finding, allow, decide, deny
from policies.rule import NO_DELETE_OPTIONS, DeleteOptions
from tests.builders import make_review
from webhooks.errors import BadReviewError
from webhooks.review import GroupVersionKind, build_response, parse_review, read_review


def test_a_review_from_the_api_server_is_read_into_snake_case_fields() -> None:
    review = make_review(operation="UPDATE", old={"metadata": {}}, dry_run=True,
                         sub_resource="ephemeralcontainers")
    request = read_review(review)
    assert request.uid == review["request"]["uid"]
    assert (request.kind, request.resource, request.operation) == ("Pod", "pods", "UPDATE")
    assert request.group_version_kind == GroupVersionKind("", "v1", "Pod")
    assert request.sub_resource == "ephemeralcontainers"
    assert request.user.username == "mytool"
    assert request.user.groups == ("toolforge", "system:authenticated")
    assert request.dry_run is True
    assert request.old_object == {"metadata": {}}


@pytest.mark.parametrize(("options", "expected"), [
    # As the API server sends them (tests/e2e/test_run_owners.py sees each through kubectl and
    # the Python client): kubectl always names a propagationPolicy.
    pytest.param({"propagationPolicy": "Orphan"}, DeleteOptions("Orphan"), id="cascade-orphan"),
    pytest.param({"propagationPolicy": "Background"}, DeleteOptions("Background"),
                 id="kubectl-default"),
    pytest.param({"orphanDependents": True}, DeleteOptions(orphan_dependents=True),
                 id="legacy-orphan"),
    pytest.param({"orphanDependents": False, "propagationPolicy": None},
                 DeleteOptions(orphan_dependents=False), id="legacy-not-orphan"),
    pytest.param({}, NO_DELETE_OPTIONS, id="none-given"),
])
def test_a_deletes_options_are_read_into_the_review(options: dict[str, Any],
                                                    expected: DeleteOptions) -> None:
    review = make_review(None, operation="DELETE", old={"metadata": {"name": "r"}},
                         options=options)
    assert read_review(review).delete_options == expected
    del review["request"]["options"]
    assert read_review(review).delete_options == NO_DELETE_OPTIONS


def test_only_a_delete_has_delete_options() -> None:
    # An UPDATE's options are UpdateOptions: nothing in them decides what is orphaned.
    review = make_review(operation="UPDATE", old={"metadata": {}},
                         options={"propagationPolicy": "Orphan"})
    assert read_review(review).delete_options == NO_DELETE_OPTIONS


@pytest.mark.parametrize(("options", "reason"), [
    pytest.param("Orphan", "request.options must be an object or null", id="string"),
    pytest.param({"propagationPolicy": 1}, "propagationPolicy must be a string", id="policy-int"),
    pytest.param({"orphanDependents": "true"}, "orphanDependents must be a boolean",
                 id="legacy-string"),
])
def test_unreadable_delete_options_are_a_bad_review(options: Any, reason: str) -> None:
    review = make_review(None, operation="DELETE", old={"metadata": {}})
    review["request"]["options"] = options
    with pytest.raises(BadReviewError, match=reason):
        read_review(review)


def broken(path: str, value: Any) -> dict[str, Any]:
    review = copy.deepcopy(make_review())
    target = review
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return review


@pytest.mark.parametrize(("review", "reason"), [
    pytest.param([], "body must be a JSON object", id="array-body"),
    pytest.param(broken("kind", "Pod"), "kind must be AdmissionReview", id="wrong-kind"),
    pytest.param(broken("apiVersion", "admission.k8s.io/v1beta1"), "apiVersion must be",
                 id="v1beta1"),
    pytest.param(broken("request", KeyError), "request must be an object", id="no-request"),
    pytest.param(broken("request.uid", KeyError), "request.uid must be a non-empty string",
                 id="no-uid"),
    pytest.param(broken("request.uid", 7), "request.uid must be", id="uid-number"),
    pytest.param(broken("request.operation", "PATCH"), "request.operation must be one of",
                 id="unknown-operation"),
    pytest.param(broken("request.kind", "Pod"), "request.kind must be an object", id="kind-string"),
    pytest.param(broken("request.resource", {}), "request.resource.resource", id="no-resource"),
    pytest.param(broken("request.userInfo", None), "request.userInfo must be an object",
                 id="no-user"),
    pytest.param(broken("request.userInfo.groups", "admins"), "groups must be a list",
                 id="groups-string"),
    pytest.param(broken("request.object", [1]), "request.object must be an object",
                 id="object-list"),
    pytest.param(broken("request.object.metadata", "x"), "request.object.metadata",
                 id="metadata-string"),
    pytest.param(broken("request.dryRun", "yes"), "request.dryRun must be a boolean",
                 id="dry-run-string"),
])
def test_an_unusable_review_is_a_bad_review_with_a_reason(review: Any, reason: str) -> None:
    with pytest.raises(BadReviewError, match=reason):
        read_review(review)


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"", b"null"])
def test_a_body_that_is_not_json_or_not_an_object_is_a_bad_review(body: bytes) -> None:
    with pytest.raises(BadReviewError):
        parse_review(body)


def test_an_allow_echoes_the_uid_and_carries_no_status() -> None:
    payload = build_response("abc", allow())
    assert payload == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "response": {"uid": "abc", "allowed": True}}


def test_a_denial_carries_code_reason_and_message() -> None:
    payload = build_response("abc", deny("ImageNotAllowed", "use harbor"))
    assert payload["response"]["allowed"] is False
    assert payload["response"]["status"] == {"code": 403, "reason": "Forbidden",
                                             "message": "use harbor"}
    assert "patch" not in payload["response"]


def test_warnings_and_audit_annotations_are_passed_on() -> None:
    decision = decide([Finding("A", "watch out")], "warn")
    response = build_response("abc", decision)["response"]
    assert response["warnings"] == ["watch out"]
    assert response["auditAnnotations"]["reason"] == "A"


def test_a_patch_is_base64_json_with_its_type() -> None:
    patch = [{"op": "remove", "path": "/spec/containers/0/args/3"}]
    response = build_response("abc", allow(), patch)["response"]
    assert response["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(response["patch"])) == patch


def test_a_denial_never_carries_a_patch() -> None:
    response = build_response("abc", Decision(allowed=False, reason="X", message="m"),
                              [{"op": "add", "path": "/x", "value": 1}])["response"]
    assert "patch" not in response
    assert "patchType" not in response
