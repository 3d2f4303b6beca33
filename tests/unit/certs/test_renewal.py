"""certs.renewal: the next step for each state of the rotation, across time."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest

from certs import bundle, renewal, state
from certs.renewal import decide, renewal_time
from certs.state import Observed, WebhookEntry
from tests.unit.certs.fakes import (
    SETTINGS,
    T0,
    ca_secret,
    certs_secret,
    configuration,
    make_ca,
    make_leaf,
)

DAY = datetime.timedelta(days=1)
MINUTE = datetime.timedelta(minutes=1)
DELAY = SETTINGS.propagation_delay

# The cast: the installed CA, the next one (rollover), and one nobody knows about.
CA = make_ca(T0, name="ca-old")
NEW = make_ca(T0 + 240 * DAY, name="ca-new")
STRANGER = make_ca(T0, name="stranger")
LEAF = make_leaf(CA, T0)
LATE_LEAF = make_leaf(CA, T0 + 240 * DAY)  # fresh when the CA falls due
NEW_LEAF = make_leaf(NEW, T0 + 241 * DAY)
NOW = T0 + 244 * DAY  # the CA is due (2/3 of 365 d) and LATE_LEAF is not


def observed(leaf=LATE_LEAF, cas=(CA,), secret_cas=None, *, current=CA, next_ca=None,
             previous=None, mark=None, issued_at=None, webhook_cas=None, ca=True, certs=True,
             **kw):
    """A cluster state: the Secrets and two webhook configurations with the given bundles."""
    webhook_cas = cas if webhook_cas is None else webhook_cas
    annotations = {}
    if mark is not None:
        cert, at = mark
        annotations = {state.BUNDLED_CA_ANNOTATION: bundle.fingerprint(cert.certificate),
                       state.BUNDLED_AT_ANNOTATION: at.isoformat()}
    return Observed(
        certs_secret=certs_secret(leaf, list(cas if secret_cas is None else secret_cas),
                                  issued_at=issued_at, **kw) if certs else None,
        ca_secret=ca_secret(current, next_ca=next_ca, previous=previous,
                            annotations=annotations) if ca else None,
        webhook_configurations=(configuration("pods", *webhook_cas),
                                configuration("build-pods", *webhook_cas, kind="mutating")))


CASES = [
    # -- first install -------------------------------------------------------------------------
    pytest.param(observed(ca=False, certs=False, webhook_cas=()), T0,
                 "create-ca", renewal.CA_SECRET_MISSING, id="fresh-install-creates-the-ca"),
    pytest.param(observed(certs=False, webhook_cas=()), T0,
                 "sync-webhook-bundle", renewal.WEBHOOK_BUNDLE_OUT_OF_SYNC,
                 id="fresh-install-fills-the-empty-cabundles-first"),
    pytest.param(observed(certs=False), T0,
                 "issue-leaf", renewal.LEAF_UNSERVABLE, id="fresh-install-issues-the-leaf"),
    # -- steady state ---------------------------------------------------------------------------
    pytest.param(observed(leaf=LEAF), T0 + DAY, "done", renewal.UP_TO_DATE, id="steady-is-done"),
    pytest.param(observed(leaf=LEAF), T0 + 61 * DAY, "issue-leaf", renewal.LEAF_NEARING_EXPIRY,
                 id="leaf-due-at-two-thirds"),
    pytest.param(observed(leaf=LEAF), T0 + 95 * DAY, "issue-leaf", renewal.LEAF_UNSERVABLE,
                 id="expired-leaf-is-reissued-at-once"),
    pytest.param(observed(leaf=make_leaf(CA, names=("old-name",))), T0 + DAY,
                 "issue-leaf", renewal.LEAF_NAMES_CHANGED, id="renamed-service-reissues"),
    # -- CA rollover, phase by phase ------------------------------------------------------------
    pytest.param(observed(), NOW, "start-rollover", renewal.CA_NEARING_EXPIRY,
                 id="ca-due-starts-rollover"),
    pytest.param(observed(next_ca=NEW), NOW, "sync-webhook-bundle",
                 renewal.WEBHOOK_BUNDLE_OUT_OF_SYNC, id="rollover-adds-next-ca-to-cabundles"),
    pytest.param(observed(next_ca=NEW, webhook_cas=(CA, NEW)), NOW, "sync-secret-bundle",
                 renewal.SECRET_BUNDLE_OUT_OF_SYNC, id="rollover-adds-next-ca-to-ca-crt"),
    pytest.param(observed(cas=(CA, NEW), next_ca=NEW), NOW, "mark-bundled",
                 renewal.CA_IN_EVERY_BUNDLE, id="rollover-marks-next-ca-bundled"),
    pytest.param(observed(cas=(CA, NEW), next_ca=NEW, mark=(NEW, NOW - MINUTE)), NOW,
                 "wait", renewal.NEXT_CA_PROPAGATED, id="rollover-waits-for-propagation"),
    pytest.param(observed(cas=(CA, NEW), next_ca=NEW, mark=(NEW, NOW - DELAY)), NOW,
                 "promote-next-ca", renewal.NEXT_CA_PROPAGATED, id="rollover-promotes-next-ca"),
    pytest.param(observed(cas=(CA, NEW), current=NEW, previous=CA, mark=(NEW, NOW - DELAY)), NOW,
                 "issue-leaf", renewal.LEAF_SIGNED_BY_OLD_CA, id="rollover-switches-the-leaf"),
    pytest.param(observed(NEW_LEAF, cas=(CA, NEW), current=NEW, previous=CA,
                          mark=(NEW, NOW - DELAY), issued_at=NOW - MINUTE), NOW,
                 "wait", renewal.PREVIOUS_CA_UNUSED, id="rollover-waits-for-pods-to-serve-new-leaf"),
    pytest.param(observed(NEW_LEAF, cas=(CA, NEW), current=NEW, previous=CA,
                          mark=(NEW, NOW - DELAY), issued_at=NOW - DELAY), NOW,
                 "retire-previous-ca", renewal.PREVIOUS_CA_UNUSED, id="rollover-retires-old-ca"),
    pytest.param(observed(NEW_LEAF, cas=(CA, NEW), current=NEW, mark=(NEW, NOW - DELAY),
                          issued_at=NOW - DELAY), NOW,
                 "sync-webhook-bundle", renewal.WEBHOOK_BUNDLE_OUT_OF_SYNC,
                 id="rollover-removes-retired-ca-from-cabundles"),
    pytest.param(observed(NEW_LEAF, cas=(NEW,), current=NEW, mark=(NEW, NOW - DELAY),
                          issued_at=NOW - DELAY), NOW, "done", renewal.UP_TO_DATE,
                 id="rollover-complete"),
    # -- half-finished and disturbed rollovers --------------------------------------------------
    pytest.param(observed(cas=(CA, NEW), current=NEW, previous=CA), NOW,
                 "mark-bundled", renewal.CA_IN_EVERY_BUNDLE,
                 id="promoted-without-mark-marks-before-switching"),
    pytest.param(observed(cas=(CA, NEW), webhook_cas=(CA,), current=NEW, previous=CA,
                          mark=(NEW, NOW - DELAY)), NOW,
                 "clear-bundled-mark", renewal.BUNDLED_MARK_STALE,
                 id="cabundle-lost-next-ca-restarts-propagation-clock"),
    pytest.param(observed(cas=(CA, NEW), next_ca=NEW, mark=(NEW, NOW - DELAY),
                          leaf=make_leaf(CA, NOW - 10 * DAY)), NOW + 200 * DAY,
                 "issue-leaf", renewal.LEAF_UNSERVABLE,
                 id="leaf-expired-mid-rollover-is-reissued-from-current"),
    # -- tampered Secrets -----------------------------------------------------------------------
    pytest.param(observed(leaf=LEAF, data={state.TLS_CRT: b"garbage"}), T0 + DAY,
                 "issue-leaf", renewal.LEAF_UNSERVABLE, id="garbage-tls-crt"),
    pytest.param(observed(leaf=LEAF, data={state.TLS_KEY: make_leaf(CA).key_pem}), T0 + DAY,
                 "issue-leaf", renewal.LEAF_UNSERVABLE, id="tls-key-does-not-match"),
    pytest.param(observed(leaf=make_leaf(STRANGER)), T0 + DAY,
                 "issue-leaf", renewal.LEAF_UNSERVABLE, id="leaf-signed-by-unknown-ca"),
    pytest.param(observed(leaf=make_leaf(STRANGER), cas=(STRANGER, CA)), T0 + DAY,
                 "mark-bundled", renewal.CA_IN_EVERY_BUNDLE,
                 id="leaf-signed-by-bundled-foreign-ca-switches-with-overlap"),
    pytest.param(observed(leaf=make_leaf(STRANGER), cas=(STRANGER,)), T0 + DAY,
                 "sync-webhook-bundle", renewal.WEBHOOK_BUNDLE_OUT_OF_SYNC,
                 id="leaf-signed-by-bundled-foreign-ca-adds-ours-first"),
    pytest.param(Observed(observed().certs_secret,
                          ca_secret(None, data={state.CA_CRT: b"junk", state.CA_KEY: b"junk"}),
                          observed().webhook_configurations), T0 + DAY,
                 "create-ca", renewal.CA_UNUSABLE, id="garbage-ca-crt"),
    pytest.param(Observed(observed().certs_secret,
                          ca_secret(None, data={state.CA_CRT: CA.cert_pem,
                                                state.CA_KEY: NEW.key_pem}),
                          observed().webhook_configurations), T0 + DAY,
                 "create-ca", renewal.CA_UNUSABLE, id="ca-key-does-not-match"),
    pytest.param(Observed(observed().certs_secret,
                          ca_secret(None, data={state.CA_CRT: LEAF.cert_pem,
                                                state.CA_KEY: LEAF.key_pem}),
                          observed().webhook_configurations), T0 + DAY,
                 "create-ca", renewal.CA_UNUSABLE, id="ca-crt-is-not-a-ca"),
    pytest.param(Observed(observed().certs_secret,
                          ca_secret(CA, data={state.NEXT_CA_CRT: b"junk"}),
                          observed().webhook_configurations), NOW,
                 "drop-next-ca", renewal.NEXT_CA_UNUSABLE, id="garbage-next-ca"),
    pytest.param(Observed(observed().certs_secret,
                          ca_secret(CA, data={state.PREVIOUS_CA_CRT: b"junk"}),
                          observed().webhook_configurations), NOW,
                 "drop-previous-ca", renewal.PREVIOUS_CA_UNUSABLE, id="garbage-previous-ca"),
    pytest.param(observed(leaf=LEAF, webhook_cas=()), T0 + DAY, "sync-webhook-bundle",
                 renewal.WEBHOOK_BUNDLE_OUT_OF_SYNC, id="empty-cabundle-is-filled"),
    pytest.param(Observed(observed(leaf=LEAF).certs_secret, observed().ca_secret,
                          (replace(configuration("pods", CA),
                                   entries=(WebhookEntry("x", b"junk"),)),)),
                 T0 + DAY, "sync-webhook-bundle", renewal.WEBHOOK_BUNDLE_OUT_OF_SYNC,
                 id="garbage-cabundle-is-rewritten"),
    # -- not ours -------------------------------------------------------------------------------
    pytest.param(observed(leaf=LEAF, foreign=True), T0 + DAY,
                 "refuse", renewal.CERTS_SECRET_FOREIGN, id="cert-manager-secret-is-refused"),
    pytest.param(Observed(observed().certs_secret,
                          ca_secret(CA).__class__(SETTINGS.ca_secret, {}, {}, {}),
                          observed().webhook_configurations), T0 + DAY,
                 "refuse", renewal.CA_SECRET_FOREIGN, id="foreign-ca-secret-is-refused"),
]


@pytest.mark.parametrize(("obs", "now", "kind", "reason"), CASES)
def test_next_step(obs, now, kind, reason):
    action = decide(obs, now, SETTINGS)
    assert (action.kind, action.reason) == (kind, reason), action.message


@pytest.mark.parametrize(("obs", "now", "kind", "reason"), CASES)
def test_a_leaf_is_only_issued_with_its_ca_in_the_secret_bundle(obs, now, kind, reason):
    action = decide(obs, now, SETTINGS)
    if action.kind == "issue-leaf":
        current = renewal.view(obs, now, SETTINGS).current
        assert current is not None
        assert bundle.contains(action.bundle, current.cert)


@pytest.mark.parametrize(("obs", "now", "kind", "reason"), CASES)
def test_a_bundle_sync_never_drops_the_ca_of_the_served_leaf(obs, now, kind, reason):
    action = decide(obs, now, SETTINGS)
    v = renewal.view(obs, now, SETTINGS)
    served = v.served_issuer()
    if action.kind in {"sync-webhook-bundle", "sync-secret-bundle"} and served is not None:
        assert bundle.contains(action.bundle, served)


def test_wait_says_until_when():
    obs = observed(cas=(CA, NEW), next_ca=NEW, mark=(NEW, NOW - MINUTE))
    assert decide(obs, NOW, SETTINGS).until == NOW - MINUTE + DELAY


def test_done_says_when_the_next_renewal_is_due():
    action = decide(observed(leaf=LEAF), T0 + DAY, SETTINGS)
    assert action.until == renewal_time(LEAF.certificate.not_valid_before_utc,
                                        LEAF.certificate.not_valid_after_utc, None)


def test_replacing_an_unusable_ca_keeps_the_served_leafs_ca_as_previous():
    obs = Observed(observed(leaf=LEAF).certs_secret,
                   ca_secret(None, data={state.CA_CRT: b"junk", state.CA_KEY: b"junk"}),
                   observed().webhook_configurations)
    action = decide(obs, T0 + DAY, SETTINGS)
    assert action.ca is not None
    assert bundle.fingerprint(action.ca) == bundle.fingerprint(CA.certificate)


def test_foreign_secret_is_refused_even_when_everything_else_is_due():
    obs = observed(leaf=LEAF, foreign=True, ca=False)
    assert decide(obs, T0 + 400 * DAY, SETTINGS).kind == "refuse"


class TestRenewalTime:
    H = datetime.timedelta(hours=1)

    @pytest.mark.parametrize(("duration", "renew_before", "expected"), [
        pytest.param(90 * DAY, None, 60 * DAY, id="default-two-thirds"),
        pytest.param(90 * DAY, 15 * DAY, 75 * DAY, id="explicit-renew-before"),
        pytest.param(30 * DAY, 45 * DAY, 20 * DAY, id="renew-before-longer-than-cert-falls-back"),
        # cert-manager PR 4399: an untruncated renewal time left certificates unrenewed.
        pytest.param(DAY - datetime.timedelta(seconds=1), None,
                     16 * datetime.timedelta(hours=1) - datetime.timedelta(seconds=1),
                     id="skewed-by-a-second-is-truncated"),
    ])
    def test_renewal_time(self, duration, renew_before, expected):
        assert renewal_time(T0, T0 + duration, renew_before) == T0 + expected
