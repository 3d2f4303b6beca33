"""What is installed, as a plain dict: for `certs status` and the rotation job's summary log.

The summary carries each certificate's not-after as an RFC 3339 string and as Unix seconds, so a
log pipeline can alert on it (`certs_not_after_seconds - time() < 14 d`). The server exports the
served leaf's not-after as a Prometheus gauge itself.
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509

from certs import bundle
from certs.renewal import View, ca_renewal_time, leaf_renewal_time


def _iso(t: datetime.datetime | None) -> str | None:
    return None if t is None else t.astimezone(datetime.UTC).isoformat(timespec="seconds")


def _cert(cert: x509.Certificate, now: datetime.datetime) -> dict[str, Any]:
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "fingerprint": bundle.fingerprint(cert),
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(not_after),
        "not_after_seconds": int(not_after.timestamp()),
        "expired": now >= not_after,
    }


def role_of(cert: x509.Certificate, v: View) -> str:
    """current / next / previous for webhook-ca's CAs, else `unknown <subject>`."""
    fp = bundle.fingerprint(cert)
    for role, c in (("current", v.current.cert if v.current else None),
                    ("next", v.next.cert if v.next else None), ("previous", v.previous)):
        if c is not None and bundle.fingerprint(c) == fp:
            return role
    return f"unknown {cert.subject.rfc4514_string()}"


def describe(v: View) -> dict[str, Any]:
    """The state of every certificate and bundle, and whether anything is due."""
    now = v.now
    cas: dict[str, Any] = {}
    for role, c in (("current", v.current.cert if v.current else None),
                    ("next", v.next.cert if v.next else None), ("previous", v.previous)):
        if c is not None:
            cas[role] = _cert(c, now)
    if v.current is not None:
        due = ca_renewal_time(v)
        cas["current"]["renewal_due"] = _iso(due)
        cas["current"]["renewal_is_due"] = due is not None and now >= due
    problems = {k: p for k, p in (("current", v.current_problem), ("next", v.next_problem),
                                  ("previous", v.previous_problem)) if p}
    leaf: dict[str, Any] | None = None
    if v.leaf is not None:
        issuer = v.leaf_issuer()
        due = leaf_renewal_time(v)
        try:
            san = v.leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = san.value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        leaf = {**_cert(v.leaf.cert, now), "dns_names": names,
                "key_matches": v.leaf.key_matches,
                "issuer": None if issuer is None else role_of(issuer, v),
                "issued_at": _iso(v.leaf_issued_at),
                "renewal_due": _iso(due), "renewal_is_due": due is not None and now >= due}
    secrets = {
        "ca": None if v.observed.ca_secret is None else {
            "name": v.observed.ca_secret.name, "ours": v.observed.ca_secret.is_ours},
        "certs": None if v.observed.certs_secret is None else {
            "name": v.observed.certs_secret.name, "ours": v.observed.certs_secret.is_ours},
    }
    bundles: dict[str, Any] = {}
    if v.secret_bundle is not None:
        bundles[f"secret/{v.settings.certs_secret}"] = [role_of(c, v) for c in v.secret_bundle]
    for config, entries in v.webhook_bundles:
        for entry, certs in zip(config.entries, entries, strict=True):
            bundles[f"{config.label}/{entry.name}"] = [role_of(c, v) for c in certs]
    return {"now": _iso(now), "secrets": secrets, "cas": cas, "ca_problems": problems,
            "leaf": leaf, "leaf_problem": v.leaf_problem, "bundles": bundles,
            "bundled_ca": v.bundled_ca, "bundled_at": _iso(v.bundled_at)}
