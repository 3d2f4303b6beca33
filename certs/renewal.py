"""Decide the next rotation step from the observed Secrets and bundles and the time. Pure.

The rotation is a state machine whose state is the two Secrets and the caBundles themselves:

    steady        webhook-ca {ca}            bundles {ca}          leaf signed by ca
    rollover      webhook-ca {ca, next}      bundles {ca, next}    leaf signed by ca
       (next is in every bundle: mark it bundled; wait the propagation delay)
    promoted      webhook-ca {ca=next, prev} bundles {prev, ca}    leaf signed by prev
       (issue a leaf signed by ca; wait the propagation delay for pods to serve it)
    retired       webhook-ca {ca}            bundles {ca}          leaf signed by ca

Each step is one write, and the next step is decided from a fresh read, so a run that dies
between two writes leaves a state this module recognises, and two runs racing each other only
lose a resourceVersion precondition. Two rules keep every bundle trusting the served leaf:
a leaf is signed only by a CA that every bundle has carried for the propagation delay, and a CA
leaves a bundle only when no leaf it signed has been served for the propagation delay.

`decide()` runs a chain of named checks (like cert-manager's trigger policies). A check returns
an action, a wait, or nothing; the first action wins, and waits are kept so that later checks
(another bundle to sync, say) still run. A check guards itself: none relies on the ones before it
for the safety rules above.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certs import bundle, state
from certs.bundle import BundleError
from certs.issue import BACKDATE
from certs.state import Observed, Settings, WebhookConfiguration

# -- Reasons (the first word of every log line about a step) ----------------------------------
CA_SECRET_FOREIGN = "CaSecretNotOurs"  # noqa: S105 (a reason, not a password)
CERTS_SECRET_FOREIGN = "CertsSecretNotOurs"  # noqa: S105 (a reason, not a password)
CA_SECRET_MISSING = "CaSecretMissing"  # noqa: S105 (a reason, not a password)
CA_UNUSABLE = "CaUnusable"
NEXT_CA_UNUSABLE = "NextCaUnusable"
PREVIOUS_CA_UNUSABLE = "PreviousCaUnusable"
BUNDLED_MARK_STALE = "BundledMarkStale"
WEBHOOK_BUNDLE_OUT_OF_SYNC = "WebhookBundleOutOfSync"
SECRET_BUNDLE_OUT_OF_SYNC = "SecretBundleOutOfSync"  # noqa: S105 (a reason, not a password)
CA_IN_EVERY_BUNDLE = "CaInEveryBundle"
LEAF_UNSERVABLE = "LeafUnservable"
LEAF_SIGNED_BY_OLD_CA = "LeafSignedByOldCa"
NEXT_CA_PROPAGATED = "NextCaPropagated"
PREVIOUS_CA_UNUSED = "PreviousCaUnused"
LEAF_NAMES_CHANGED = "LeafNamesChanged"
LEAF_NEARING_EXPIRY = "LeafNearingExpiry"
CA_NEARING_EXPIRY = "CaNearingExpiry"
UP_TO_DATE = "UpToDate"

ActionKind = Literal[
    "refuse",              # a Secret is not ours: stop, change nothing
    "create-ca",           # write webhook-ca with a fresh CA (keep `ca` as the previous CA)
    "drop-next-ca",        # remove the next CA from webhook-ca
    "drop-previous-ca",    # remove the previous CA from webhook-ca
    "clear-bundled-mark",  # remove the bundled mark from webhook-ca
    "sync-webhook-bundle", # set every caBundle of `configuration` to `bundle`
    "sync-secret-bundle",  # set ca.crt of webhook-certs to `bundle`
    "mark-bundled",        # record on webhook-ca that `ca` is in every bundle, now
    "issue-leaf",          # write webhook-certs: a leaf signed by the current CA, ca.crt=`bundle`
    "start-rollover",      # add a fresh next CA to webhook-ca
    "promote-next-ca",     # webhook-ca: current becomes previous, next becomes current
    "retire-previous-ca",  # remove the previous CA from webhook-ca
    "wait",                # nothing to do before `until`
    "done",                # nothing to do; `until` is the next renewal
]
WRITES: frozenset[ActionKind] = frozenset({
    "create-ca", "drop-next-ca", "drop-previous-ca", "clear-bundled-mark", "sync-webhook-bundle",
    "sync-secret-bundle", "mark-bundled", "issue-leaf", "start-rollover", "promote-next-ca",
    "retire-previous-ca"})


@dataclass(frozen=True)
class Action:
    """One step, with the reason (a constant above) and a message for people."""

    kind: ActionKind
    reason: str
    message: str
    bundle: tuple[x509.Certificate, ...] = ()
    configuration: WebhookConfiguration | None = None
    ca: x509.Certificate | None = None
    until: datetime.datetime | None = None


@dataclass(frozen=True)
class CaPair:
    """A CA certificate with its private key, both checked."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Leaf:
    """The serving certificate in webhook-certs, parsed."""

    cert: x509.Certificate
    key_matches: bool


@dataclass(frozen=True)
class View:
    """The observed state, parsed once; what every check reads."""

    now: datetime.datetime
    settings: Settings
    observed: Observed
    current: CaPair | None
    current_problem: str | None
    next: CaPair | None
    next_problem: str | None
    previous: x509.Certificate | None
    previous_problem: str | None
    bundled_ca: str | None
    bundled_at: datetime.datetime | None
    leaf: Leaf | None
    leaf_problem: str | None
    leaf_issued_at: datetime.datetime | None
    secret_bundle: tuple[x509.Certificate, ...] | None  # None: no webhook-certs Secret
    webhook_bundles: tuple[tuple[WebhookConfiguration, tuple[tuple[x509.Certificate, ...], ...]],
                           ...]

    def bundles(self) -> list[tuple[x509.Certificate, ...]]:
        """Every bundle there is: webhook-certs' ca.crt and each webhook's caBundle."""
        out = [] if self.secret_bundle is None else [self.secret_bundle]
        return out + [b for _, entries in self.webhook_bundles for b in entries]

    def in_every_bundle(self, cert: x509.Certificate) -> bool:
        return all(bundle.contains(b, cert) for b in self.bundles())

    def ca_certs(self) -> tuple[x509.Certificate, ...]:
        """The CAs webhook-ca keeps in the bundles: previous, current, next."""
        return tuple(c for c in (self.previous,
                                 self.current.cert if self.current else None,
                                 self.next.cert if self.next else None) if c is not None)

    def leaf_issuer(self) -> x509.Certificate | None:
        """The CA, from webhook-ca or any bundle, whose signature the leaf carries."""
        if self.leaf is None:
            return None
        pool = bundle.unique([*self.ca_certs(), *(c for b in self.bundles() for c in b)])
        return bundle.issuer_in(self.leaf.cert, pool)

    def served_issuer(self) -> x509.Certificate | None:
        """The CA of a leaf the API server can verify today, if the leaf is servable."""
        if self.leaf is None or not self.leaf.key_matches:
            return None
        if self.now >= self.leaf.cert.not_valid_after_utc:
            return None
        union = bundle.unique(c for b in self.bundles() for c in b)
        return bundle.issuer_in(self.leaf.cert, union)

    def leaf_signed_by_current(self) -> bool:
        return (self.leaf is not None and self.current is not None
                and bundle.is_signed_by(self.leaf.cert, self.current.cert))

    def target_bundle(self) -> tuple[x509.Certificate, ...]:
        """What every bundle should hold: webhook-ca's CAs, plus whatever signed the served
        leaf (never drop the CA that verifies what is being served)."""
        served = self.served_issuer()
        return bundle.unique([*self.ca_certs(), *([served] if served is not None else [])])

    def bundled_since(self, cert: x509.Certificate) -> datetime.datetime | None:
        """When `cert` was marked as in every bundle, if it is the marked CA."""
        if self.bundled_ca == bundle.fingerprint(cert):
            return self.bundled_at
        return None


def renewal_time(not_before: datetime.datetime, not_after: datetime.datetime,
                 renew_before: datetime.timedelta | None) -> datetime.datetime:
    """When a certificate is due: `renew_before` ahead of expiry, or at 2/3 of its lifetime.

    A `renew_before` at least as long as the certificate's own duration (a leaf cut short by its
    CA's expiry) falls back to 2/3, as cert-manager does. The result is truncated to whole
    seconds so that a certificate read back from PEM is due at the same instant
    (cert-manager PR 4399).
    """
    duration = not_after - not_before
    if renew_before is None or renew_before >= duration:
        renew_before = duration / 3
    return (not_after - renew_before).replace(microsecond=0)


# -- Parsing -------------------------------------------------------------------------------------

def load_ca_pair(cert_pem: bytes | None, key_pem: bytes | None) -> tuple[CaPair | None, str | None]:
    """A checked CA pair, or the problem with it."""
    if not cert_pem or not key_pem:
        return None, "certificate or key missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        return None, f"certificate does not parse: {e}"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None, "certificate is not a CA (no basicConstraints)"
    if not constraints.ca:
        return None, "certificate is not a CA (CA:FALSE)"
    if not _key_matches(cert, key_pem):
        return None, "private key does not match the certificate"
    return CaPair(cert, cert_pem, key_pem), None


def _load_key(key_pem: bytes) -> PrivateKeyTypes | None:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None


def _key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    key = _load_key(key_pem)
    if key is None:
        return False
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(pem, spki)
                == cert.public_key().public_bytes(pem, spki))


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.UTC)


def _parse_bundle(pem: bytes) -> tuple[x509.Certificate, ...]:
    # An unparseable bundle trusts nothing; syncing rewrites it.
    try:
        return bundle.parse_bundle(pem)
    except BundleError:
        return ()


def view(observed: Observed, now: datetime.datetime, settings: Settings) -> View:
    """Parse what was observed."""
    ca_data = observed.ca_secret.data if observed.ca_secret else {}
    ca_ann = observed.ca_secret.annotations if observed.ca_secret else {}
    current, current_problem = load_ca_pair(ca_data.get(state.CA_CRT), ca_data.get(state.CA_KEY))
    nxt, next_problem = (None, None)
    if state.NEXT_CA_CRT in ca_data or state.NEXT_CA_KEY in ca_data:
        nxt, next_problem = load_ca_pair(ca_data.get(state.NEXT_CA_CRT),
                                         ca_data.get(state.NEXT_CA_KEY))
    previous, previous_problem = None, None
    if state.PREVIOUS_CA_CRT in ca_data:
        try:
            previous = x509.load_pem_x509_certificate(ca_data[state.PREVIOUS_CA_CRT])
        except ValueError as e:
            previous_problem = f"certificate does not parse: {e}"

    leaf, leaf_problem, secret_bundle = None, None, None
    certs_secret = observed.certs_secret
    if certs_secret is None:
        leaf_problem = "Secret missing"
    else:
        secret_bundle = _parse_bundle(certs_secret.data.get(state.CA_BUNDLE, b""))
        crt, key = certs_secret.data.get(state.TLS_CRT), certs_secret.data.get(state.TLS_KEY)
        if not crt or not key:
            leaf_problem = "tls.crt or tls.key missing"
        else:
            try:
                cert = x509.load_pem_x509_certificate(crt)
            except ValueError as e:
                leaf_problem = f"tls.crt does not parse: {e}"
            else:
                leaf = Leaf(cert, _key_matches(cert, key))
    leaf_issued_at = None
    if certs_secret is not None:
        leaf_issued_at = _parse_time(certs_secret.annotations.get(state.LEAF_ISSUED_AT_ANNOTATION))
    if leaf_issued_at is None and leaf is not None:
        leaf_issued_at = leaf.cert.not_valid_before_utc + BACKDATE

    webhook_bundles = tuple(
        (config, tuple(_parse_bundle(e.ca_bundle) for e in config.entries))
        for config in observed.webhook_configurations)
    return View(
        now=now, settings=settings, observed=observed,
        current=current, current_problem=None if observed.ca_secret is None else current_problem,
        next=nxt, next_problem=next_problem, previous=previous, previous_problem=previous_problem,
        bundled_ca=ca_ann.get(state.BUNDLED_CA_ANNOTATION),
        bundled_at=_parse_time(ca_ann.get(state.BUNDLED_AT_ANNOTATION)),
        leaf=leaf, leaf_problem=leaf_problem, leaf_issued_at=leaf_issued_at,
        secret_bundle=secret_bundle, webhook_bundles=webhook_bundles)


# -- Checks --------------------------------------------------------------------------------------

Check = Callable[[View], "Action | None"]
"""A named condition: an action (or a wait) when it holds, else None."""


def ca_secret_is_foreign(v: View) -> Action | None:
    s = v.observed.ca_secret
    if s is not None and not s.is_ours:
        return Action("refuse", CA_SECRET_FOREIGN,
                      f"Secret {s.name} exists but was not issued by toolforge-admission "
                      f"(no {state.ISSUED_BY_ANNOTATION} annotation); refusing to touch it")
    return None


def certs_secret_is_foreign(v: View) -> Action | None:
    s = v.observed.certs_secret
    if s is not None and not s.is_ours:
        return Action("refuse", CERTS_SECRET_FOREIGN,
                      f"Secret {s.name} exists but was not issued by toolforge-admission "
                      f"(managed elsewhere, e.g. by cert-manager?); refusing to replace it. "
                      f"Run `certs rotate --disabled` for externally managed certificates")
    return None


def ca_secret_is_missing(v: View) -> Action | None:
    if v.observed.ca_secret is None:
        return Action("create-ca", CA_SECRET_MISSING, "no CA yet: creating one",
                      ca=v.served_issuer())
    return None


def current_ca_is_unusable(v: View) -> Action | None:
    if v.current is None:
        # The served leaf's CA stays as the previous CA until a new leaf has been served.
        return Action("create-ca", CA_UNUSABLE,
                      f"CA in {v.settings.ca_secret} is unusable ({v.current_problem}): "
                      f"replacing it", ca=v.served_issuer())
    return None


def next_ca_is_unusable(v: View) -> Action | None:
    if v.next_problem is not None:
        return Action("drop-next-ca", NEXT_CA_UNUSABLE,
                      f"next CA is unusable ({v.next_problem}): dropping it")
    return None


def previous_ca_is_unusable(v: View) -> Action | None:
    if v.previous_problem is not None:
        return Action("drop-previous-ca", PREVIOUS_CA_UNUSABLE,
                      f"previous CA is unusable ({v.previous_problem}): dropping it")
    return None


def bundled_mark_is_stale(v: View) -> Action | None:
    # A bundle lost the marked CA since it was marked: its propagation clock must restart.
    if v.bundled_ca is None:
        return None
    marked = [c for c in v.ca_certs() if bundle.fingerprint(c) == v.bundled_ca]
    if not marked or not v.in_every_bundle(marked[0]):
        return Action("clear-bundled-mark", BUNDLED_MARK_STALE,
                      f"the CA marked as bundled ({v.bundled_ca}) is missing from a bundle")
    return None


def webhook_bundle_is_out_of_sync(v: View) -> Action | None:
    target = v.target_bundle()
    for config, entries in v.webhook_bundles:
        if any(not bundle.same_bundle(b, target) for b in entries):
            return Action("sync-webhook-bundle", WEBHOOK_BUNDLE_OUT_OF_SYNC,
                          f"caBundle of {config.label} differs from the CAs in use",
                          bundle=target, configuration=config)
    return None


def secret_bundle_is_out_of_sync(v: View) -> Action | None:
    # Without a usable leaf the next issue-leaf writes ca.crt along with it.
    if v.secret_bundle is None or v.leaf is None:
        return None
    target = v.target_bundle()
    if not bundle.same_bundle(v.secret_bundle, target):
        return Action("sync-secret-bundle", SECRET_BUNDLE_OUT_OF_SYNC,
                      f"{state.CA_BUNDLE} of {v.settings.certs_secret} differs from the CAs in use",
                      bundle=target)
    return None


def switch_target(v: View) -> x509.Certificate | None:
    """The CA a served leaf is about to move to: next during a rollover, else a current CA
    that did not sign the leaf being served."""
    if v.next is not None:
        return v.next.cert
    if v.current is not None and v.served_issuer() is not None and not v.leaf_signed_by_current():
        return v.current.cert
    return None


def ca_is_bundled_but_unmarked(v: View) -> Action | None:
    target = switch_target(v)
    if target is not None and v.bundled_since(target) is None and v.in_every_bundle(target):
        return Action("mark-bundled", CA_IN_EVERY_BUNDLE,
                      f"CA {bundle.fingerprint(target)} is in every bundle: starting its "
                      f"propagation delay", ca=target)
    return None


def leaf_is_unservable(v: View) -> Action | None:
    # Nothing verifiable is being served, so there is nothing to keep working: issue now.
    if v.current is None or v.served_issuer() is not None:
        return None
    problem = v.leaf_problem or ("private key does not match tls.crt"
                                 if v.leaf is not None and not v.leaf.key_matches else
                                 "expired" if v.leaf is not None
                                 and v.now >= v.leaf.cert.not_valid_after_utc else
                                 "not signed by any CA in the bundles")
    return Action("issue-leaf", LEAF_UNSERVABLE, f"serving certificate unusable ({problem}): "
                  "issuing one", bundle=bundle.unique([*v.ca_certs()]))


def leaf_is_signed_by_old_ca(v: View) -> Action | None:
    if v.current is None or v.served_issuer() is None or v.leaf_signed_by_current():
        return None
    since = v.bundled_since(v.current.cert)
    if since is None or not v.in_every_bundle(v.current.cert):
        return None  # ca_is_bundled_but_unmarked or a bundle sync comes first
    ready = since + v.settings.propagation_delay
    if v.now < ready:
        return Action("wait", LEAF_SIGNED_BY_OLD_CA,
                      "waiting for the current CA to reach every API server", until=ready)
    return Action("issue-leaf", LEAF_SIGNED_BY_OLD_CA,
                  "serving certificate is signed by an older CA: issuing one from the current CA",
                  bundle=v.target_bundle())


def next_ca_is_propagated(v: View) -> Action | None:
    if v.next is None or v.previous is not None or not v.leaf_signed_by_current():
        return None
    since = v.bundled_since(v.next.cert)
    if since is None or not v.in_every_bundle(v.next.cert):
        return None
    ready = since + v.settings.propagation_delay
    if v.now < ready:
        return Action("wait", NEXT_CA_PROPAGATED,
                      "waiting for the next CA to reach every API server", until=ready)
    return Action("promote-next-ca", NEXT_CA_PROPAGATED,
                  "next CA is in every bundle and has propagated: making it current")


def previous_ca_is_unused(v: View) -> Action | None:
    if v.previous is None or not v.leaf_signed_by_current() or v.leaf_issued_at is None:
        return None
    ready = v.leaf_issued_at + v.settings.propagation_delay
    if v.now < ready:
        return Action("wait", PREVIOUS_CA_UNUSED,
                      "waiting for the webhook pods to serve the new certificate", until=ready)
    return Action("retire-previous-ca", PREVIOUS_CA_UNUSED,
                  "nothing signed by the previous CA is served any more: retiring it")


def _leaf_names(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(san.get_values_for_type(x509.DNSName))


def leaf_names_changed(v: View) -> Action | None:
    if v.leaf is None or not v.leaf_signed_by_current() or v.served_issuer() is None:
        return None
    if _leaf_names(v.leaf.cert) != frozenset(v.settings.dns_names):
        return Action("issue-leaf", LEAF_NAMES_CHANGED,
                      f"serving certificate names {sorted(_leaf_names(v.leaf.cert))} differ from "
                      f"{list(v.settings.dns_names)}: issuing one", bundle=v.target_bundle())
    return None


def leaf_renewal_time(v: View) -> datetime.datetime | None:
    if v.leaf is None:
        return None
    c = v.leaf.cert
    return renewal_time(c.not_valid_before_utc, c.not_valid_after_utc,
                        v.settings.leaf_renew_before)


def ca_renewal_time(v: View) -> datetime.datetime | None:
    if v.current is None:
        return None
    c = v.current.cert
    return renewal_time(c.not_valid_before_utc, c.not_valid_after_utc, v.settings.ca_renew_before)


def leaf_is_nearing_expiry(v: View) -> Action | None:
    if v.leaf is None or not v.leaf_signed_by_current() or v.served_issuer() is None:
        return None
    due = leaf_renewal_time(v)
    if due is not None and v.now >= due:
        return Action("issue-leaf", LEAF_NEARING_EXPIRY,
                      f"serving certificate expires {v.leaf.cert.not_valid_after_utc.isoformat()}"
                      f", due since {due.isoformat()}: renewing", bundle=v.target_bundle())
    return None


def ca_is_nearing_expiry(v: View) -> Action | None:
    if v.current is None or v.next is not None or v.previous is not None:
        return None
    due = ca_renewal_time(v)
    if due is not None and v.now >= due:
        return Action("start-rollover", CA_NEARING_EXPIRY,
                      f"CA expires {v.current.cert.not_valid_after_utc.isoformat()}, due since "
                      f"{due.isoformat()}: starting a rollover to a new CA")
    return None


CHAIN: tuple[Check, ...] = (
    ca_secret_is_foreign,           # never touch certificates someone else issued
    certs_secret_is_foreign,
    ca_secret_is_missing,           # first install (or the CA Secret was deleted)
    current_ca_is_unusable,         # tampered or half-written webhook-ca
    next_ca_is_unusable,
    previous_ca_is_unusable,
    bundled_mark_is_stale,          # before syncing, so a re-added CA waits again
    webhook_bundle_is_out_of_sync,  # add new CAs / remove retired ones, one configuration a step
    secret_bundle_is_out_of_sync,
    ca_is_bundled_but_unmarked,     # start the propagation clock
    leaf_is_unservable,             # nothing to protect: issue at once
    leaf_is_signed_by_old_ca,       # switch the leaf once its new CA has propagated
    next_ca_is_propagated,          # rollover: make the next CA current
    previous_ca_is_unused,          # rollover: retire the old CA once the new leaf is served
    leaf_names_changed,
    leaf_is_nearing_expiry,
    ca_is_nearing_expiry,
)


def evaluate(chain: Sequence[Check], v: View) -> Action:
    """The first action of the chain; else the earliest wait; else done."""
    waits: list[Action] = []
    for check in chain:
        action = check(v)
        if action is None:
            continue
        if action.kind != "wait":
            return action
        waits.append(action)
    if waits:
        return min(waits, key=lambda a: a.until or v.now)
    due = [t for t in (leaf_renewal_time(v), ca_renewal_time(v)) if t is not None]
    return Action("done", UP_TO_DATE, "certificates are up to date",
                  until=min(due) if due else None)


def decide(observed: Observed, now: datetime.datetime, settings: Settings) -> Action:
    """The next step for the observed state at `now`."""
    return evaluate(CHAIN, view(observed, now, settings))
