"""The Flask application: routes, the one error mapping, and per-review logs and metrics."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wsgi import get_input_stream

from policies.decision import Decision
from policies.rule import Facts
from webhooks import logs, metrics
from webhooks.admission import ENDPOINTS, ActiveRuns, BuildRunReader, Cluster, Endpoint, answer
from webhooks.errors import (
    BadReviewError,
    BodyTooLargeError,
    ClientNotAllowedError,
    UnsupportedMediaError,
    WebhookError,
)
from webhooks.mounts import POLICY_FILE
from webhooks.policy_source import PolicySource
from webhooks.review import MAX_BODY_BYTES, AdmissionRequest, build_response, parse_review
from webhooks.tls import verified_client_names

logger = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = {
    "POLICY_FILE": POLICY_FILE,
    # The continuous audit's summary (the ConfigMap toolforge-admission-audit), exported on
    # /metrics; nothing is exported while it is absent.
    "AUDIT_SUMMARY_FILE": "/etc/toolforge-admission/audit/audit.json",
    "POLICY_RELOAD_SECONDS": 2.0,
    "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
    # Mutual TLS: admission reviews only over a connection with a client certificate that the
    # TLS layer verified against the client CA, and when CLIENT_NAMES is not empty, only with
    # one of those names (subject CN or DNS name).
    "CLIENT_CERTIFICATES": False,
    "CLIENT_NAMES": (),
}
EXTENSION = "toolforge-admission"


class Service:
    """What the endpoints share inside one worker process."""

    def __init__(self, source: PolicySource, clock: Callable[[], datetime.datetime],
                 active_runs: ActiveRuns | None, build_runs: BuildRunReader | None = None,
                 ) -> None:
        self.source = source
        self.clock = clock
        self.cluster = Cluster(active_runs=active_runs, build_runs=build_runs)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the webhook application."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("TOOLFORGE_ADMISSION")
    if config is not None:
        app.config.update(config)
    source = PolicySource(app.config["POLICY_FILE"], interval=app.config["POLICY_RELOAD_SECONDS"],
                          last_good=app.config.get("POLICY_LAST_GOOD_FILE"))
    source.start()
    clock = app.config.get("CLOCK") or (lambda: datetime.datetime.now(datetime.UTC))
    app.extensions[EXTENSION] = Service(source, clock, app.config.get("ACTIVE_RUNS"),
                                        app.config.get("BUILD_RUNS"))
    app.register_blueprint(_health_blueprint())
    app.register_error_handler(HTTPException, _http_error)
    app.wsgi_app = AdmissionDispatcher(app, app.wsgi_app)  # type: ignore[method-assign]
    return app


class AdmissionDispatcher:
    """WSGI middleware that answers the admission paths; Flask serves everything else.

    An admission review is one POST of JSON and one JSON answer; Flask's per-request machinery
    (request context, URL matching, Request and Response objects) cost about as much as the
    review itself. This is also the one place where errors about the request become HTTP 4xx
    answers. An unforeseen exception goes to Flask's own handler, as in a view.
    """

    def __init__(self, app: Flask, flask_wsgi: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.flask_wsgi = flask_wsgi
        self.endpoints = {endpoint.path: endpoint for endpoint in ENDPOINTS}
        self.client_certificates = bool(app.config["CLIENT_CERTIFICATES"])
        self.client_names = frozenset(app.config["CLIENT_NAMES"])

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        endpoint = self.endpoints.get(environ.get("PATH_INFO", ""))
        if endpoint is None:
            return self.flask_wsgi(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            body = _status_body(405, "MethodNotAllowed",
                                f"{endpoint.path} answers admission reviews: POST only")
            start_response("405 METHOD NOT ALLOWED", [
                ("Allow", "POST"), ("Content-Type", "application/json"),
                ("Content-Length", str(len(body)))])
            return [body]
        started = time.perf_counter()
        try:
            if self.client_certificates:
                # Before the body is read: a forged review must not reach a rule, least of all
                # the active-run check, which takes a slot.
                _authenticate(environ.get("gunicorn.socket"), environ.get("REMOTE_ADDR"),
                              self.client_names)
            content_type = environ.get("CONTENT_TYPE", "")
            if content_type != "application/json" and \
                    parse_options_header(content_type)[0].lower() != "application/json":
                raise UnsupportedMediaError("Content-Type must be application/json")
            review_body = _read_body(environ, self.app.config["MAX_CONTENT_LENGTH"])
            service = self.app.extensions[EXTENSION]
            body, status = _review(endpoint, review_body, service, started), 200
        except WebhookError as error:
            body, status = _refusal(endpoint.name, error)
        except RequestEntityTooLarge:
            body, status = _refusal(endpoint.name, _body_too_large())
        except ClientDisconnected:  # an HTTPException, which handle_exception makes a 500
            body, status = _refusal(endpoint.name, BadReviewError(
                "the body ended before its Content-Length"))
        except Exception as error:
            with self.app.request_context(environ):
                response = self.app.handle_exception(error)  # logs it; re-raises when testing
            return response(environ, start_response)
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, at most `limit` bytes (RequestEntityTooLarge beyond).

    The API server always sends a Content-Length, and gunicorn's input stream already stops at
    it; anything else (no length, a chunked body) goes through Werkzeug's checks.
    """
    length = environ.get("CONTENT_LENGTH", "")
    if not length.isdigit() or int(length) > limit:
        return bytes(get_input_stream(environ, max_content_length=limit).read())
    body: bytes = environ["wsgi.input"].read(int(length))
    if len(body) != int(length):
        raise ClientDisconnected()  # as Werkzeug's stream reports a body cut short
    return body


def _authenticate(connection: object, address: str | None, allowed: frozenset[str]) -> None:
    """Raise ClientNotAllowedError unless the connection is the API server's (mutual TLS).
    The message names the peer address, for the admin who finds it in the log."""
    names = verified_client_names(connection)
    if names is None:
        raise ClientNotAllowedError(f"admission reviews are accepted only from the API server: "
                                    f"the connection from {address} has no client certificate "
                                    f"from the webhook's client CA")
    if allowed and allowed.isdisjoint(names):
        raise ClientNotAllowedError(f"admission reviews are accepted only from the API server: "
                                    f"client certificate names {list(names)} (from {address}) "
                                    f"are not allowed")


def _service() -> Service:
    service: Service = current_app.extensions[EXTENSION]
    return service


def _review(endpoint: Endpoint, body: bytes, service: Service, started: float) -> bytes:
    """Answer one review body: the JSON reply; raises WebhookError for a bad request."""
    review = parse_review(body)
    policy = service.source.policy
    facts = Facts(policy, service.clock()) if policy is not None else None
    decision, patch = answer(endpoint, review, facts, service.cluster)
    _record(endpoint.name, review, decision, time.perf_counter() - started)
    return orjson.dumps(build_response(review.uid, decision, patch))


def _record(endpoint: str, review: AdmissionRequest, decision: Decision, seconds: float) -> None:
    if not decision.allowed:
        outcome = "denied"
    elif decision.warnings:
        outcome = "warned"
    elif decision.patched is not None:
        outcome = "mutated"
    else:
        outcome = "allowed"
    metrics.reviews(endpoint, review.operation, outcome, decision.reason).inc()
    metrics.review_seconds(endpoint).observe(seconds)
    logs.info_fields(logger, "review", {
        "uid": review.uid,
        "endpoint": endpoint,
        "operation": review.operation,
        "sub_resource": review.sub_resource,
        "kind": review.kind,
        "namespace": review.namespace,
        "name": review.name,
        "user": review.user.username,
        "dry_run": review.dry_run,
        "decision": outcome,
        "reason": decision.reason,
        "detail": decision.message,
        "duration_ms": round(seconds * 1000, 3),
    })


def _refusal(endpoint: str, error: WebhookError) -> tuple[bytes, int]:
    """Count and log a bad request; the Status body and HTTP status to answer it with."""
    metrics.reviews(endpoint, "", "invalid", error.reason).inc()
    logger.warning("bad request", extra={"fields": {
        "endpoint": endpoint, "reason": error.reason, "error": str(error)}})
    return _status_body(error.status, error.reason, str(error)), error.status


def _status_body(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes `Status`, what the API server and kubectl understand as an error."""
    return orjson.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                         "reason": reason, "message": message})


# Kubernetes' names for the HTTP errors Flask raises itself (`metav1.StatusReason`).
_STATUS_REASONS = {404: "NotFound", 405: "MethodNotAllowed", 500: "InternalError"}


def _http_error(error: HTTPException) -> Response:
    """Unknown paths, wrong methods, and unforeseen failures: a JSON Status, not an HTML page."""
    code = error.code or 500
    if code == 404:
        paths = ", ".join(endpoint.path for endpoint in ENDPOINTS)
        message = (f"no such path; the admission endpoints are {paths} (POST), the probes "
                   "/healthz and /readyz and the metrics /metrics (GET)")
    else:
        message = error.description or HTTP_STATUS_CODES.get(code, "error")
    response = Response(_status_body(code, _STATUS_REASONS.get(code, type(error).__name__),
                                     message), status=code, content_type="application/json")
    for name, value in error.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


def _body_too_large() -> BodyTooLargeError:
    return BodyTooLargeError(f"body is larger than {MAX_BODY_BYTES} bytes")



def _health_blueprint() -> Blueprint:
    blueprint = Blueprint("health", __name__)

    @blueprint.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @blueprint.get("/readyz")
    def readyz() -> tuple[Response, int]:
        source = _service().source
        if source.policy is None:
            text = f"not ready: no valid policy: {source.error or 'not loaded yet'}\n"
            return Response(text, mimetype="text/plain"), 503
        # A refused edit leaves the last good policy serving: still ready, but say so.
        note = f" (policy file refused: {source.error})" if source.error else ""
        return Response(f"ok: policy {source.policy.digest[:12]}{note}\n",
                        mimetype="text/plain"), 200

    @blueprint.get("/metrics")
    def metrics_view() -> Response:
        text, content_type = metrics.exposition(current_app.config["AUDIT_SUMMARY_FILE"])
        return Response(text, content_type=content_type)

    return blueprint
