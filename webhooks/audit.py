"""`audit`: judge what already runs against the policy in force, or a proposed one.

Before a policy change an admin asks: whose running webservices, jobs and builds would the new
policy refuse? `audit` lists the pods and workloads of tool namespaces and the PipelineRuns
(page by page, `webhooks.inventory`), judges each as if it were created now through exactly the
endpoints the API server calls (`webhooks.offline`, which `review` uses too), and reports per
tool what would be refused and why. A workload and the objects it owns (a Deployment, its
ReplicaSets and their pods; a CronJob and its Jobs) are one finding: the workload is what the
tool fixes.

What is listed is the kinds some endpoint accepts (`Endpoint.kinds`), so an endpoint added for a
new kind is audited once the kind is in `AUDITED`.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from policies.model import Policy
from webhooks.inventory import Api, ApiError, Resource, list_objects
from webhooks.offline import (
    OfflineReviewError,
    endpoints_for,
    review_for,
    review_request,
    tool_of,
)
from webhooks.review import read_review
from webhooks.terminal import one_line, table

AUDITED: tuple[Resource, ...] = (
    Resource("apps", "v1", "deployments", "Deployment", "deployment"),
    Resource("apps", "v1", "statefulsets", "StatefulSet", "stateful_set"),
    Resource("apps", "v1", "daemonsets", "DaemonSet", "daemon_set"),
    Resource("apps", "v1", "replicasets", "ReplicaSet", "replica_set"),
    Resource("batch", "v1", "cronjobs", "CronJob", "cron_job"),
    Resource("batch", "v1", "jobs", "Job", "job"),
    Resource("", "v1", "pods", "Pod", "pod"),
    Resource("tekton.dev", "v1", "pipelineruns", "PipelineRun"),
)
"""What audit may list (workloads before pods: reports list owners first)."""
BUILD_KINDS = frozenset({"PipelineRun"})
"""The kinds audited in the build namespace (its pods are the builds' own, made by Tekton)."""


class AuditError(Exception):
    """The audit cannot be done (no access, the API server failing); one line for people."""


def audited_resources() -> tuple[Resource, ...]:
    """The resources of AUDITED that some endpoint judges."""
    return tuple(r for r in AUDITED if endpoints_for(r.group, r.kind))


@dataclasses.dataclass(frozen=True)
class Judged:
    """What audit keeps of one object: who it is, whose it is, and the verdict."""

    uid: str
    api_version: str
    kind: str
    namespace: str
    name: str
    owner: str
    """The uid of the controller that owns it, "" when none."""
    tool: str
    allowed: bool
    reason: str
    message: str
    endpoints: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclasses.dataclass(frozen=True)
class Finding:
    """A workload (or a lone object) that the policy would refuse, with what it owns."""

    tool: str
    namespace: str
    api_version: str
    kind: str
    name: str
    uid: str
    reason: str
    message: str
    """What the tool would be told; for an owned object, prefixed with that object."""
    owned: tuple[str, ...]
    """The objects it owns that audit saw (`ReplicaSet web-7d9`), refused or not."""
    refused: tuple[str, ...]
    """Of itself and what it owns, the objects that would be refused."""
    endpoints: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "namespace": self.namespace, "apiVersion": self.api_version,
                "kind": self.kind, "name": self.name, "uid": self.uid, "reason": self.reason,
                "message": self.message, "owned": list(self.owned),
                "refused": list(self.refused), "endpoints": list(self.endpoints)}


@dataclasses.dataclass(frozen=True)
class AuditResult:
    findings: tuple[Finding, ...]
    judged: int
    """Objects judged."""
    workloads: Counter[str]
    """Per namespace, the workloads and lone objects judged (what findings are counted in)."""
    not_served: tuple[str, ...]
    """Resources the API server does not serve (Tekton not installed, say)."""
    seconds: float

    @property
    def by_rule(self) -> Counter[str]:
        return Counter(finding.reason for finding in self.findings)

    @property
    def tools(self) -> list[str]:
        return sorted({finding.tool for finding in self.findings})


def audit(api: Api, policy: Policy, *, now: datetime.datetime, namespace: str | None = None,
          page_size: int = 500) -> AuditResult:
    """Judge every audited object (in one namespace, or in all tool namespaces and the build
    namespace); raises AuditError when the cluster cannot be read."""
    started = time.monotonic()
    judged: list[Judged] = []
    not_served: list[str] = []
    for resource in audited_resources():
        try:
            for obj in list_objects(api, resource, namespace=namespace, page_size=page_size):
                if in_scope(policy, resource.kind, _namespace(obj), asked=namespace):
                    judged.append(judge(obj, policy, now))
        except ApiError as error:
            if error.status == 404:
                not_served.append(str(resource))
                continue
            raise AuditError(_cannot_list(resource, namespace, error)) from None
    findings, workloads = collapse(judged)
    return AuditResult(tuple(findings), len(judged), workloads, tuple(not_served),
                       time.monotonic() - started)


def in_scope(policy: Policy, kind: str, namespace: str, *, asked: str | None = None) -> bool:
    """Tools' namespaces, and the builds of the build namespace; never exempt namespaces
    unless asked for by name."""
    if namespace == policy.builds.namespace:
        return kind in BUILD_KINDS
    if asked is not None:
        return namespace == asked
    if namespace in policy.exempt_namespaces:
        return False
    return policy.tools.namespace_pattern.tool_of(namespace) is not None


def judge(obj: dict[str, Any], policy: Policy, now: datetime.datetime) -> Judged:
    """An object as if it were created now, through the endpoints that accept its kind."""
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    # Large, and read by no rule; the copy each review makes need not carry it.
    metadata.pop("managedFields", None)
    if obj.get("kind") in BUILD_KINDS:
        _as_its_tool_made_it(metadata, policy)
    namespace = _namespace(obj)
    base = Judged(uid=str(metadata.get("uid") or f"{namespace}/{metadata.get('name')}"),
                  api_version=str(obj.get("apiVersion")), kind=str(obj.get("kind")),
                  namespace=namespace, name=str(metadata.get("name") or ""),
                  owner=_controller(metadata), tool=tool_of(policy, namespace, obj) or "",
                  allowed=True, reason="", message="", endpoints=())
    try:
        request = read_review(review_for(obj, policy))
        outcome = review_request(request, policy, now=now)
    except (OfflineReviewError, ValueError) as error:
        # A stored object the review cannot be built for: say so rather than skip it.
        return dataclasses.replace(base, allowed=False, reason="NotJudged", message=str(error))
    decision = outcome.decision
    return dataclasses.replace(base, allowed=decision.allowed, reason=decision.reason,
                               message=decision.message, endpoints=outcome.endpoints)


def _as_its_tool_made_it(metadata: dict[str, Any], policy: Policy) -> None:
    """Only the tool label of a stored run's labels and annotations.

    After admitting a run, Tekton's controller writes its own keys onto it (`tekton.dev/pipeline`,
    and the labels and annotations of the pipeline it runs), and nothing in the stored object
    tells those from what the tool set. The tool's own keys were judged when it set them
    (`builds.runMetadata`); judging the stored ones would report every run Tekton has touched.
    """
    labels = metadata.get("labels") if isinstance(metadata.get("labels"), dict) else {}
    assert isinstance(labels, dict)
    tool_label = policy.builds.tool_label
    metadata["labels"] = {tool_label: labels[tool_label]} if tool_label in labels else {}
    metadata.pop("annotations", None)


def collapse(judged: Sequence[Judged]) -> tuple[list[Finding], Counter[str]]:
    """One finding per workload (or lone object) of which anything would be refused; and per
    namespace, how many workloads (and lone objects) there are."""
    by_uid = {j.uid: j for j in judged}
    groups: dict[str, list[Judged]] = {}
    for item in judged:
        groups.setdefault(_root(item, by_uid).uid, []).append(item)
    workloads = Counter(by_uid[uid].namespace for uid in groups)
    findings = []
    for root_uid, members in groups.items():
        refused = [m for m in members if not m.allowed]
        if not refused:
            continue
        root = by_uid[root_uid]
        first = root if not root.allowed else refused[0]
        message = first.message if first is root else f"{first.label}: {first.message}"
        findings.append(Finding(
            tool=root.tool, namespace=root.namespace, api_version=root.api_version,
            kind=root.kind, name=root.name, uid=root.uid, reason=first.reason, message=message,
            owned=tuple(m.label for m in members if m is not root),
            refused=tuple(m.label for m in refused), endpoints=first.endpoints))
    return sorted(findings, key=lambda f: (f.tool, f.namespace, f.kind, f.name)), workloads


def _root(item: Judged, by_uid: dict[str, Judged]) -> Judged:
    """The topmost owner audit saw (a cycle, which the API server forbids, stops the walk)."""
    seen = {item.uid}
    while item.owner in by_uid and item.owner not in seen:
        item = by_uid[item.owner]
        seen.add(item.uid)
    return item


def _controller(metadata: dict[str, Any]) -> str:
    references = metadata.get("ownerReferences")
    for reference in references if isinstance(references, list) else ():
        if isinstance(reference, dict) and reference.get("controller") is True:
            return str(reference.get("uid") or "")
    return ""


def _namespace(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) else ""


def _cannot_list(resource: Resource, namespace: str | None, error: ApiError) -> str:
    where = f"in namespace {namespace}" if namespace else "in all namespaces"
    if error.status in (401, 403):
        return (f"may not list {resource} {where} ({error}); the ClusterRole "
                "toolforge-admission-audit-reader grants what audit reads")
    if error.status == 410:
        return (f"listing {resource} took so long that the API server expired the list; "
                "run again, or with a larger --page-size")
    return f"cannot list {resource} {where}: {error}"


def summary_text(result: AuditResult, policy_source: str, digest: str) -> str:
    """One line: what was judged against what, and what would be refused."""
    namespaces = len(result.workloads)
    text = (f"judged {result.judged} objects ({sum(result.workloads.values())} workloads) in "
            f"{namespaces} namespace{'s' if namespaces != 1 else ''} against {policy_source} "
            f"(sha256 {digest[:12]}) in {result.seconds:.1f} s: ")
    if not result.findings:
        return text + "nothing would be refused"
    tools = len(result.tools)
    return text + (f"{len(result.findings)} would be refused, of {tools} "
                   f"tool{'s' if tools != 1 else ''}")


def audit_table(result: AuditResult) -> str:
    """Per tool, one line per finding (what the tool would be told)."""
    if not result.findings:
        return ""
    rows = [(f.tool or "-", f.namespace, f.kind, f.name, _owned(f.owned), f.reason,
             one_line(f.message)) for f in result.findings]
    return table(("TOOL", "NAMESPACE", "KIND", "NAME", "OWNS", "REASON", "MESSAGE"), rows)


def _owned(labels: Sequence[str]) -> str:
    """`1 ReplicaSet, 2 Pods`."""
    kinds = Counter(label.split(" ", 1)[0] for label in labels)
    return ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in kinds.items()) or "-"


def audit_document(result: AuditResult, source: str, digest: str,
                   now: datetime.datetime) -> dict[str, Any]:
    """The audit as JSON: the findings, and counts per rule and per tool."""
    return {
        "apiVersion": "toolforge-admission.toolforge.org/v1alpha1", "kind": "AuditReport",
        "time": now.isoformat(), "policy": {"source": source, "digest": digest},
        "judged": result.judged, "workloads": sum(result.workloads.values()),
        "namespaces": len(result.workloads), "seconds": round(result.seconds, 3),
        "byRule": dict(sorted(result.by_rule.items())),
        "byTool": dict(sorted(Counter(f.tool for f in result.findings).items())),
        "notServed": list(result.not_served),
        "findings": [finding.as_dict() for finding in result.findings],
    }
