"""One rotation run: gather → decide → act, until nothing is left to do or a wait is too long.

Each pass reads everything afresh, asks `renewal.decide` for one step and performs it with one
write. A 409 from a concurrent run only means "read again". Waits shorter than `max_wait` (the
propagation delays of a CA rollover) are slept through, so one run of the bootstrap Job or the
CronJob normally finishes a whole rollover; a longer wait ends the run and the next one resumes
from the state kept in the Secrets.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from certs import bundle, state
from certs.issue import KeyPair, new_ca, new_serving_cert
from certs.renewal import CHAIN, WRITES, Action, ActionKind, View, evaluate, view
from certs.state import Observed, Secret, Settings
from certs.store import ConflictError, Store

Clock = Callable[[], datetime.datetime]
"""Returns the current time (aware, UTC)."""
Sleep = Callable[[float], None]
"""Sleeps for the given number of seconds (tests advance their fake clock instead)."""
Log = Callable[[dict[str, Any]], None]
"""Receives one structured event."""
_V = TypeVar("_V")


class RotationError(Exception):
    """The run could not do its work; the message says why."""


class ForeignSecretError(RotationError):
    """A Secret we would write was not issued by toolforge-admission."""


class RotationStuckError(RotationError):
    """Too many steps without reaching a stable state (a writer fighting us?)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: `final` is a `done` or a `wait` beyond the run's patience."""

    final: Action
    steps: tuple[Action, ...]
    view: View


def gather(store: Store, settings: Settings) -> Observed:
    """Read everything a decision needs.

    The CA Secret is read last and is written first (a CA enters webhook-ca before any bundle,
    and leaves it before any bundle). So if a bundle read here holds a CA, the webhook-ca read
    after it holds that CA too, unless it was retired: a run with a stale view cannot remove a
    CA that another run has just added.
    """
    certs_secret = store.read_secret(settings.certs_secret)
    configurations = store.list_webhook_configurations()
    ca_secret = store.read_secret(settings.ca_secret)
    return Observed(certs_secret=certs_secret, ca_secret=ca_secret,
                    webhook_configurations=configurations)


def _marks(now: datetime.datetime | None = None) -> tuple[dict[str, str], dict[str, str]]:
    annotations = {state.ISSUED_BY_ANNOTATION: state.MANAGED_BY}
    if now is not None:
        annotations[state.LEAF_ISSUED_AT_ANNOTATION] = _iso(now)
    return annotations, {state.MANAGED_BY_LABEL: state.MANAGED_BY}


def _iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).isoformat(timespec="seconds")


def _new_ca(now: datetime.datetime, settings: Settings) -> KeyPair:
    # A distinct name per CA keeps issuer lookups unambiguous while two CAs coexist, even when
    # two concurrent runs each make one in the same second (only one of them is kept).
    name = f"toolforge-admission-ca@{int(now.timestamp())}-{secrets.token_hex(4)}"
    return new_ca(name, now, settings.ca_lifetime)


def _without(entries: Mapping[str, _V], *keys: str) -> dict[str, _V]:
    """Secret data or annotations without some keys."""
    return {k: v for k, v in entries.items() if k not in keys}


def _write(store: Store, old: Secret | None, new: Secret) -> None:
    if old is None:
        store.create_secret(new)
    else:
        store.replace_secret(replace(new, resource_version=old.resource_version,
                                     type=old.type))  # type is immutable (kyverno#6317)


def _pem(cert: Any) -> bytes:
    return bundle.encode_bundle([cert])


@dataclass(frozen=True)
class _Write:
    """One step about to be written: the action, what was read, and where to write."""

    action: Action
    view: View
    store: Store
    now: datetime.datetime

    @property
    def ca_data(self) -> dict[str, bytes]:
        ca_secret = self.view.observed.ca_secret
        return dict(ca_secret.data) if ca_secret else {}

    @property
    def ca_annotations(self) -> dict[str, str]:
        ca_secret = self.view.observed.ca_secret
        return dict(ca_secret.annotations) if ca_secret else {}

    @property
    def unmarked_ca_annotations(self) -> dict[str, str]:
        """The CA Secret's annotations without the mark of which CA the bundles hold."""
        return _without(self.ca_annotations, state.BUNDLED_CA_ANNOTATION,
                        state.BUNDLED_AT_ANNOTATION)

    def write_ca(self, data: dict[str, bytes], annotations: dict[str, str]) -> None:
        ca_secret = self.view.observed.ca_secret
        marks, labels = _marks()
        labels = {**(dict(ca_secret.labels) if ca_secret else {}), **labels}
        _write(self.store, ca_secret, Secret(self.view.settings.ca_secret, data,
                                             {**annotations, **marks}, labels,
                                             state.SECRET_TYPE_OPAQUE))


def _create_ca(w: _Write) -> None:
    pair = _new_ca(w.now, w.view.settings)
    data = {state.CA_CRT: pair.cert_pem, state.CA_KEY: pair.key_pem}
    if w.action.ca is not None:
        data[state.PREVIOUS_CA_CRT] = _pem(w.action.ca)
    w.write_ca(data, w.unmarked_ca_annotations)


def _drop_next_ca(w: _Write) -> None:
    w.write_ca(_without(w.ca_data, state.NEXT_CA_CRT, state.NEXT_CA_KEY), w.ca_annotations)


def _drop_previous_ca(w: _Write) -> None:
    w.write_ca(_without(w.ca_data, state.PREVIOUS_CA_CRT), w.ca_annotations)


def _clear_bundled_mark(w: _Write) -> None:
    w.write_ca(w.ca_data, w.unmarked_ca_annotations)


def _mark_bundled(w: _Write) -> None:
    assert w.action.ca is not None
    w.write_ca(w.ca_data, {**w.ca_annotations,
                           state.BUNDLED_CA_ANNOTATION: bundle.fingerprint(w.action.ca),
                           state.BUNDLED_AT_ANNOTATION: _iso(w.now)})


def _start_rollover(w: _Write) -> None:
    pair = _new_ca(w.now, w.view.settings)
    w.write_ca({**w.ca_data, state.NEXT_CA_CRT: pair.cert_pem, state.NEXT_CA_KEY: pair.key_pem},
               w.ca_annotations)


def _promote_next_ca(w: _Write) -> None:
    ca_data = w.ca_data
    data = _without(ca_data, state.NEXT_CA_CRT, state.NEXT_CA_KEY)
    data.update({state.CA_CRT: ca_data[state.NEXT_CA_CRT],
                 state.CA_KEY: ca_data[state.NEXT_CA_KEY],
                 state.PREVIOUS_CA_CRT: ca_data[state.CA_CRT]})
    w.write_ca(data, w.ca_annotations)


def _sync_webhook_bundle(w: _Write) -> None:
    assert w.action.configuration is not None
    w.store.replace_ca_bundles(w.action.configuration, bundle.encode_bundle(w.action.bundle))


def _sync_secret_bundle(w: _Write) -> None:
    certs_secret = w.view.observed.certs_secret
    assert certs_secret is not None
    _write(w.store, certs_secret, replace(
        certs_secret, data={**certs_secret.data,
                            state.CA_BUNDLE: bundle.encode_bundle(w.action.bundle)}))


def _issue_leaf(w: _Write) -> None:
    current, certs_secret, settings = w.view.current, w.view.observed.certs_secret, w.view.settings
    assert current is not None
    assert bundle.contains(w.action.bundle, current.cert)
    leaf = new_serving_cert(KeyPair(current.cert_pem, current.key_pem),
                            settings.dns_names, w.now, settings.leaf_lifetime)
    annotations, labels = _marks(w.now)
    old_annotations = dict(certs_secret.annotations) if certs_secret else {}
    old_labels = dict(certs_secret.labels) if certs_secret else {}
    _write(w.store, certs_secret, Secret(
        settings.certs_secret,
        {state.TLS_CRT: leaf.cert_pem, state.TLS_KEY: leaf.key_pem,
         state.CA_BUNDLE: bundle.encode_bundle(w.action.bundle)},
        {**old_annotations, **annotations}, {**old_labels, **labels}, state.SECRET_TYPE_TLS))


_WRITERS: Mapping[ActionKind, Callable[[_Write], None]] = {
    "create-ca": _create_ca,
    "drop-next-ca": _drop_next_ca,
    "drop-previous-ca": _drop_previous_ca,
    "retire-previous-ca": _drop_previous_ca,
    "clear-bundled-mark": _clear_bundled_mark,
    "mark-bundled": _mark_bundled,
    "start-rollover": _start_rollover,
    "promote-next-ca": _promote_next_ca,
    "sync-webhook-bundle": _sync_webhook_bundle,
    "sync-secret-bundle": _sync_secret_bundle,
    "issue-leaf": _issue_leaf,
}
"""How each step that writes is written: one write per step."""
assert _WRITERS.keys() == WRITES, "every step that writes has one writer"


def act(action: Action, v: View, store: Store, now: datetime.datetime) -> None:
    """Perform one step with one write."""
    writer = _WRITERS.get(action.kind)
    if writer is None:
        raise AssertionError(f"not a write: {action.kind}")
    writer(_Write(action, v, store, now))


def event(action: Action, **extra: Any) -> dict[str, Any]:
    """The structured log record of a decision."""
    record: dict[str, Any] = {"event": action.kind, "reason": action.reason,
                              "message": action.message}
    if action.configuration is not None:
        record["configuration"] = action.configuration.label
    if action.bundle:
        record["bundle"] = [bundle.fingerprint(c) for c in action.bundle]
    if action.until is not None:
        record["until"] = _iso(action.until)
    record.update(extra)
    return record


def rotate(store: Store, settings: Settings, *, clock: Clock, sleep: Sleep, log: Log,
           max_wait: datetime.timedelta = datetime.timedelta(minutes=15),
           max_steps: int = 100) -> Outcome:
    """Run steps until done or until the next step is more than `max_wait` away."""
    settings.check()
    deadline = clock() + max_wait
    steps: list[Action] = []
    for _ in range(max_steps):
        now = clock()
        observed = gather(store, settings)
        current_view = view(observed, now, settings)
        action = evaluate(CHAIN, current_view)
        if action.kind == "refuse":
            log(event(action))
            raise ForeignSecretError(action.message)
        if action.kind == "done":
            return Outcome(action, tuple(steps), current_view)
        if action.kind == "wait":
            assert action.until is not None
            if action.until > deadline:
                return Outcome(action, tuple(steps), current_view)
            log(event(action))
            sleep(max(0.0, (action.until - now).total_seconds()))
            continue
        assert action.kind in WRITES
        try:
            act(action, current_view, store, now)
        except ConflictError as e:
            log(event(action, conflict=str(e)))  # another run wrote first: decide again
            continue
        log(event(action))
        steps.append(action)
    raise RotationStuckError(f"no stable state after {max_steps} steps; last: {steps[-1:]}")
