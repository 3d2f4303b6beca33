"""The Flask application: routes, the one error mapping, and per-review logs and metrics."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from policies.decision import Decision, deny
from webhooks import metrics
from webhooks.admission import ENDPOINTS, ActiveRuns, Context, Endpoint, answer
from webhooks.errors import BodyTooLargeError, UnsupportedMediaError, WebhookError
from webhooks.policy_source import PolicySource
from webhooks.review import MAX_BODY_BYTES, AdmissionRequest, build_response, parse_review

logger = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = {
    "POLICY_FILE": "/etc/toolforge-admission/policy/policy.yaml",
    "POLICY_RELOAD_SECONDS": 2.0,
    "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
}
NO_POLICY = "NoPolicy"
EXTENSION = "toolforge-admission"


class Service:
    """What the endpoints share inside one worker process."""

    def __init__(self, source: PolicySource, clock: Callable[[], datetime.datetime],
                 active_runs: ActiveRuns | None) -> None:
        self.source = source
        self.clock = clock
        self.active_runs = active_runs


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
    app.extensions[EXTENSION] = Service(source, clock, app.config.get("ACTIVE_RUNS"))
    app.register_blueprint(_admission_blueprint())
    app.register_blueprint(_health_blueprint())
    app.register_error_handler(WebhookError, _bad_request)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    return app


def _service() -> Service:
    service: Service = current_app.extensions[EXTENSION]
    return service


def _admission_blueprint() -> Blueprint:
    blueprint = Blueprint("admission", __name__)
    for endpoint in ENDPOINTS:
        blueprint.add_url_rule(endpoint.path, endpoint.name, _view(endpoint), methods=["POST"])
    return blueprint


def _view(endpoint: Endpoint) -> Callable[[], Response]:
    def view() -> Response:
        started = time.perf_counter()
        request.environ["toolforge_admission.endpoint"] = endpoint.name
        if request.mimetype != "application/json":
            raise UnsupportedMediaError("Content-Type must be application/json")
        review = parse_review(request.get_data(cache=False))
        service = _service()
        policy = service.source.policy
        if policy is None:
            decision = deny(NO_POLICY, "toolforge-admission has no valid policy loaded, so it "
                                       "refuses everything; a platform admin must fix the policy")
            payload = build_response(review.uid, decision)
        else:
            context = Context(policy=policy, now=service.clock(), active_runs=service.active_runs)
            decision, payload = answer(endpoint, review, context)
        _record(endpoint.name, review, decision, time.perf_counter() - started)
        return Response(orjson.dumps(payload), mimetype="application/json")

    view.__name__ = endpoint.name.replace("-", "_")
    return view


def _record(endpoint: str, review: AdmissionRequest, decision: Decision, seconds: float) -> None:
    if not decision.allowed:
        outcome = "denied"
    elif decision.warnings:
        outcome = "warned"
    elif decision.patched is not None:
        outcome = "mutated"
    else:
        outcome = "allowed"
    metrics.REVIEWS.labels(endpoint, review.operation, outcome, decision.reason).inc()
    metrics.REVIEW_SECONDS.labels(endpoint).observe(seconds)
    logger.info("review", extra={"fields": {
        "uid": review.uid,
        "endpoint": endpoint,
        "operation": review.operation,
        "kind": review.kind.kind,
        "namespace": review.namespace,
        "name": review.name,
        "user": review.user.username,
        "dry_run": review.dry_run,
        "decision": outcome,
        "reason": decision.reason,
        "detail": decision.message,
        "duration_ms": round(seconds * 1000, 3),
    }})


def _bad_request(error: WebhookError) -> tuple[Response, int]:
    endpoint = request.environ.get("toolforge_admission.endpoint", request.path)
    metrics.REVIEWS.labels(endpoint, "", "invalid", error.reason).inc()
    logger.warning("bad request", extra={"fields": {
        "endpoint": endpoint, "reason": error.reason, "error": str(error)}})
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": error.status,
            "reason": error.reason, "message": str(error)}
    return Response(orjson.dumps(body), mimetype="application/json"), error.status


def _too_large(_: RequestEntityTooLarge) -> tuple[Response, int]:
    return _bad_request(BodyTooLargeError(f"body is larger than {MAX_BODY_BYTES} bytes"))


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
        text, content_type = metrics.exposition()
        return Response(text, content_type=content_type)

    return blueprint
