"""Prometheus metrics, shared across gunicorn workers through prometheus_client's multiprocess mode.

`serve` sets PROMETHEUS_MULTIPROC_DIR before any worker starts; each worker then writes its
samples to files there and `/metrics` adds them up. Without it (tests, `review`), metrics stay
in-process.
"""

from __future__ import annotations

import functools
import os

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


def exposition() -> tuple[bytes, str]:
    """The metrics text for `/metrics`, summed over all workers when running under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
