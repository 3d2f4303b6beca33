"""Errors about the webhook request itself, as opposed to the object under review.

    WebhookError             the review cannot be judged: an HTTP 4xx, the object is never looked at
      BadReviewError         400: the body is not an admission.k8s.io/v1 AdmissionReview we can read
      UnsupportedMediaError  415: the body is not JSON
      BodyTooLargeError      413: the body is over the cap
      ClientNotAllowedError  403: mutual TLS is on and the caller is not the API server

A bad *object* is not an error: it is a `policies.decision.Decision` with `allowed=False`, sent
back with HTTP 200 as the API server requires. `webhooks.app` maps these classes to responses in
one error handler.
"""

from __future__ import annotations


class WebhookError(Exception):
    """The request to the webhook is unusable; answered with `status` and the message."""

    status = 400
    reason = "BadRequest"


class BadReviewError(WebhookError):
    """The body is not a readable admission.k8s.io/v1 AdmissionReview."""

    status = 400
    reason = "BadReview"


class UnsupportedMediaError(WebhookError):
    """The body is not sent as JSON."""

    status = 415
    reason = "UnsupportedMediaType"


class BodyTooLargeError(WebhookError):
    """The body is larger than the webhook accepts."""

    status = 413
    reason = "BodyTooLarge"


class ClientNotAllowedError(WebhookError):
    """The connection has no verified client certificate, or one with a name not allowed."""

    status = 403
    reason = "ClientNotAllowed"
