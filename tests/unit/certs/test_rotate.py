"""certs.rotate and certs.cli against an in-memory cluster with a fake clock."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
from dataclasses import replace

import pytest
from cryptography import x509

from certs import bundle, state
from certs.cli import main
from certs.issue import new_ca, new_serving_cert
from certs.renewal import view
from certs.rotate import ForeignSecretError, RotationStuckError, act, gather, rotate
from certs.state import Secret
from certs.store import ConflictError
from tests.unit.certs.fakes import (
    SETTINGS,
    CrashError,
    FakeClock,
    FakeStore,
    assert_bundles_always_trust_served_leaf,
    make_store,
    webhook_json,
)

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
MAX_WAIT = datetime.timedelta(minutes=6)  # as the CronJob runs it


def run(store: FakeStore, clock: FakeClock, max_wait: datetime.timedelta = MAX_WAIT):
    return rotate(store, SETTINGS, clock=clock, sleep=clock.sleep, log=lambda _: None,
                  max_wait=max_wait)


def leaf_of(store: FakeStore) -> x509.Certificate:
    return x509.load_pem_x509_certificate(store.secrets["webhook-certs"].data[state.TLS_CRT])


def assert_leaf_verifies_against_every_bundle(store: FakeStore, now: datetime.datetime) -> None:
    leaf = leaf_of(store)
    bundles = [store.secrets["webhook-certs"].data[state.CA_BUNDLE]]
    bundles += [e.ca_bundle for c in store.list_webhook_configurations() for e in c.entries]
    for pem in bundles:
        verifier = (x509.verification.PolicyBuilder()
                    .store(x509.verification.Store(list(bundle.parse_bundle(pem))))
                    .time(now)
                    .build_server_verifier(x509.DNSName(SETTINGS.dns_names[-1])))
        verifier.verify(leaf, [])  # raises if the chain does not validate


class TestFirstInstall:
    def test_creates_ca_leaf_and_bundles_in_one_run(self, store, clock):
        outcome = run(store, clock)
        assert outcome.final.kind == "done"
        assert [a.kind for a in outcome.steps] == [
            "create-ca", "sync-webhook-bundle", "sync-webhook-bundle", "issue-leaf"]
        assert_leaf_verifies_against_every_bundle(store, clock())

    def test_serving_certificate_is_a_leaf_for_the_service(self, store, clock):
        run(store, clock)
        leaf = leaf_of(store)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == list(SETTINGS.dns_names)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature
        assert not usage.key_cert_sign
        assert leaf.not_valid_after_utc - clock() == SETTINGS.leaf_lifetime

    def test_the_ca_key_stays_out_of_the_mounted_secret(self, store, clock):
        run(store, clock)
        certs, ca = store.secrets["webhook-certs"], store.secrets["webhook-ca"]
        assert set(certs.data) == {"tls.crt", "tls.key", "ca.crt"}
        assert certs.type == "kubernetes.io/tls"
        assert set(ca.data) == {"ca.crt", "ca.key"}
        assert not any(b"PRIVATE KEY" in v for k, v in certs.data.items() if k != "tls.key")

    def test_secrets_are_marked_as_ours(self, store, clock):
        run(store, clock)
        for secret in store.secrets.values():
            assert secret.annotations[state.ISSUED_BY_ANNOTATION] == state.MANAGED_BY
            assert secret.labels[state.MANAGED_BY_LABEL] == state.MANAGED_BY

    def test_webhook_configurations_keep_their_other_fields(self, store, clock):
        run(store, clock)
        for obj in store.configurations.values():
            for webhook in obj["webhooks"]:
                assert webhook["matchConditions"] == [{"name": "keep-me", "expression": "true"}]

    def test_webhooks_on_other_services_are_left_alone(self, clock):
        store = make_store(clock, configurations=1)
        other = webhook_json("mixed", service="someone-else", entries=1)
        store.add_configuration("validating", other)
        run(store, clock)
        assert store.configurations[("validating", "mixed")]["webhooks"][0]["clientConfig"][
            "caBundle"] == ""

    def test_a_second_run_writes_nothing(self, store, clock):
        run(store, clock)
        writes = len(store.writes)
        clock.advance(HOUR)
        assert run(store, clock).steps == ()
        assert len(store.writes) == writes


def test_leaf_is_renewed_at_two_thirds_of_its_lifetime_and_ca_is_kept(store, clock):
    run(store, clock)
    first, ca = leaf_of(store), store.secrets["webhook-ca"].data["ca.crt"]
    clock.advance(59 * DAY)
    run(store, clock)
    assert leaf_of(store) == first
    clock.advance(2 * DAY)
    outcome = run(store, clock)
    assert [a.kind for a in outcome.steps] == ["issue-leaf"]
    assert leaf_of(store) != first
    assert store.secrets["webhook-ca"].data["ca.crt"] == ca


def test_ca_rollover_with_overlap_finishes_within_two_daily_runs(store, clock):
    run(store, clock)
    old_ca = store.secrets["webhook-ca"].data["ca.crt"]
    clock.advance(244 * DAY)  # the CA is due
    first = run(store, clock)
    assert [a.kind for a in first.steps] == [
        "issue-leaf",  # the leaf was due too
        "start-rollover", "sync-webhook-bundle", "sync-webhook-bundle", "sync-secret-bundle",
        "mark-bundled", "promote-next-ca", "issue-leaf"]
    assert first.final.kind == "wait"  # retiring the old CA is beyond --max-wait
    current = view(gather(store, SETTINGS), clock(), SETTINGS).current
    assert current is not None
    assert bundle.is_signed_by(leaf_of(store), current.cert)
    assert store.secrets["webhook-ca"].data["previous-ca.crt"] == old_ca
    clock.advance(DAY)
    second = run(store, clock)
    assert [a.kind for a in second.steps] == [
        "retire-previous-ca", "sync-webhook-bundle", "sync-webhook-bundle", "sync-secret-bundle"]
    assert second.final.kind == "done"
    for config in store.list_webhook_configurations():
        for entry in config.entries:
            assert len(bundle.parse_bundle(entry.ca_bundle)) == 1
    assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay, clock())


def test_a_long_max_wait_finishes_the_rollover_in_one_run(store, clock):
    run(store, clock)
    clock.advance(244 * DAY)
    outcome = run(store, clock, max_wait=datetime.timedelta(minutes=15))
    assert outcome.final.kind == "done"
    assert "retire-previous-ca" in [a.kind for a in outcome.steps]


def simulate(store: FakeStore, clock: FakeClock, *, years: int, every: datetime.timedelta,
             crash_after: int | None = None) -> int:
    """Run the job every `every` for `years`; return how many CA rollovers completed."""
    end = clock() + years * 365 * DAY
    rollovers = 0
    while clock() < end:
        before = store.secrets.get("webhook-ca")
        store.fail_after_writes = crash_after
        with contextlib.suppress(CrashError):
            run(store, clock)
        store.fail_after_writes = None
        after = store.secrets.get("webhook-ca")
        if before is not None and after is not None and (
                before.data.get("previous-ca.crt") and not after.data.get("previous-ca.crt")):
            rollovers += 1
        if "webhook-certs" in store.secrets:
            leaf = leaf_of(store)
            assert leaf.not_valid_after_utc - clock() > 14 * DAY, "leaf close to expiry"
        clock.advance(every)
    return rollovers


def test_five_years_of_daily_runs_never_leave_a_bundle_distrusting_the_served_leaf(clock):
    store = make_store(clock)
    rollovers = simulate(store, clock, years=5, every=DAY)
    assert rollovers >= 6  # a one-year CA renewed at 2/3: about every 243 days
    assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay, clock())


def crash_after_every_write(store, clock, span):
    """Runs every 3 minutes for `span`, each dying after its first write."""
    end = clock() + span
    while clock() < end:
        store.fail_after_writes = 1
        with contextlib.suppress(CrashError):
            run(store, clock, max_wait=datetime.timedelta(0))
        clock.advance(datetime.timedelta(minutes=3))
    store.fail_after_writes = None


def test_a_run_that_dies_after_every_write_still_converges_safely(clock):
    """Each run makes one write and crashes; runs every 3 minutes resume from the Secrets."""
    store = make_store(clock)
    simulate(store, clock, years=0, every=HOUR)  # nothing
    crash_after_every_write(store, clock, 2 * DAY)
    clock.advance(244 * DAY)
    crash_after_every_write(store, clock, DAY)
    final = run(store, clock)
    assert final.final.kind == "done"
    assert "previous-ca.crt" not in store.secrets["webhook-ca"].data
    assert_leaf_verifies_against_every_bundle(store, clock())
    assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay, clock())


class RacingStore(FakeStore):
    """Before our writes, a second job runs one full rotation on the same cluster."""

    races: int = 0

    def before_write(self) -> None:
        if self.races > 0:
            self.races -= 1
            rotate(self, SETTINGS, clock=self.clock, sleep=lambda _: None, log=lambda _: None,
                   max_wait=datetime.timedelta(0))


def test_concurrent_runs_converge_on_one_ca(clock):
    store = RacingStore(clock)
    store.add_configuration("validating", webhook_json("toolforge-admission-pods"))
    store.races = 1  # a create races a create
    run(store, clock)
    cas = {bundle.fingerprint(c) for cfg in store.list_webhook_configurations()
           for e in cfg.entries for c in bundle.parse_bundle(e.ca_bundle)}
    assert len(cas) == 1
    assert_leaf_verifies_against_every_bundle(store, clock())
    clock.advance(244 * DAY)
    store.races = 5
    run(store, clock, max_wait=datetime.timedelta(minutes=15))
    assert run(store, clock).final.kind == "done"
    assert_leaf_verifies_against_every_bundle(store, clock())
    assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay, clock())


def test_a_step_decided_on_a_stale_read_is_refused_with_a_conflict(store, clock):
    run(store, clock)
    clock.advance(61 * DAY)
    stale = view(gather(store, SETTINGS), clock(), SETTINGS)
    run(store, clock)  # another job renews the leaf
    from certs.renewal import CHAIN, evaluate

    with pytest.raises(ConflictError):
        act(evaluate(CHAIN, stale), stale, store, clock())


def test_a_crash_between_promote_and_leaf_switch_is_safe(store, clock):
    run(store, clock)
    clock.advance(244 * DAY)
    # Crash right after promote-next-ca: 1 leaf + start + 2 syncs + secret + mark + promote.
    store.fail_after_writes = 7
    with pytest.raises(CrashError):
        run(store, clock)
    store.fail_after_writes = None
    assert "previous-ca.crt" in store.secrets["webhook-ca"].data
    clock.advance(HOUR)
    assert run(store, clock, max_wait=datetime.timedelta(minutes=15)).final.kind == "done"
    assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay, clock())


def test_swapped_order_would_break_the_invariant(store, clock):
    """The check is not vacuous: a new CA and leaf written before the bundles fails it."""
    run(store, clock)
    clock.advance(DAY)
    ca = new_ca("swapped", clock(), SETTINGS.ca_lifetime)
    leaf = new_serving_cert(ca, SETTINGS.dns_names, clock(), SETTINGS.leaf_lifetime)
    certs = store.secrets["webhook-certs"]
    store.replace_secret(Secret(certs.name, {**certs.data, "tls.crt": leaf.cert_pem,
                                             "tls.key": leaf.key_pem}, certs.annotations,
                                certs.labels, certs.type, certs.resource_version))
    clock.advance(datetime.timedelta(seconds=5))
    for cfg in store.list_webhook_configurations():
        store.set_ca_bundle(cfg.kind, cfg.name, ca.cert_pem)
    with pytest.raises(AssertionError, match="does not trust"):
        assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay,
                                                clock())


def _delete_ca(store: FakeStore) -> None:
    del store.secrets["webhook-ca"]


def _garbage_ca(store: FakeStore) -> None:
    ca = store.secrets["webhook-ca"]
    store.put_secret(Secret(ca.name, {**ca.data, "ca.crt": b"junk"}, ca.annotations, ca.labels))


def _mismatched_ca_key(store: FakeStore) -> None:
    ca = store.secrets["webhook-ca"]
    other = new_ca("other", datetime.datetime.now(datetime.UTC), DAY)
    store.put_secret(Secret(ca.name, {**ca.data, "ca.key": other.key_pem}, ca.annotations,
                            ca.labels))


def _garbage_leaf(store: FakeStore) -> None:
    certs = store.secrets["webhook-certs"]
    store.put_secret(replace(certs, data={**certs.data, "tls.crt": b"junk"}))


def _mismatched_leaf_key(store: FakeStore) -> None:
    certs = store.secrets["webhook-certs"]
    other = new_ca("other", datetime.datetime.now(datetime.UTC), DAY)
    store.put_secret(replace(certs, data={**certs.data, "tls.key": other.key_pem}))


@pytest.mark.parametrize("tamper", [
    pytest.param(_delete_ca, id="ca-secret-deleted"),
    pytest.param(_garbage_ca, id="garbage-ca-crt"),
    pytest.param(_mismatched_ca_key, id="ca-key-does-not-match"),
    pytest.param(_garbage_leaf, id="garbage-tls-crt"),
    pytest.param(_mismatched_leaf_key, id="tls-key-does-not-match"),
])
def test_tampered_secrets_are_repaired_without_distrusting_the_served_leaf(store, clock, tamper):
    run(store, clock)
    clock.advance(DAY)
    tamper(store)
    clock.advance(HOUR)
    outcome = run(store, clock, max_wait=datetime.timedelta(minutes=15))
    assert outcome.final.kind == "done"
    assert_leaf_verifies_against_every_bundle(store, clock())
    assert "previous-ca.crt" not in store.secrets["webhook-ca"].data
    assert_bundles_always_trust_served_leaf(store.history, SETTINGS.propagation_delay, clock())


def test_a_foreign_certificate_secret_is_refused_and_left_untouched(store, clock):
    store.put_secret(Secret("webhook-certs", {"tls.crt": b"x", "tls.key": b"y"},
                            {"cert-manager.io/issuer-name": "ca"}, {}, "kubernetes.io/tls"))
    with pytest.raises(ForeignSecretError, match="not issued by toolforge-admission"):
        run(store, clock)
    assert store.writes == []


def test_a_writer_fighting_us_ends_the_run_with_an_error(store, clock):
    run(store, clock)

    class Fighter(FakeStore):
        def replace_ca_bundles(self, configuration, ca_bundle):
            super().replace_ca_bundles(configuration, ca_bundle)
            self.set_ca_bundle(configuration.kind, configuration.name, b"")

    fighter = Fighter(clock, secrets=store.secrets, configurations=store.configurations)
    fighter.set_ca_bundle("validating", "toolforge-admission-pods", b"")
    with pytest.raises(RotationStuckError):
        rotate(fighter, SETTINGS, clock=clock, sleep=clock.sleep, log=lambda _: None,
               max_steps=10)


class TestCommandLine:
    def cli(self, store, clock, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), store=store, clock=clock, sleep=clock.sleep, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def test_rotate_logs_json_with_not_after(self, store, clock):
        code, out, _ = self.cli(store, clock, "rotate")
        assert code == 0
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["event"] for r in records][:2] == ["create-ca", "sync-webhook-bundle"]
        summary = records[-1]
        assert summary["event"] == "certificates"
        assert summary["leaf"]["not_after_seconds"] == int(
            (clock() + SETTINGS.leaf_lifetime).timestamp())
        assert summary["leaf"]["issuer"] == "current"
        assert summary["cas"]["current"]["renewal_is_due"] is False

    def test_rotate_refuses_foreign_secret_with_exit_1(self, store, clock):
        store.put_secret(Secret("webhook-certs", {}, {}, {}, "kubernetes.io/tls"))
        code, _, err = self.cli(store, clock, "rotate")
        assert code == 1
        assert "not issued by toolforge-admission" in err
        assert store.writes == []

    def test_disabled_does_nothing(self, store, clock):
        store.put_secret(Secret("webhook-certs", {}, {}, {}, "kubernetes.io/tls"))
        code, out, _ = self.cli(store, clock, "rotate", "--disabled")
        assert code == 0
        assert json.loads(out)["event"] == "disabled"
        assert store.writes == []

    def test_status_shows_expiry_issuer_and_bundles(self, store, clock):
        self.cli(store, clock, "rotate")
        code, out, _ = self.cli(store, clock, "status")
        assert code == 0
        assert "serving certificate: toolforge-admission" in out
        assert "signed by: current" in out
        assert "validatingwebhookconfiguration/toolforge-admission-pods" in out
        assert "next step: done" in out

    def test_status_json_during_rollover(self, store, clock):
        self.cli(store, clock, "rotate")
        clock.advance(244 * DAY)
        self.cli(store, clock, "rotate", "--max-wait=0")
        code, out, _ = self.cli(store, clock, "status", "--json")
        assert code == 0
        status = json.loads(out)
        assert status["cas"]["next"]
        assert all(sorted(roles) == ["current", "next"] for roles in status["bundles"].values())
        assert status["next_step"]["action"] in {"mark-bundled", "wait"}

    def test_status_of_a_cert_manager_install(self, store, clock):
        store.put_secret(Secret("webhook-certs", {}, {}, {}, "kubernetes.io/tls"))
        code, out, _ = self.cli(store, clock, "status")
        assert code == 0
        assert "NOT ours" in out

    @pytest.mark.parametrize("argv", [
        pytest.param(["rotate", "--leaf-lifetime=10d", "--leaf-renew-before=20d"],
                     id="renew-before-beyond-lifetime"),
        pytest.param(["rotate", "--ca-lifetime=soon"], id="bad-duration"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ])
    def test_bad_arguments_exit_2(self, store, clock, argv):
        assert self.cli(store, clock, *argv)[0] == 2
