"""gunicorn, configured for an admission webhook.

- gthread workers: the API server keeps HTTPS connections alive and reuses them, which sync
  workers cannot do (they would pay a TLS handshake per review).
- keep-alive longer than the API server's 90 s idle timeout, so the API server always closes an
  idle connection first; a server-side close races with a reuse and fails a review.
- on SIGTERM gunicorn stops accepting, finishes in-flight reviews within the graceful timeout and
  answers them with `Connection: close`, so the API server moves to the other replicas.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

KEEPALIVE_SECONDS = 120
GRACEFUL_SECONDS = 25


@dataclass(frozen=True)
class ServerOptions:
    bind: str
    cert_file: Path
    key_file: Path
    policy_file: Path
    workers: int = 2
    threads: int = 8
    client_ca_file: Path | None = None
    """When set, only clients with a certificate from this CA (the API server) may connect."""
    log_level: str = "info"
    state_dir: Path = Path("/tmp")  # noqa: S108 - the pod's own emptyDir in production
    """Files the workers of this server share (the last good policy)."""
    cluster: bool = True
    """Use the cluster (in-cluster config or KUBECONFIG) for the active-run check; without it
    the check is skipped with a warning, as in `--dev` mode with no KUBECONFIG."""


class WebhookServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running `webhooks.app:create_app` with the options above."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.options).items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        # Runs in each worker after the fork: the Kubernetes client's connection pool must not
        # be shared between processes.
        from webhooks.app import create_app
        from webhooks.slots import from_environment

        active_runs = from_environment() if self.options.cluster else None
        return create_app({
            "POLICY_FILE": str(self.options.policy_file),
            "POLICY_LAST_GOOD_FILE": self.options.state_dir / "last-good-policy.yaml",
            "ACTIVE_RUNS": active_runs,
        })


def gunicorn_settings(options: ServerOptions) -> dict[str, Any]:
    """The gunicorn settings for these options."""
    serving = _serving_certificate(options)

    def ssl_context(_config: Any, _default: Callable[[], Any]) -> Any:
        return serving().context()

    return {
        "bind": [options.bind],
        "worker_class": "gthread",
        "workers": options.workers,
        "threads": options.threads,
        "keepalive": KEEPALIVE_SECONDS,
        "graceful_timeout": GRACEFUL_SECONDS,
        "timeout": 30,
        "certfile": str(options.cert_file),
        "keyfile": str(options.key_file),
        "ssl_context": ssl_context,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": options.log_level,
        "post_worker_init": _post_worker_init,
        "child_exit": _child_exit,
        "proc_name": "toolforge-admission",
        # gunicorn's runtime control socket is an unauthenticated local admin interface that
        # also needs a writable home; the webhook has no use for it.
        "control_socket_disable": True,
    }


def _serving_certificate(options: ServerOptions) -> Callable[[], Any]:
    # One ServingCertificate per worker process, created after the fork: the check interval and
    # the last good context are per process, like the connections they serve.
    cache: dict[int, Any] = {}

    def get() -> Any:
        pid = os.getpid()
        if pid not in cache:
            from webhooks.tls import ServingCertificate

            cache.clear()
            cache[pid] = ServingCertificate(
                options.cert_file, options.key_file,
                client_ca_file=str(options.client_ca_file) if options.client_ca_file else None)
        return cache[pid]

    return get


def _post_worker_init(worker: Any) -> None:
    from webhooks import logs

    logs.configure(os.environ.get("TOOLFORGE_ADMISSION_LOG_LEVEL", "INFO"))


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
