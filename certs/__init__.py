"""Serving certificates for the webhook: issue, renew with CA overlap, and publish them."""
