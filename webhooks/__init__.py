"""The HTTP edge: AdmissionReviews in, AdmissionReviews out (gunicorn: `webhooks:create_app()`)."""

from webhooks.app import create_app

__all__ = ["create_app"]
