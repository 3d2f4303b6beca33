"""Builders of test inputs that several test modules use: admission reviews, the reviews rules
receive, the example policy."""

from __future__ import annotations

import copy
import datetime
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policies.decision import Decision
from policies.identity import User
from policies.model import Policy
from policies.questions import Answer
from policies.rule import (
    NO_DELETE_OPTIONS,
    Ask,
    DeleteOptions,
    Facts,
    Operation,
    Review,
    Rule,
    judge,
)

EXAMPLE_POLICY = Path(__file__).parent.parent / "policies" / "example-policy.yaml"

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
TOOL_USER = User("mytool", ("toolforge", "system:authenticated"))

KINDS = {
    "pods": ("", "v1", "Pod"),
    "pipelineruns": ("tekton.dev", "v1", "PipelineRun"),
    "taskruns": ("tekton.dev", "v1", "TaskRun"),
    "customruns": ("tekton.dev", "v1beta1", "CustomRun"),
    "configmaps": ("", "v1", "ConfigMap"),
    "deployments": ("apps", "v1", "Deployment"),
}


def make_review(
    obj: dict[str, Any] | None = None,
    *,
    resource: str = "pods",
    operation: str = "CREATE",
    namespace: str = "tool-mytool",
    username: str = "mytool",
    groups: tuple[str, ...] = ("toolforge", "system:authenticated"),
    old: dict[str, Any] | None = None,
    dry_run: bool = False,
    sub_resource: str = "",
    kind: tuple[str, str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid admission.k8s.io/v1 AdmissionReview as the API server sends it; `options` adds
    to its `request.options` (a DELETE's `propagationPolicy`, say)."""
    group, version, kind_name = kind or KINDS[resource]
    obj = copy.deepcopy(obj) if obj is not None else {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "tools-harbor.wmcloud.org/tool-mytool/app:1"}]},
    }
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind_name},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind_name},
        "requestResource": {"group": group, "version": version, "resource": resource},
        "name": obj.get("metadata", {}).get("name", ""),
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": username, "groups": list(groups)},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"kind": f"{operation.title()}Options", "apiVersion": "meta.k8s.io/v1",
                    **(options or {})},
    }
    if sub_resource:
        request["subResource"] = sub_resource
        request["requestSubResource"] = sub_resource
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}


def rule_review(obj: dict[str, Any] | None = None, *, kind: str = "Pod",
                operation: Operation = "CREATE", namespace: str = "tool-mytool",
                user: User = TOOL_USER,
                old: dict[str, Any] | None = None, name: str = "", sub_resource: str = "",
                dry_run: bool = False,
                delete_options: DeleteOptions = NO_DELETE_OPTIONS) -> Review:
    """A request as a rule receives it (`policies.rule.Review`), without the wire envelope."""
    return Review(operation=operation, namespace=namespace, name=name, user=user, kind=kind,
                  sub_resource=sub_resource, object=obj, old_object=old, dry_run=dry_run,
                  delete_options=delete_options)


def judged(rules: Sequence[Rule], review: Review, policy: Policy,
           now: datetime.datetime = NOW, answer: Answer = None) -> Decision:
    """The rules' decision on a review, every question they ask answered with `answer` (None:
    no cluster, as offline)."""
    verdict = judge(rules, review, Facts(policy, now))
    while isinstance(verdict, Ask):
        verdict = verdict.then(answer)
    return verdict
