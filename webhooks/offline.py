"""Offline evaluation: what the API server would get from the suite for one object.

`toolforge-admission review` builds the AdmissionReview the API server would send (or takes a
real one), calls the mutating endpoint first and the validating ones on the mutated object, as
the API server does, and merges the answers into one AdmissionReview response.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import yaml

from policies.decision import Decision, combine
from policies.model import Policy
from webhooks.admission import ENDPOINTS_BY_NAME, Context, answer
from webhooks.errors import WebhookError
from webhooks.patches import make_patch
from webhooks.review import API_VERSION, ReviewPayload, build_response, read_review

# kind -> (API group, resource), for the kinds the suite's webhooks are registered for.
RESOURCES = {
    "Pod": ("", "pods"),
    "PipelineRun": ("tekton.dev", "pipelineruns"),
    "TaskRun": ("tekton.dev", "taskruns"),
    "CustomRun": ("tekton.dev", "customruns"),
    "ConfigMap": ("", "configmaps"),
    "Deployment": ("apps", "deployments"),
    "ReplicaSet": ("apps", "replicasets"),
    "StatefulSet": ("apps", "statefulsets"),
    "DaemonSet": ("apps", "daemonsets"),
    "Job": ("batch", "jobs"),
    "CronJob": ("batch", "cronjobs"),
}
# The endpoints the webhook configurations send each resource to, mutating ones first.
ENDPOINTS_FOR_RESOURCE = {
    "pods": ("mutate-build-pods", "validate-pods"),
    "pipelineruns": ("validate-pipelineruns",),
    "taskruns": ("validate-taskruns",),
    "customruns": ("validate-taskruns",),
    "configmaps": ("validate-policy",),
    **{resource: ("validate-pods",) for _, resource in RESOURCES.values()
       if resource not in ("pods", "pipelineruns", "taskruns", "customruns", "configmaps")},
}


class OfflineReviewError(ValueError):
    """The input cannot be turned into an admission request."""


@dataclasses.dataclass(frozen=True)
class OfflineOutcome:
    allowed: bool
    review: ReviewPayload
    notes: tuple[str, ...]
    """One line per endpoint called, for people."""


def review_offline(data: bytes, policy: Policy, *, endpoint: str | None = None,
                   user: str | None = None, groups: Sequence[str] | None = None,
                   namespace: str | None = None, operation: str = "CREATE",
                   old: bytes | None = None, dry_run: bool = False,
                   now: datetime.datetime) -> OfflineOutcome:
    """Evaluate an AdmissionReview or a manifest against a policy, with no cluster."""
    document = _load(data)
    if isinstance(document, dict) and document.get("kind") == "AdmissionReview":
        review = document
    else:
        review = _review_for(document, policy, user=user, groups=groups, namespace=namespace,
                             operation=operation, old=_load(old) if old else None,
                             dry_run=dry_run)
    try:
        request = read_review(review)
    except WebhookError as error:
        raise OfflineReviewError(f"not a usable AdmissionReview: {error}") from None
    names = (endpoint,) if endpoint else ENDPOINTS_FOR_RESOURCE.get(request.resource, ())
    if not names:
        raise OfflineReviewError(f"no endpoint of the suite handles {request.resource}")
    context = Context(policy=policy, now=now, active_runs=None)
    current, decisions, notes = request, [], []
    for name in names:
        decision, _ = answer(ENDPOINTS_BY_NAME[name], current, context)
        decisions.append(decision)
        notes.append(_note(name, decision))
        if isinstance(decision.patched, dict):
            current = dataclasses.replace(current, object=decision.patched)
    verdict: Decision = combine(*decisions)
    patch = None
    if verdict.allowed and current.object != request.object:
        patch = make_patch(request.object, current.object)
    return OfflineOutcome(verdict.allowed, build_response(request.uid, verdict, patch),
                          tuple(notes))


def _note(name: str, decision: Decision) -> str:
    if not decision.allowed:
        return f"{name}: denied ({decision.reason}): {decision.message}"
    extra = "; mutated" if decision.patched is not None else ""
    warnings = "".join(f"\n  warning: {w}" for w in decision.warnings)
    return f"{name}: allowed{extra}{warnings}"


def _load(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as error:
        raise OfflineReviewError(f"input is neither JSON nor YAML: {error}") from None


def _review_for(manifest: Any, policy: Policy, *, user: str | None,
                groups: Sequence[str] | None, namespace: str | None, operation: str,
                old: Any, dry_run: bool) -> dict[str, Any]:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str):
        raise OfflineReviewError("input must be an AdmissionReview or a Kubernetes manifest "
                                 "with a kind")
    kind = manifest["kind"]
    if kind not in RESOURCES:
        raise OfflineReviewError(f"the suite has no webhook for kind {kind}; it handles "
                                 f"{', '.join(RESOURCES)}")
    group, resource = RESOURCES[kind]
    api_version = str(manifest.get("apiVersion", "v1"))
    version = api_version.rpartition("/")[2]
    metadata = manifest.setdefault("metadata", {})
    namespace = namespace or metadata.get("namespace") or "default"
    metadata["namespace"] = namespace
    username, user_groups = _requester(policy, namespace, user, groups)
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": username, "groups": [*user_groups, "system:authenticated"]},
        "object": None if operation == "DELETE" else manifest,
        "oldObject": copy.deepcopy(old if old is not None else
                                   (manifest if operation == "DELETE" else None)),
        "dryRun": dry_run,
    }
    if metadata.get("name"):
        request["name"] = metadata["name"]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request}


def _requester(policy: Policy, namespace: str, user: str | None,
               groups: Sequence[str] | None) -> tuple[str, list[str]]:
    tool = policy.tools.namespace_pattern.tool_of(namespace)
    if user is None:
        user = policy.tools.username_pattern.expand(tool) if tool else "kubernetes-admin"
    if groups is None:
        is_tool = tool is not None and user == policy.tools.username_pattern.expand(tool)
        groups = list(policy.tools.groups[:1]) if is_tool else ["system:masters"]
    return user, list(groups)

