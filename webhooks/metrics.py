"""Prometheus metrics, shared across gunicorn workers through prometheus_client's multiprocess mode.

`serve` sets PROMETHEUS_MULTIPROC_DIR before any worker starts; each worker then writes its
samples to files there and `/metrics` adds them up. Without it (tests, `review`), metrics stay
in-process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "toolforge_admission"

REVIEWS = Counter(
    f"{PREFIX}_reviews_total",
    "Admission reviews answered, by endpoint, operation, decision and reason.",
    ["endpoint", "operation", "decision", "reason"],
)
REVIEW_SECONDS = Histogram(
    f"{PREFIX}_review_duration_seconds",
    "Time to answer one admission review, from body read to response built.",
    ["endpoint"],
    # The API server gives a webhook at most a few seconds; buckets resolve the fast path finely
    # and still show what approaches the timeout.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POLICY_GENERATION = Gauge(
    f"{PREFIX}_policy_generation",
    "How many valid policies this worker has put in force.",
    multiprocess_mode="livemax",
)
POLICY_VALID = Gauge(
    f"{PREFIX}_policy_valid",
    "1 when the policy file on disk is in force, 0 when it was refused (the last good one serves).",
    multiprocess_mode="livemin",
)
POLICY_RELOAD_ERRORS = Counter(
    f"{PREFIX}_policy_reload_errors_total",
    "Policy files that were refused because they could not be read or did not validate.",
)
CERTIFICATE_NOT_AFTER = Gauge(
    f"{PREFIX}_certificate_not_after_timestamp_seconds",
    "Expiry (Unix time) of the serving certificate this worker presents.",
    multiprocess_mode="livemin",
)
CERTIFICATE_VALID = Gauge(
    f"{PREFIX}_certificate_valid",
    "1 when the certificate files on disk are the ones served, 0 when they were refused (the "
    "last good pair serves).",
    multiprocess_mode="livemin",
)
CERTIFICATE_RELOAD_ERRORS = Counter(
    f"{PREFIX}_certificate_reload_errors_total",
    "Certificate files that were refused (unreadable, or key and certificate do not match).",
)


# One labelled child per label set, looked up once: `labels()` takes a lock and builds a key on
# every call, which is as much as the sample itself costs. The label values are bounded (the
# endpoints, operations, decisions and the rules' reasons), as they must be for Prometheus.
@functools.cache
def reviews(endpoint: str, operation: str, decision: str, reason: str) -> Counter:
    """The reviews counter for one endpoint, operation, decision and reason."""
    return REVIEWS.labels(endpoint, operation, decision, reason)


@functools.cache
def review_seconds(endpoint: str) -> Histogram:
    """The review duration histogram for one endpoint."""
    return REVIEW_SECONDS.labels(endpoint)


def exposition(audit_summary: str | os.PathLike[str] | None = None) -> tuple[bytes, str]:
    """The metrics text for `/metrics`, summed over all workers when running under gunicorn,
    with the last audit's counts when its summary file is there."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if audit_summary is not None:
        audit = CollectorRegistry()
        audit.register(AuditSummaryCollector(Path(audit_summary)))
        text += generate_latest(audit)
    return text, CONTENT_TYPE_LATEST


AUDIT_FINDINGS = f"{PREFIX}_audit_findings"
AUDIT_JUDGED = f"{PREFIX}_audit_judged_objects"
AUDIT_TOOLS = f"{PREFIX}_audit_tools_with_findings"
AUDIT_LAST_RUN = f"{PREFIX}_audit_last_run_timestamp_seconds"
AUDIT_DURATION = f"{PREFIX}_audit_run_duration_seconds"
AUDIT_METRICS = (AUDIT_FINDINGS, AUDIT_JUDGED, AUDIT_TOOLS, AUDIT_LAST_RUN, AUDIT_DURATION)
"""Exported from the summary the audit CronJob writes (`webhooks.policy_reports`)."""


class AuditSummaryCollector(Collector):
    """The last audit's counts, read from its summary file (the ConfigMap the audit CronJob
    writes, mounted in the webhook pods) at each scrape. A CronJob's pod ends before it could be
    scraped; this way no Pushgateway is needed. A missing or unreadable file exports nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> list[Metric]:
        return []  # unknown until read; registering must not read the file

    def collect(self) -> Iterator[Metric]:
        try:
            counts = orjson.loads(self.path.read_bytes())
            by_rule = {str(rule): float(n) for rule, n in counts["byRule"].items()}
            values = [float(counts[key]) for key in ("judged", "tools", "time",
                                                     "durationSeconds")]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return
        findings = GaugeMetricFamily(
            AUDIT_FINDINGS, "Workloads (with what they own) and lone objects that already run "
            "and that the policy in force would refuse, by rule, at the last audit.",
            labels=["rule"])
        for rule, count in sorted(by_rule.items()):
            findings.add_metric([rule], count)
        yield findings
        for name, text, value in zip(AUDIT_METRICS[1:], (
                "Objects the last audit judged.",
                "Tools with at least one finding at the last audit.",
                "When the last audit ran (Unix time).",
                "How long the last audit took to list and judge everything."), values,
                strict=True):
            yield GaugeMetricFamily(name, text, value=value)
