"""What rotation reads and writes, as plain data: Secrets, webhook configurations, settings.

Everything the rotation remembers between runs lives in the two Secrets (data keys and
annotations below), so a crashed or concurrent run leaves nothing behind that the next run cannot
read. The names are shared with the manifests (RBAC, the webhook pods' volume) and with the
server, which mounts only `webhook-certs`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# -- Secret data keys ------------------------------------------------------------------------
# webhook-certs (mounted by the webhook pods; type kubernetes.io/tls)
TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_BUNDLE = "ca.crt"  # every CA the API server is asked to trust, same as each caBundle
# webhook-ca (read by the rotation job only; never mounted)
CA_CRT = "ca.crt"  # the CA that signs new serving certificates
CA_KEY = "ca.key"
NEXT_CA_CRT = "next-ca.crt"  # during a rollover: the CA being added to every bundle
NEXT_CA_KEY = "next-ca.key"
PREVIOUS_CA_CRT = "previous-ca.crt"  # after a rollover: kept in bundles until retired (no key)

# -- Marks -----------------------------------------------------------------------------------
PREFIX = "certs.toolforge-admission.toolforge.org"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "toolforge-admission-certs"
ISSUED_BY_ANNOTATION = f"{PREFIX}/issued-by"  # == MANAGED_BY on every Secret we created
# On webhook-ca: the CA that every bundle was first seen to carry, and when (RFC 3339). The
# serving certificate may switch to that CA once the propagation delay has passed since then.
BUNDLED_CA_ANNOTATION = f"{PREFIX}/bundled-ca"
BUNDLED_AT_ANNOTATION = f"{PREFIX}/bundled-at"
# On webhook-certs: when tls.crt was last written. The CA that signed the one before may leave
# the bundles once the propagation delay has passed since then.
LEAF_ISSUED_AT_ANNOTATION = f"{PREFIX}/leaf-issued-at"

SECRET_TYPE_TLS = "kubernetes.io/tls"  # noqa: S105 (a type name)
SECRET_TYPE_OPAQUE = "Opaque"  # noqa: S105 (a type name)

WebhookKind = Literal["validating", "mutating"]


@dataclass(frozen=True)
class Secret:
    """A Secret as read (with its resourceVersion) or as to be written."""

    name: str
    data: Mapping[str, bytes]
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    type: str = SECRET_TYPE_OPAQUE
    resource_version: str | None = None

    @property
    def is_ours(self) -> bool:
        """True if toolforge-admission created it (and may therefore replace it)."""
        return (self.annotations.get(ISSUED_BY_ANNOTATION) == MANAGED_BY
                or self.labels.get(MANAGED_BY_LABEL) == MANAGED_BY)


@dataclass(frozen=True)
class WebhookEntry:
    """One webhook of a configuration: its name and the caBundle it carries (PEM)."""

    name: str
    ca_bundle: bytes


@dataclass(frozen=True)
class WebhookConfiguration:
    """A Validating/MutatingWebhookConfiguration of the suite, reduced to its bundles."""

    kind: WebhookKind
    name: str
    resource_version: str
    entries: tuple[WebhookEntry, ...]

    @property
    def label(self) -> str:
        return f"{self.kind}webhookconfiguration/{self.name}"


@dataclass(frozen=True)
class Observed:
    """Everything a decision needs, read in one gather."""

    certs_secret: Secret | None
    ca_secret: Secret | None
    webhook_configurations: tuple[WebhookConfiguration, ...]


@dataclass(frozen=True)
class Settings:
    """Names and timings of one installation."""

    namespace: str = "toolforge-admission"
    service: str = "toolforge-admission"
    certs_secret: str = "webhook-certs"  # noqa: S105 (a Secret name)
    ca_secret: str = "webhook-ca"  # noqa: S105 (a Secret name)
    webhook_label: str = "app.kubernetes.io/part-of=toolforge-admission"
    # Leaf: 90 days like cert-manager's default; renewed at 2/3 of its lifetime (renew_before
    # None = a third of the certificate's own duration), leaving a month of daily retries and
    # alerts at 14/7 days before anything breaks.
    leaf_lifetime: datetime.timedelta = datetime.timedelta(days=90)
    leaf_renew_before: datetime.timedelta | None = None
    # CA: one year, renewed at 2/3 (about 4 months left). The remaining life of a CA that is due
    # exceeds the leaf lifetime, so a leaf is never cut short by its CA's expiry, and the
    # rollover path runs twice a year instead of once in a decade (Kyverno's one-year CA expired
    # because nothing ever exercised renewal: kyverno#13639, #10063).
    ca_lifetime: datetime.timedelta = datetime.timedelta(days=365)
    ca_renew_before: datetime.timedelta | None = None
    # Time for a change to reach everything that caches it: the kubelet refreshes mounted Secrets
    # after its sync period plus cache TTL (about a minute or two), the server polls its files,
    # and every API server replica's informer must see a new caBundle. Five minutes covers
    # these with margin; a CA rollover waits for it twice.
    propagation_delay: datetime.timedelta = datetime.timedelta(minutes=5)

    @property
    def dns_names(self) -> tuple[str, ...]:
        s, ns = self.service, self.namespace
        return (s, f"{s}.{ns}", f"{s}.{ns}.svc")

    def check(self) -> None:
        """Raise ValueError if the timings contradict each other."""
        for what, lifetime, before in (("leaf", self.leaf_lifetime, self.leaf_renew_before),
                                       ("CA", self.ca_lifetime, self.ca_renew_before)):
            if lifetime <= datetime.timedelta(0):
                raise ValueError(f"{what} lifetime must be positive")
            if before is not None and not datetime.timedelta(0) < before < lifetime:
                raise ValueError(f"{what} renew-before must be between 0 and the lifetime")
        if self.propagation_delay < datetime.timedelta(0):
            raise ValueError("propagation delay must not be negative")
