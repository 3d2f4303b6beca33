"""What the continuous audit publishes: PolicyReports, and a summary the webhook exports.

PolicyReports (`wgpolicyk8s.io/v1alpha2`, the Policy Working Group's format, which Policy Reporter
and other dashboards display) are one per namespace audited, named `toolforge-admission`, with a
`fail` result per finding; a namespace whose report would be empty of findings still gets one
(its `pass` count), and reports of namespaces no longer audited are deleted.

The metric: a CronJob's pod is gone before Prometheus could scrape it, and a Pushgateway would be
one more service to run. So the audit writes its counts to the ConfigMap
`toolforge-admission-audit` in the suite's namespace, the webhook pods mount it (optional) and
`/metrics` exports it (`webhooks.metrics.AuditSummaryCollector`): findings per rule, objects
judged, the time of the last run. Every replica exports the same numbers; alerts take `max`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import orjson

from policies.decision import cap
from webhooks.audit import AuditResult, Finding
from webhooks.inventory import CONFIGMAPS, Api, ApiError, Resource, list_objects

POLICY_REPORTS = Resource("wgpolicyk8s.io", "v1alpha2", "policyreports", "PolicyReport")
REPORT_NAME = "toolforge-admission"
SOURCE = "toolforge-admission"
MANAGED_BY = {"app.kubernetes.io/managed-by": "toolforge-admission-audit"}
SUMMARY_CONFIGMAP = "toolforge-admission-audit"
SUMMARY_KEY = "audit.json"


MAX_RESULTS = 500
MAX_RESULT_MESSAGE = 1000
"""An object is at most 1.5 MiB in etcd: a namespace's report keeps its first findings, with
their messages capped; the summary still counts them all."""


def policy_report(namespace: str, findings: list[Finding], workloads: int,
                  now: datetime.datetime, digest: str) -> dict[str, Any]:
    """The PolicyReport of one namespace."""
    stamp = {"seconds": int(now.timestamp()), "nanos": 0}
    results = [{
        "policy": SOURCE,
        "rule": finding.reason,
        "category": ",".join(finding.endpoints) or "audit",
        "result": "fail",
        "scored": True,
        "severity": "high",
        "source": SOURCE,
        "message": cap(finding.message, MAX_RESULT_MESSAGE),
        "timestamp": stamp,
        "resources": [{"apiVersion": finding.api_version, "kind": finding.kind,
                       "namespace": finding.namespace, "name": finding.name,
                       "uid": finding.uid}],
        "properties": {"tool": finding.tool, "refused": ", ".join(finding.refused),
                       "owned": str(len(finding.owned)), "policyDigest": digest[:12]},
    } for finding in findings[:MAX_RESULTS]]
    return {
        "apiVersion": f"{POLICY_REPORTS.group}/{POLICY_REPORTS.version}",
        "kind": POLICY_REPORTS.kind,
        "metadata": {"name": REPORT_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "summary": {"pass": max(workloads - len(findings), 0), "fail": len(findings),
                    "warn": 0, "error": 0, "skip": 0},
        "results": results,
    }


def publish_reports(api: Api, result: AuditResult, now: datetime.datetime, digest: str, *,
                    namespace: str | None = None) -> str:
    """Write a PolicyReport per namespace audited and delete stale ones; one line saying what
    was done (or why nothing was: the CRD missing, say)."""
    by_namespace: dict[str, list[Finding]] = {}
    for finding in result.findings:
        by_namespace.setdefault(finding.namespace, []).append(finding)
    try:
        existing = {_namespace(report) for report in list_objects(
            api, POLICY_REPORTS, namespace=namespace, label_selector=_selector())}
    except ApiError as error:
        if error.status == 404:
            return ("PolicyReports not published: the API server does not serve "
                    f"{POLICY_REPORTS} (install the PolicyReport CRD, see docs/operations.md)")
        raise
    written = set()
    for report_namespace, workloads in sorted(result.workloads.items()):
        report = policy_report(report_namespace, by_namespace.get(report_namespace, []),
                               workloads, now, digest)
        api.write(POLICY_REPORTS, report_namespace, report)
        written.add(report_namespace)
    stale = sorted(existing - written)
    for stale_namespace in stale:
        api.delete(POLICY_REPORTS, stale_namespace, REPORT_NAME)
    return (f"PolicyReports: {len(written)} written, {len(stale)} stale deleted")


def summary(result: AuditResult, now: datetime.datetime, digest: str) -> dict[str, Any]:
    """The counts the webhook exports as metrics (bounded labels: rules, not tools)."""
    return {"time": now.timestamp(), "policyDigest": digest, "judged": result.judged,
            "workloads": sum(result.workloads.values()), "findings": len(result.findings),
            "tools": len(result.tools), "byRule": dict(sorted(result.by_rule.items())),
            "durationSeconds": round(result.seconds, 3)}


def publish_summary(api: Api, namespace: str, counts: Mapping[str, Any]) -> None:
    api.write(CONFIGMAPS, namespace, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": SUMMARY_CONFIGMAP, "namespace": namespace,
                     "labels": dict(MANAGED_BY)},
        "data": {SUMMARY_KEY: orjson.dumps(counts, option=orjson.OPT_INDENT_2).decode()},
    })


def _selector() -> str:
    return ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())


def _namespace(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("namespace", "")) if isinstance(metadata, dict) else ""
