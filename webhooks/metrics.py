"""Prometheus metrics, shared across gunicorn workers through prometheus_client's multiprocess mode.

`serve` sets PROMETHEUS_MULTIPROC_DIR before any worker starts; each worker then writes its
samples to files there and `/metrics` adds them up. Without it (tests, `review`), metrics stay
in-process.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
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
BUILD_INFO = Gauge(
    f"{PREFIX}_build_info",
    "Always 1, labelled with the version of the server.",
    ["version"],
    multiprocess_mode="livemax",
)
POLICY_INFO = Gauge(
    f"{PREFIX}_policy_info",
    "1 for the policy in force, by the first 12 hex digits of its sha256 (as /readyz and the log "
    "show it); 0 for a policy that was in force before.",
    ["digest"],
    multiprocess_mode="livemax",
)
OPEN_CONNECTIONS = Gauge(
    f"{PREFIX}_open_connections",
    "Client connections open (idle, being read, answered), sampled every second.",
    multiprocess_mode="livesum",
)
THREADS = Gauge(
    f"{PREFIX}_threads",
    "Threads that answer requests.",
    multiprocess_mode="livesum",
)
BUSY_THREADS = Gauge(
    f"{PREFIX}_busy_threads",
    "Threads answering a request, sampled every second.",
    multiprocess_mode="livesum",
)
THREAD_BUSY_SECONDS = Counter(
    f"{PREFIX}_thread_busy_seconds_total",
    "Time the threads spent answering requests: its rate over the thread count is how saturated "
    "the server is.",
)
CONNECTIONS_CLOSED = Counter(
    f"{PREFIX}_connections_closed_total",
    "Connections the server closed, by reason: a deadline missed (handshake_timeout, "
    "header_timeout, body_timeout, write_timeout, idle_timeout); evicted (for a new connection, "
    "or a body, when the worker is full) or full (a new connection refused); "
    "no_client_certificate (mutual TLS); handshake_failed; refused_<status> (a request refused "
    "before the application); error; stopped.",
    ["reason"],
)
PROCESS_CPU_SECONDS = Counter(
    f"{PREFIX}_process_cpu_seconds_total",
    "CPU time (user and system) of the server's workers.",
)
PROCESS_RESIDENT_MEMORY = Gauge(
    f"{PREFIX}_process_resident_memory_bytes",
    "Resident memory of the server's workers, summed.",
    multiprocess_mode="livesum",
)

_closed: dict[str, int] = {}
_process_cpu = [0.0]


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


@functools.cache
def _closed_by(reason: str) -> Counter:
    return CONNECTIONS_CLOSED.labels(reason)


def connection_closed(reason: str) -> None:
    """Count a connection the server closed (see CONNECTIONS_CLOSED for the reasons)."""
    _closed_by(reason).inc()
    _closed[reason] = _closed.get(reason, 0) + 1


def closed_counts() -> dict[str, int]:
    """This process's connections closed so far, by reason."""
    return dict(_closed)


def policy_in_force(digest: str, previous: str | None) -> None:
    """The policy with this sha256 is in force (in place of `previous`)."""
    if previous and previous != digest:
        POLICY_INFO.labels(previous[:12]).set(0)
    POLICY_INFO.labels(digest[:12]).set(1)


def worker_started(threads: int) -> None:
    """A worker is about to serve: its values are complete, so `/metrics` counts them now."""
    try:
        version = metadata.version("toolforge-admission")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD_INFO.labels(version).set(1)
    THREADS.set(threads)
    worker_state(connections=0, busy=0, busy_seconds=0.0)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        with open(os.path.join(directory, f"serving-{os.getpid()}"), "w"):
            pass


def worker_state(*, connections: int, busy: int, busy_seconds: float) -> None:
    """A worker's periodic sample: its connections and threads, its CPU and memory."""
    OPEN_CONNECTIONS.set(connections)
    BUSY_THREADS.set(busy)
    if busy_seconds:
        THREAD_BUSY_SECONDS.inc(busy_seconds)
    cpu = time.process_time()
    PROCESS_CPU_SECONDS.inc(max(0.0, cpu - _process_cpu[0]))
    _process_cpu[0] = cpu
    try:
        with open("/proc/self/statm", "rb") as statm:
            PROCESS_RESIDENT_MEMORY.set(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        pass


def worker_stopped(pid: int) -> None:
    """A worker is gone: its live values leave `/metrics` (prometheus_client's bookkeeping)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, f"serving-{pid}"))


class _ServingWorkers(multiprocess.MultiProcessCollector):
    """prometheus_client's multiprocess collector, reading the gauges only of the workers that
    serve. A worker's gauges exist (at 0) from the moment it imports this module, before it has
    loaded its certificate and policy; a minimum over all workers would then read 0 (an expiry
    alert) on a scrape during a worker's start. Counters and histograms are read from every
    file, as they must be to stay monotonic."""

    def collect(self) -> Iterable[Metric]:
        directory = self._path
        serving = {name.rsplit("-", 1)[1] for name in os.listdir(directory)
                   if name.startswith("serving-")}
        files = [path for path in glob.glob(os.path.join(directory, "*.db"))
                 if not os.path.basename(path).startswith("gauge_")
                 or os.path.basename(path)[:-3].rsplit("_", 1)[1] in serving]
        merged: Iterable[Metric] = self.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True)
        return merged


def exposition(audit_summary: str | os.PathLike[str] | None = None) -> tuple[bytes, str]:
    """The metrics text for `/metrics`, summed over the serving workers when running under
    gunicorn, with the last audit's counts when its summary file is there."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _ServingWorkers(registry)  # type: ignore[no-untyped-call]
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
