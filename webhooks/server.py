"""gunicorn, configured for an admission webhook.

- the worker is webhooks.worker's `AdmissionWorker`: the API server keeps HTTPS connections
  alive and reuses them, and a thread gets a request only once all of it has arrived, under
  deadlines, so that no client can hold the threads that answer reviews.
- keep-alive longer than the API server's 90 s idle timeout, so the API server always closes an
  idle connection first; a server-side close races with a reuse and fails a review.
- on SIGTERM a worker stops accepting, answers what it has read with `Connection: close` (the
  API server moves to the other replicas), closes the rest within a few seconds and says so.
- with `status_bind`, a second port serves the probes and /metrics only: with mutual TLS the
  review port closes every connection without a client certificate, and kubelet probes and
  Prometheus have none.
"""

from __future__ import annotations

import gc
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from webhooks.worker import AdmissionWorker, Limits

GRACEFUL_SECONDS = 25


@dataclass(frozen=True)
class ServerOptions:
    bind: str
    cert_file: Path
    key_file: Path
    policy_file: Path
    workers: int = 2
    threads: int = 2
    client_ca_file: Path | None = None
    """When set, admission reviews only from clients with a certificate from this CA (the API
    server); probes and /metrics stay open."""
    client_names: tuple[str, ...] = ()
    """With a client CA: the client certificate's CN or a DNS name must be one of these."""
    log_level: str = "info"
    state_dir: Path = Path("/tmp")  # noqa: S108 - the pod's own emptyDir in production
    """Files the workers of this server share (the last good policy, and the last good serving
    certificate with its key: in production a memory-backed emptyDir)."""
    cluster: bool = True
    """Use the cluster (in-cluster config or KUBECONFIG) for the active-run check; without it
    the check is skipped with a warning, as in `--dev` mode with no KUBECONFIG."""
    status_bind: str | None = None
    """A second address that serves /healthz, /readyz and /metrics only, to clients without a
    certificate; needed with a client CA (the review port then closes them)."""
    limits: Limits = field(default_factory=Limits)
    """Each worker's deadlines and bounds (webhooks.worker)."""


class WebhookServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running `webhooks.app:create_app` with the options above."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        # What AdmissionWorker reads (webhooks.worker.Served).
        self.limits = options.limits
        self.client_certificates = options.client_ca_file is not None
        self.status_port = int(options.status_bind.rpartition(":")[2]) \
            if options.status_bind else None
        self.large_body_lock = str(options.state_dir / "large-body.lock")
        self._serving = _serving_certificate(options)
        super().__init__()

    def tls_context(self) -> ssl.SSLContext:
        """The context for a new connection (the current serving certificate)."""
        context: ssl.SSLContext = self._serving().context()
        return context

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.options).items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        # Runs in each worker after the fork: the Kubernetes client's connection pool must not
        # be shared between processes.
        from webhooks import runs, slots
        from webhooks.app import create_app

        cluster = self.options.cluster
        return create_app({
            "POLICY_FILE": str(self.options.policy_file),
            "POLICY_LAST_GOOD_FILE": self.options.state_dir / "last-good-policy.yaml",
            "ACTIVE_RUNS": slots.from_environment() if cluster else None,
            "BUILD_RUNS": runs.from_environment() if cluster else None,
            "CLIENT_CERTIFICATES": self.options.client_ca_file is not None,
            "CLIENT_NAMES": self.options.client_names,
        })


def gunicorn_settings(options: ServerOptions) -> dict[str, Any]:
    """The gunicorn settings for these options."""
    return {
        "bind": [options.bind, *([options.status_bind] if options.status_bind else [])],
        "worker_class": AdmissionWorker,
        "workers": options.workers,
        "threads": options.threads,
        "keepalive": int(options.limits.idle_seconds),
        "graceful_timeout": GRACEFUL_SECONDS,
        "timeout": 30,
        # Only for gunicorn's own checks and log ("Listening at: https://..."): the worker
        # wraps each connection itself (`WebhookServer.tls_context`).
        "certfile": str(options.cert_file),
        "keyfile": str(options.key_file),
        "accesslog": None,
        "errorlog": "-",
        "loglevel": options.log_level,
        # gunicorn's own lines (the master's and each worker's: "Booting worker", "Worker
        # exiting", "Shutting down: Master", a worker killed) as JSON lines of the server's
        # schema, through its documented logging configuration: one log pipeline reads them all.
        "logconfig_dict": log_configuration(options.log_level),
        # Right after the fork, before the worker loads the app: loading it already logs (the
        # policy loaded, or refused and why), and post_worker_init would come too late for that.
        "post_fork": _post_fork,
        "post_worker_init": _post_worker_init,
        "child_exit": _child_exit,
        "proc_name": "toolforge-admission",
        # gunicorn's runtime control socket is an unauthenticated local admin interface that
        # also needs a writable home; the webhook has no use for it.
        "control_socket_disable": True,
    }


def log_configuration(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` that gunicorn applies in the master (and workers inherit):
    its loggers, and the master's root logger, write webhooks.logs' JSON lines to stderr."""
    json_to_stderr = {"class": "logging.StreamHandler", "formatter": "json",
                      "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "webhooks.logs.JsonFormatter"}},
        "handlers": {"json": json_to_stderr},
        "root": {"level": level.upper(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["json"],
                               "propagate": False},
            # Not written (accesslog is off: each review has its own line), but configured
            # here so that gunicorn's default, plain text on stdout, never applies.
            "gunicorn.access": {"level": "INFO", "handlers": ["json"], "propagate": False},
        },
    }


def _serving_certificate(options: ServerOptions) -> Callable[[], Any]:
    # One ServingCertificate per worker process, created after the fork: the check interval and
    # the last good context are per process, like the connections they serve. A worker with no
    # usable pair tries again at most once a second (and logs why each time), not once per
    # connection.
    cache: dict[int, Any] = {}
    refused: dict[int, tuple[float, ssl.SSLError]] = {}

    def get() -> Any:
        pid = os.getpid()
        if pid not in cache:
            from webhooks.tls import ServingCertificate

            if pid in refused and time.monotonic() - refused[pid][0] < 1.0:
                raise refused[pid][1]
            cache.clear()
            refused.clear()
            try:
                cache[pid] = ServingCertificate(
                    options.cert_file, options.key_file,
                    client_ca_file=str(options.client_ca_file) if options.client_ca_file
                    else None,
                    last_good=options.state_dir / "last-good-certificate.pem")
            except ssl.SSLError as error:
                refused[pid] = (time.monotonic(), error)
                raise
        return cache[pid]

    return get


def _post_fork(_server: Any, _worker: Any) -> None:
    from webhooks import logs

    logs.configure(os.environ.get("TOOLFORGE_ADMISSION_LOG_LEVEL", "INFO"))


def _post_worker_init(_worker: Any) -> None:
    # The app, the Kubernetes client and the policy are loaded and live as long as the worker:
    # tens of thousands of objects that every full collection would walk again. A review makes
    # thousands of short-lived ones (a Tekton pod is 45 KB of JSON), so full collections come
    # often enough that walking those took up to 20 ms, a pause for every review in the worker.
    # Frozen, they are left out of collections.
    gc.collect()
    gc.freeze()


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from webhooks import metrics

        metrics.worker_stopped(worker.pid)
