"""The Kubernetes API client the service's cluster readers share, and their error text."""

from __future__ import annotations

from typing import Any, TypeVar

ErrorT = TypeVar("ErrorT", bound=Exception)


def api_client() -> Any:
    """A client from the in-cluster config (or KUBECONFIG), making one attempt per call.

    Call it in each worker process, after gunicorn forks: the client's connection pool must not
    be shared between processes.
    """
    from kubernetes import client, config  # noqa: PLC0415 - only the service needs the client

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # One attempt per call: retries are the callers', within their deadlines.
    configuration.retries = 0
    return client.ApiClient(configuration)


def unavailable(action: str, error: Exception, kind: type[ErrorT]) -> ErrorT:
    """`kind` with what failed and why: the HTTP status, or the connection's error."""
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    if status is not None:
        detail = f"HTTP {status} {reason or ''}".strip()
    else:
        # urllib3 wraps the cause (refused, reset, timed out) in MaxRetryError.reason.
        cause = reason if isinstance(reason, Exception) else error
        detail = f"{type(cause).__name__}: {str(cause)[:200]}"
    return kind(f"{action} failed: {detail}")
