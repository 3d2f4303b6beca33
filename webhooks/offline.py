"""Offline evaluation: what the API server would get from the suite for an object, with no cluster.

`toolforge-admission review`, `test` and `audit` build the AdmissionReview the API server would
send (or take a real one), call the endpoints that accept the object's kind (`Endpoint.kinds`) in
the API server's order (mutating first, then the validating ones on the mutated object) and merge
their answers, so offline verdicts are exactly the served ones. Checks that need the cluster (the
active-run count) are skipped, with a warning saying so.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from policies.decision import Decision, combine
from policies.model import Policy
from policies.rule import Facts
from webhooks.admission import ENDPOINTS, ENDPOINTS_BY_NAME, Endpoint, answer
from webhooks.errors import WebhookError
from webhooks.patches import make_patch
from webhooks.review import (
    API_VERSION,
    AdmissionRequest,
    ReviewPayload,
    build_response,
    read_review,
)

# kind -> (API group, resource): how to address a manifest's kind in an AdmissionReview.
RESOURCES = {
    "Pod": ("", "pods"),
    "PodTemplate": ("", "podtemplates"),
    "ReplicationController": ("", "replicationcontrollers"),
    "ConfigMap": ("", "configmaps"),
    "Deployment": ("apps", "deployments"),
    "ReplicaSet": ("apps", "replicasets"),
    "StatefulSet": ("apps", "statefulsets"),
    "DaemonSet": ("apps", "daemonsets"),
    "Job": ("batch", "jobs"),
    "CronJob": ("batch", "cronjobs"),
    "PipelineRun": ("tekton.dev", "pipelineruns"),
    "TaskRun": ("tekton.dev", "taskruns"),
    "CustomRun": ("tekton.dev", "customruns"),
}
ADMIN = "kubernetes-admin"
"""The requester of a manifest outside tool namespaces, as kubeadm names the first admin."""

Verdict = Literal["allowed", "mutated", "warned", "denied"]


class OfflineReviewError(ValueError):
    """The input cannot be turned into an admission request."""


class NotReviewedError(OfflineReviewError):
    """No endpoint of the suite accepts this kind: the API server would not ask the suite."""


@dataclasses.dataclass(frozen=True)
class Requester:
    """Who submits a manifest, and how; None: the defaults of `requester_of`."""

    user: str | None = None
    groups: tuple[str, ...] | None = None
    namespace: str | None = None
    operation: str = "CREATE"
    old: Mapping[str, Any] | None = None
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class OfflineOutcome:
    """The suite's answer to one object, as the API server would combine its endpoints'."""

    request: AdmissionRequest
    decision: Decision
    review: ReviewPayload
    """The AdmissionReview: the request as sent and the merged response."""
    endpoints: tuple[str, ...]
    notes: tuple[str, ...]
    """One line per endpoint called, for people."""
    mutated: dict[str, Any] | None
    """The object as the API server would store it, when a mutation changed it."""

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    @property
    def verdict(self) -> Verdict:
        if not self.decision.allowed:
            return "denied"
        if self.mutated is not None:
            return "mutated"
        return "warned" if self.decision.warnings else "allowed"

    @property
    def message(self) -> str:
        """What the user would see: the denial, or the warnings."""
        if not self.decision.allowed:
            return self.decision.message
        return "; ".join(f"warning: {w}" for w in self.decision.warnings)


def endpoints_for(group: str, kind: str) -> tuple[Endpoint, ...]:
    """The endpoints that accept a kind, mutating ones first, as the API server calls them."""
    accepting = [endpoint for endpoint in ENDPOINTS if endpoint.accepts(group, kind)]
    return tuple(sorted(accepting, key=lambda endpoint: not endpoint.mutating))


def review_offline(document: Any, policy: Policy, *, endpoint: str | None = None,
                   requester: Requester = Requester(), now: datetime.datetime) -> OfflineOutcome:
    """Evaluate an AdmissionReview or a manifest against a policy."""
    if isinstance(document, dict) and document.get("kind") == "AdmissionReview":
        review = document
    else:
        review = review_for(document, policy, requester)
    try:
        request = read_review(review)
    except WebhookError as error:
        raise OfflineReviewError(f"not a usable AdmissionReview: {error}") from None
    return review_request(request, policy, endpoint=endpoint, now=now)


def review_request(request: AdmissionRequest, policy: Policy, *, endpoint: str | None = None,
                   now: datetime.datetime) -> OfflineOutcome:
    """Call the endpoints for a request and merge their answers."""
    if endpoint:
        endpoints: tuple[Endpoint, ...] = (ENDPOINTS_BY_NAME[endpoint],)
    else:
        endpoints = endpoints_for(request.group_version_kind.group, request.kind)
    if not endpoints:
        raise NotReviewedError(f"no webhook of the suite reviews {_kind_text(request)} objects")
    facts = Facts(policy, now)
    current, decisions, notes = request, [], []
    for called in endpoints:
        decision, _ = answer(called, current, facts)
        decisions.append(decision)
        notes.append(_note(called.name, decision))
        if isinstance(decision.patched, dict):
            current = dataclasses.replace(current, object=decision.patched)
    verdict = combine(*decisions)
    mutated, patch = None, None
    if verdict.allowed and current.object != request.object:
        mutated = current.object
        patch = make_patch(request.object, current.object)
    review = build_response(request.uid, verdict, patch, request=request.raw)
    return OfflineOutcome(request, verdict, review, tuple(e.name for e in endpoints),
                          tuple(notes), mutated)


def _kind_text(request: AdmissionRequest) -> str:
    kind = request.group_version_kind
    return f"{kind.kind} ({kind.group}/{kind.version})" if kind.group else \
        f"{kind.kind} ({kind.version})"


def _note(name: str, decision: Decision) -> str:
    if not decision.allowed:
        return f"{name}: denied ({decision.reason}): {decision.message}"
    extra = "; mutated" if decision.patched is not None else ""
    warnings = "".join(f"\n  warning: {w}" for w in decision.warnings)
    return f"{name}: allowed{extra}{warnings}"


def review_for(manifest: Any, policy: Policy, requester: Requester = Requester(),
               ) -> dict[str, Any]:
    """The AdmissionReview the API server would send for a manifest (not changed itself)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str):
        raise OfflineReviewError("not an AdmissionReview nor a Kubernetes object with a kind")
    kind = manifest["kind"]
    api_version = manifest.get("apiVersion", "v1")
    if not isinstance(api_version, str):
        raise OfflineReviewError("apiVersion must be a string")
    group, _, version = api_version.rpartition("/")
    if kind in RESOURCES and RESOURCES[kind][0] == group:
        resource = RESOURCES[kind][1]
    else:
        resource = kind.lower() + "s"  # no endpoint accepts it: review_request says so
    manifest = copy.deepcopy(manifest)
    metadata = manifest.get("metadata")
    if metadata is None:
        metadata = manifest["metadata"] = {}
    if not isinstance(metadata, dict):
        raise OfflineReviewError("metadata must be a mapping")
    namespace = requester.namespace or metadata.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise OfflineReviewError("metadata.namespace must be a string")
    metadata["namespace"] = namespace
    username, groups = requester_of(policy, namespace, manifest, requester.user, requester.groups)
    operation = requester.operation
    old = copy.deepcopy(dict(requester.old)) if requester.old is not None else None
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": username, "groups": [*groups, "system:authenticated"]},
        "object": None if operation == "DELETE" else manifest,
        "oldObject": old if old is not None else (manifest if operation == "DELETE" else None),
        "dryRun": requester.dry_run,
    }
    if isinstance(metadata.get("name"), str) and metadata["name"]:
        request["name"] = metadata["name"]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request}


def requester_of(policy: Policy, namespace: str, manifest: Mapping[str, Any],
                 user: str | None = None, groups: Sequence[str] | None = None,
                 ) -> tuple[str, list[str]]:
    """Who would submit a manifest, unless told: a tool's account for a tool's namespace or a
    build run labelled with its tool, the first system user for other runs in the build
    namespace, an admin otherwise. Groups follow the user: a tool's account is in the policy's
    first tool group, a ServiceAccount in its namespace's ServiceAccount groups."""
    tools = policy.tools
    if user is None:
        tool = tools.namespace_pattern.tool_of(namespace)
        if tool is None and namespace == policy.builds.namespace:
            tool = tool_of(policy, namespace, manifest)
            if tool is None and tools.system_users:
                user = tools.system_users[0]
        if user is None:
            user = tools.username_pattern.expand(tool) if tool else ADMIN
    if groups is not None:
        return user, list(groups)
    if user.startswith("system:serviceaccount:"):
        account_namespace = user.split(":")[2]
        return user, ["system:serviceaccounts", f"system:serviceaccounts:{account_namespace}"]
    if user != ADMIN and user not in tools.system_users \
            and tools.username_pattern.tool_of(user) is not None:
        return user, list(tools.groups[:1])
    return user, ["system:masters"]


def tool_of(policy: Policy, namespace: str, manifest: Mapping[str, Any]) -> str | None:
    """The tool an object belongs to: its namespace's, or in the build namespace the one its
    tool label names."""
    tool = policy.tools.namespace_pattern.tool_of(namespace)
    if tool is not None or namespace != policy.builds.namespace:
        return tool
    metadata = manifest.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    value = labels.get(policy.builds.tool_label) if isinstance(labels, dict) else None
    return value if isinstance(value, str) and value else None
