"""The AdmissionReview wire format: parse a request, build a response.

Only `admission.k8s.io/v1` is spoken; the webhook configurations ask for nothing else. Parsing
checks the envelope's types so that rules can trust them; the object itself stays a plain dict
that each rule reads defensively. Every AdmissionReview the suite answers, served or offline, is
built by `build_response`.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict, cast

import orjson

from policies.decision import Decision
from policies.identity import User
from policies.rule import NO_DELETE_OPTIONS, DeleteOptions, Operation, Review
from webhooks.errors import BadReviewError

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
MAX_BODY_BYTES = 3 * 1024 * 1024

Patch = list[dict[str, Any]]
"""A JSON patch (RFC 6902), as `webhooks.patches.make_patch` writes it."""


class StatusPayload(TypedDict):
    code: int
    reason: str
    message: str


class ResponsePayload(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[StatusPayload]
    warnings: NotRequired[list[str]]
    auditAnnotations: NotRequired[dict[str, str]]
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]


class ReviewPayload(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    request: NotRequired[dict[str, Any]]
    response: ResponsePayload


@dataclass(frozen=True)
class GroupVersionKind:
    group: str
    version: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class AdmissionRequest(Review):
    """One admission request, with the envelope checked and names in snake_case: the `Review`
    the rules judge, and what only the edge reads."""

    uid: str
    group_version_kind: GroupVersionKind
    """The object's `kind`; `Review.kind` is its kind alone."""
    resource: str
    request_kind: GroupVersionKind | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The `request` mapping as received, for tools that echo it (the offline `review`)."""


def parse_review(body: bytes) -> AdmissionRequest:
    """Read an AdmissionReview body, or raise BadReviewError saying what is wrong with it."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadReviewError(f"body is not valid JSON: {error}") from None
    return read_review(document)


def read_review(document: object) -> AdmissionRequest:
    """Check a decoded AdmissionReview and turn its request into an AdmissionRequest."""
    if not isinstance(document, dict):
        raise BadReviewError("body must be a JSON object (an AdmissionReview)")
    if document.get("kind") != "AdmissionReview":
        raise BadReviewError("kind must be AdmissionReview")
    if document.get("apiVersion") != API_VERSION:
        raise BadReviewError(f"apiVersion must be {API_VERSION}")
    request = document.get("request")
    if not isinstance(request, dict):
        raise BadReviewError("request must be an object")
    uid = _string(request, "uid", required=True)
    operation = _string(request, "operation", required=True)
    if operation not in OPERATIONS:
        raise BadReviewError(f"request.operation must be one of {', '.join(sorted(OPERATIONS))}")
    resource = request.get("resource")
    if not isinstance(resource, dict) or not isinstance(resource.get("resource"), str):
        raise BadReviewError("request.resource.resource must be a string")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool | None):
        raise BadReviewError("request.dryRun must be a boolean")
    kind = _gvk(request.get("kind"), "request.kind", required=True)
    assert kind is not None  # required=True raises instead
    return AdmissionRequest(
        uid=uid,
        group_version_kind=kind,
        kind=kind.kind,
        resource=resource["resource"],
        operation=cast(Operation, operation),
        user=_user(request.get("userInfo")),
        namespace=_string(request, "namespace"),
        name=_string(request, "name"),
        sub_resource=_string(request, "subResource"),
        request_kind=_gvk(request.get("requestKind"), "request.requestKind"),
        object=_object(request, "object"),
        old_object=_object(request, "oldObject"),
        dry_run=bool(dry_run),
        delete_options=(_delete_options(request.get("options")) if operation == "DELETE"
                        else NO_DELETE_OPTIONS),
        raw=request,
    )


def build_response(uid: str, decision: Decision, patch: Patch | None = None, *,
                   request: dict[str, Any] | None = None) -> ReviewPayload:
    """The AdmissionReview the API server expects back for a decision; with `request`, the
    request too (the offline `review` shows both)."""
    response: ResponsePayload = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": decision.message}
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if decision.audit:
        response["auditAnnotations"] = dict(decision.audit)
    if patch and decision.allowed:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(patch)).decode("ascii")
    if request is not None:
        return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request,
                "response": response}
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _string(request: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = request.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadReviewError(f"request.{key} must be a {'non-empty ' if required else ''}string")
    return value


def _gvk(value: object, path: str, *, required: bool = False) -> GroupVersionKind | None:
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise BadReviewError(f"{path} must be an object")
    group, version, kind = value.get("group", ""), value.get("version", ""), value.get("kind", "")
    if not (isinstance(group, str) and isinstance(version, str) and isinstance(kind, str)
            and kind):
        raise BadReviewError(f"{path} must have string group, version and kind")
    return _group_version_kind(group, version, kind)


# Every review carries its kind twice (kind, requestKind), from the few kinds the webhook
# configurations route here: the same frozen objects serve them all.
_group_version_kind = functools.lru_cache(maxsize=256)(GroupVersionKind)


def _user(value: object) -> User:
    if not isinstance(value, dict):
        raise BadReviewError("request.userInfo must be an object")
    username = value.get("username", "")
    groups = value.get("groups") or []
    if not isinstance(username, str):
        raise BadReviewError("request.userInfo.username must be a string")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise BadReviewError("request.userInfo.groups must be a list of strings")
    return User(username=username, groups=tuple(groups))


def _delete_options(value: object) -> DeleteOptions:
    """`request.options` of a DELETE: the DeleteOptions the client sent (kubectl's `--cascade`,
    a body's `propagationPolicy` or legacy `orphanDependents`)."""
    if value is None:
        return NO_DELETE_OPTIONS
    if not isinstance(value, dict):
        raise BadReviewError("request.options must be an object or null")
    policy = value.get("propagationPolicy")
    orphan = value.get("orphanDependents")
    if not isinstance(policy, str | None):
        raise BadReviewError("request.options.propagationPolicy must be a string or null")
    if not isinstance(orphan, bool | None):
        raise BadReviewError("request.options.orphanDependents must be a boolean or null")
    if policy is None and orphan is None:
        return NO_DELETE_OPTIONS
    return DeleteOptions(propagation_policy=policy or "", orphan_dependents=orphan)


def _object(request: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadReviewError(f"request.{key} must be an object or null")
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadReviewError(f"request.{key}.metadata must be an object")
    return value
