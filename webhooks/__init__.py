"""The HTTP edge: AdmissionReviews in, AdmissionReviews out.

gunicorn loads `webhooks.app:create_app()`. Nothing is imported here, so that `serve` can set up
prometheus_client's multiprocess directory before any metric exists.
"""
