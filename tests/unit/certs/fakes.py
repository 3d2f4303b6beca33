"""A fake clock, an in-memory store with the Store interface, certificate builders and the
bundle invariant."""

from __future__ import annotations

import base64
import copy
import datetime
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509

from certs import bundle, state
from certs.issue import KeyPair, new_ca, new_serving_cert
from certs.state import Secret, Settings, WebhookConfiguration
from certs.store import ConflictError, configuration_from_json, set_ca_bundles

T0 = datetime.datetime(2030, 1, 1, 3, 17, tzinfo=datetime.UTC)
SETTINGS = Settings(namespace="toolforge-admission", service="toolforge-admission")


class FakeClock:
    """A clock that moves only when told; `sleep` moves it."""

    def __init__(self, now: datetime.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, delta: datetime.timedelta) -> None:
        self.now += delta

    def sleep(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@dataclass
class Snapshot:
    """What the fake cluster held from `at` on: the leaf in webhook-certs and each caBundle."""

    at: datetime.datetime
    leaf: bytes | None
    bundles: dict[str, bytes]


def webhook_json(name: str, *, service: str = "toolforge-admission",
                 namespace: str = "toolforge-admission", entries: int = 2,
                 ca_bundle: bytes = b"") -> dict[str, Any]:
    """A webhook configuration as the API returns it, with `entries` webhooks on our Service."""
    return {
        "metadata": {"name": name, "resourceVersion": "1",
                     "labels": {"app.kubernetes.io/part-of": "toolforge-admission"}},
        "webhooks": [
            {"name": f"{name}-{i}.toolforge.org",
             "clientConfig": {"service": {"name": service, "namespace": namespace,
                                          "path": f"/validate/{i}"},
                              "caBundle": base64.b64encode(ca_bundle).decode()},
             "matchConditions": [{"name": "keep-me", "expression": "true"}]}
            for i in range(entries)],
    }


@dataclass
class FakeStore:
    """An in-memory API server: resourceVersions, 409s, and a history of every state."""

    clock: FakeClock
    settings: Settings = SETTINGS
    secrets: dict[str, Secret] = field(default_factory=dict)
    configurations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[Snapshot] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    fail_after_writes: int | None = None  # raise CrashError instead of the next write
    _rv: int = 100

    def __post_init__(self) -> None:
        self.record()

    def add_configuration(self, kind: str, obj: dict[str, Any]) -> None:
        self.configurations[(kind, obj["metadata"]["name"])] = copy.deepcopy(obj)
        self.record()

    # -- history ---------------------------------------------------------------------------
    def record(self) -> None:
        certs = self.secrets.get(self.settings.certs_secret)
        leaf = certs.data.get(state.TLS_CRT) if certs else None
        bundles: dict[str, bytes] = {}
        for (kind, name), obj in self.configurations.items():
            config = configuration_from_json(kind, obj, self.settings)  # type: ignore[arg-type]
            for entry in config.entries:
                bundles[f"{kind}/{name}/{entry.name}"] = entry.ca_bundle
        self.history.append(Snapshot(self.clock(), leaf, bundles))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def before_write(self) -> None:
        """Called before a write checks its precondition: where a concurrent writer slips in."""

    def _write(self, what: str) -> None:
        if self.fail_after_writes is not None:
            if self.fail_after_writes <= 0:
                raise CrashError(what)
            self.fail_after_writes -= 1
        self.writes.append(what)

    # -- Store -----------------------------------------------------------------------------
    def read_secret(self, name: str) -> Secret | None:
        return self.secrets.get(name)

    def create_secret(self, secret: Secret) -> None:
        self.before_write()
        if secret.name in self.secrets:
            raise ConflictError(f"secrets {secret.name!r} already exists")
        self._write(f"create secret/{secret.name}")
        self.secrets[secret.name] = replace(secret, resource_version=self._next_rv())
        self.record()

    def replace_secret(self, secret: Secret) -> None:
        self.before_write()
        old = self.secrets.get(secret.name)
        if old is None or old.resource_version != secret.resource_version:
            raise ConflictError(f"secret {secret.name} changed")
        assert secret.type == old.type, "Secret type is immutable"
        self._write(f"replace secret/{secret.name}")
        self.secrets[secret.name] = replace(secret, resource_version=self._next_rv())
        self.record()

    def list_webhook_configurations(self) -> tuple[WebhookConfiguration, ...]:
        return tuple(configuration_from_json(kind, obj, self.settings)  # type: ignore[arg-type]
                     for (kind, _), obj in sorted(self.configurations.items()))

    def replace_ca_bundles(self, configuration: WebhookConfiguration, ca_bundle: bytes) -> None:
        self.before_write()
        key = (configuration.kind, configuration.name)
        obj = self.configurations.get(key)
        if obj is None or obj["metadata"]["resourceVersion"] != configuration.resource_version:
            raise ConflictError(f"{configuration.label} changed")
        self._write(f"replace {configuration.label}")
        new = set_ca_bundles(obj, ca_bundle, self.settings)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.configurations[key] = new
        self.record()

    # -- helpers for tests -----------------------------------------------------------------
    def set_ca_bundle(self, kind: str, name: str, pem: bytes) -> None:
        """Overwrite a configuration's caBundle as someone else would (new resourceVersion)."""
        obj = set_ca_bundles(self.configurations[(kind, name)], pem, self.settings)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.configurations[(kind, name)] = obj
        self.record()

    def put_secret(self, secret: Secret) -> None:
        self.secrets[secret.name] = replace(secret, resource_version=self._next_rv())
        self.record()


class CrashError(Exception):
    """The job died before this write."""


def make_store(clock: FakeClock, configurations: int = 2) -> FakeStore:
    store = FakeStore(clock)
    store.add_configuration("validating", webhook_json("toolforge-admission-pods"))
    if configurations > 1:
        store.add_configuration("mutating", webhook_json("toolforge-admission-build-pods",
                                                         entries=1))
    return store


# -- invariant -------------------------------------------------------------------------------

def assert_bundles_always_trust_served_leaf(history: list[Snapshot],
                                            delay: datetime.timedelta,
                                            end: datetime.datetime) -> None:
    """Every caBundle an API server may have used trusted every leaf a pod may have served.

    A leaf may be served from when it is written until `delay` after it is replaced (the kubelet
    is slow to update the mounted Secret); a caBundle may be used from when it is written until
    `delay` after it is replaced (API server caches). Wherever those windows overlap, the leaf
    must chain to a CA of the bundle. Bundles never filled (first install) are left out.
    """
    leaves: list[tuple[datetime.datetime, datetime.datetime, bytes]] = []
    bundles: dict[str, list[tuple[datetime.datetime, datetime.datetime, bytes]]] = {}
    for i, snap in enumerate(history):
        until = history[i + 1].at if i + 1 < len(history) else end
        if snap.leaf is not None and (not leaves or leaves[-1][2] != snap.leaf):
            leaves.append((snap.at, until, snap.leaf))
        elif snap.leaf is not None:
            leaves[-1] = (leaves[-1][0], until, snap.leaf)
        for where, pem in snap.bundles.items():
            spans = bundles.setdefault(where, [])
            if spans and spans[-1][2] == pem:
                spans[-1] = (spans[-1][0], until, pem)
            else:
                spans.append((snap.at, until, pem))
    checked = 0
    for l_from, l_to, leaf_pem in leaves:
        try:
            leaf = x509.load_pem_x509_certificate(leaf_pem)
        except ValueError:
            continue  # a tampered tls.crt: the pods cannot serve it at all
        for where, spans in bundles.items():
            for b_from, b_to, pem in spans:
                if not pem.strip():
                    continue
                if l_from < b_to + delay and b_from < l_to + delay:
                    checked += 1
                    cas = bundle.parse_bundle(pem)
                    assert bundle.issuer_in(leaf, cas) is not None, (
                        f"{where}: bundle held {b_from}..{b_to} "
                        f"{[c.subject.rfc4514_string() for c in cas]} does not trust the leaf "
                        f"served {l_from}..{l_to} issued by {leaf.issuer.rfc4514_string()}")
    assert checked or not leaves


# -- builders --------------------------------------------------------------------------------

def make_ca(now: datetime.datetime = T0, days: int = 365, name: str = "test-ca") -> KeyPair:
    return new_ca(name, now, datetime.timedelta(days=days))


def make_leaf(ca: KeyPair, now: datetime.datetime = T0, days: int = 90,
              names: tuple[str, ...] = SETTINGS.dns_names) -> KeyPair:
    return new_serving_cert(ca, names, now, datetime.timedelta(days=days))


def ours() -> tuple[dict[str, str], dict[str, str]]:
    return ({state.ISSUED_BY_ANNOTATION: state.MANAGED_BY},
            {state.MANAGED_BY_LABEL: state.MANAGED_BY})


def ca_secret(current: KeyPair | None, *, next_ca: KeyPair | None = None,
              previous: KeyPair | None = None, annotations: dict[str, str] | None = None,
              data: dict[str, bytes] | None = None) -> Secret:
    d: dict[str, bytes] = {}
    if current is not None:
        d |= {state.CA_CRT: current.cert_pem, state.CA_KEY: current.key_pem}
    if next_ca is not None:
        d |= {state.NEXT_CA_CRT: next_ca.cert_pem, state.NEXT_CA_KEY: next_ca.key_pem}
    if previous is not None:
        d[state.PREVIOUS_CA_CRT] = previous.cert_pem
    d |= data or {}
    a, labels = ours()
    return Secret(SETTINGS.ca_secret, d, {**a, **(annotations or {})}, labels,
                  resource_version="7")


def certs_secret(leaf: KeyPair | None, cas: list[KeyPair], *, issued_at: datetime.datetime | None
                 = None, data: dict[str, bytes] | None = None, foreign: bool = False) -> Secret:
    d: dict[str, bytes] = {state.CA_BUNDLE: bundle.encode_bundle(c.certificate for c in cas)}
    if leaf is not None:
        d |= {state.TLS_CRT: leaf.cert_pem, state.TLS_KEY: leaf.key_pem}
    d |= data or {}
    a, labels = ({}, {}) if foreign else ours()
    if issued_at is not None:
        a = {**a, state.LEAF_ISSUED_AT_ANNOTATION: issued_at.isoformat()}
    return Secret(SETTINGS.certs_secret, d, a, labels, state.SECRET_TYPE_TLS, resource_version="9")


def bundle_of(*cas: KeyPair) -> bytes:
    return bundle.encode_bundle(c.certificate for c in cas)


def configuration(name: str, *cas: KeyPair, kind: str = "validating",
                  rv: str = "3") -> WebhookConfiguration:
    obj = webhook_json(name, ca_bundle=bundle_of(*cas))
    obj["metadata"]["resourceVersion"] = rv
    return configuration_from_json(kind, obj, SETTINGS)  # type: ignore[arg-type]
