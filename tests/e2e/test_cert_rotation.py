"""Certificate rotation against the real API server: `certs rotate` with a server that reloads.

There is no kubelet here, so a small thread plays its part: it copies the Secret the rotation
writes into the cert dir of a separate `toolforge-admission serve` process, atomically (new files
in a fresh directory, then a rename of the `..data` symlink, as the kubelet's atomic writer does).
One copy of the pods webhook, limited to a throwaway namespace and labelled so that only this
test's rotation finds it, points at that server by URL; the rotation fills its caBundle.

The API server keeps its connections to a webhook alive and opens new ones when a caBundle
changes (a new client) or when the server closes them, so the rotation is judged where it matters:
every new connection must find a served certificate that the bundle of that moment trusts.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from certs.issue import new_ca, new_serving_cert
from tests.e2e.cluster import (
    REPO,
    TEST_POLICY,
    ControlPlane,
    Process,
    free_port,
    log,
    project_webhook_configurations,
    wait_for,
    wait_http,
)
from tests.volumes import link_keys, swap_data

ANYWHERE_IMAGE = "docker-registry.tools.wmflabs.org/toolforge-python311-sssd-base:latest"
SERVICE = "localhost"  # the leaf's names are the Service's: localhost, localhost.<ns>, ...
WEBHOOK_NAME = "rotation-pods.tfa-rotation-test.toolforge.org"
TOOL = pathlib.Path(sys.executable).parent / "toolforge-admission"


def _new_client(cp: ControlPlane) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(cp.kubeconfig))


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data) if data.strip() else []


class Kubelet(threading.Thread):
    """Copies tls.crt, tls.key and ca.crt of a Secret into a directory, as a Secret volume."""

    def __init__(self, cp: ControlPlane, namespace: str, secret: str,
                 directory: pathlib.Path) -> None:
        super().__init__(daemon=True, name="fake-kubelet")
        from kubernetes import client

        self.core = client.CoreV1Api(_new_client(cp))
        self.namespace, self.secret, self.directory = namespace, secret, directory
        self.stopping = threading.Event()
        self.paused = threading.Event()
        self.last: dict[str, bytes] | None = None
        self.copies = 0
        self.error: BaseException | None = None
        link_keys(directory, ["tls.crt", "tls.key", "ca.crt"])

    def write(self, files: dict[str, bytes]) -> None:
        """Swap the files in at once: a fresh directory, then rename the ..data symlink."""
        swap_data(self.directory, files, private=["tls.key"])

    def resync(self) -> None:
        self.last = None

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            while not self.stopping.is_set():
                if not self.paused.is_set():
                    try:
                        obj = self.core.read_namespaced_secret(self.secret, self.namespace)
                    except ApiException as error:
                        if error.status != 404:
                            raise
                        obj = None
                    if obj is not None and obj.data and "tls.crt" in obj.data:
                        files = {k: base64.b64decode(obj.data.get(k) or "")
                                 for k in ("tls.crt", "tls.key", "ca.crt")}
                        if files != self.last and not self.paused.is_set():
                            self.write(files)
                            self.last = files
                            self.copies += 1
                self.stopping.wait(0.1)
        except BaseException as error:  # reported by the test
            self.error = error
            raise


class Load(threading.Thread):
    """Creates a pod (dry run, through every webhook) in the namespace every ~100 ms."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        super().__init__(daemon=True, name="admission-load")
        from kubernetes import client

        self.core: Any = client.CoreV1Api(_new_client(cp))  # given plain dicts
        self.namespace = namespace
        self.stopping = threading.Event()
        self.ok = 0
        self.failures: list[tuple[float, str]] = []

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self.stopping.is_set():
            body = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"load-{uuid.uuid4().hex[:8]}"},
                    "spec": {"containers": [{"name": "app", "image": ANYWHERE_IMAGE}],
                             "restartPolicy": "Never"}}
            try:
                self.core.create_namespaced_pod(self.namespace, body, dry_run="All",
                                                _request_timeout=15)
                self.ok += 1
            except ApiException as error:
                self.failures.append((time.monotonic(), f"{error.status}: {error.body}"))
            except Exception as error:  # a client-side problem is a failure too
                self.failures.append((time.monotonic(), repr(error)))
            self.stopping.wait(0.1)

    def wait_admitted(self, count: int, timeout: float = 30) -> None:
        """Wait until `count` more creates than so far have been admitted."""
        target = self.ok + count
        wait_for(f"{count} more admitted creates", lambda: self.ok >= target, timeout, 0.1)

    def webhook_failures(self) -> list[str]:
        return [m for _, m in self.failures if "failed calling webhook" in m or "x509" in m]

    def x509_failures(self) -> list[str]:
        return [m for _, m in self.failures if "x509" in m]

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


class Rotation:
    """A namespace, a webhook configuration, a fake kubelet and a server of this test's own."""

    def __init__(self, cp: ControlPlane) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.cp = cp
        self.namespace = f"tfa-rotation-{suffix}"
        self.label = f"app.kubernetes.io/part-of=tfa-rotation-test-{suffix}"
        self.secret = f"rotation-certs-{suffix}"
        self.ca_secret = f"rotation-ca-{suffix}"
        self.configuration = f"tfa-rotation-test-{suffix}"
        self.workdir = cp.workdir / f"rotation-{suffix}"
        self.cert_dir = self.workdir / "certs"
        self.cert_dir.mkdir(parents=True)
        self.port = free_port()
        self.base_url = f"https://{SERVICE}:{self.port}"
        self.server: Process | None = None
        self.kubelet: Kubelet | None = None
        self.bootstrapped = False

    # -- setup / teardown

    def setup(self) -> None:
        self.cp.create_namespace(self.namespace)
        self.cp.wait_service_account(self.namespace)
        pods = next(c for c in project_webhook_configurations()
                    if c["metadata"]["name"] == "toolforge-admission-pods")
        configuration = copy.deepcopy(pods)
        key, value = self.label.split("=")
        configuration["metadata"] = {"name": self.configuration, "labels": {key: value}}
        webhook = configuration["webhooks"][0]
        webhook["name"] = WEBHOOK_NAME
        path = webhook["clientConfig"]["service"]["path"]
        webhook["clientConfig"] = {"url": f"{self.base_url}{path}"}  # caBundle: the job's
        webhook["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": self.namespace}}
        # A busy test machine must not turn a slow answer into a failure counted as TLS's.
        webhook["timeoutSeconds"] = 15
        self.cp.apply([configuration])
        self.kubelet = Kubelet(self.cp, self.namespace, self.secret, self.cert_dir)
        self.kubelet.start()

    def teardown(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stopping.set()
            self.kubelet.join(timeout=10)
        self.stop_server()
        self.cp.kubectl("delete", "validatingwebhookconfiguration", self.configuration,
                        "--ignore-not-found", check=False)
        self.cp.kubectl("delete", "namespace", self.namespace, "--wait=false",
                        "--ignore-not-found", check=False)

    # -- the server

    def start_server(self) -> None:
        prefix = [str(TOOL)] if TOOL.exists() else [sys.executable, "-m", "webhooks.cli"]
        self.server = Process(f"rotation-server-{self.port}", [
            *prefix, "serve", f"--bind=127.0.0.1:{self.port}", f"--cert-dir={self.cert_dir}",
            f"--policy={TEST_POLICY}", "--workers=2", "--threads=2",
        ], self.workdir, env={"KUBECONFIG": str(self.cp.kubeconfig),
                              "POD_NAMESPACE": self.namespace, "PYTHONUNBUFFERED": "1",
                              "PYTHONPATH": str(REPO)})
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        wait_http(f"https://127.0.0.1:{self.port}/readyz", unverified, 60, self.server)

    def stop_server(self) -> None:
        if self.server is None:
            return
        self.server.stop(timeout=10, sig=signal.SIGINT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGKILL)

        def closed() -> bool:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                return sock.connect_ex(("127.0.0.1", self.port)) != 0
        wait_for("the rotation server's port to close", closed, 10)
        self.server = None

    def served_certificate(self) -> x509.Certificate:
        """The leaf a new connection gets."""
        pem = ssl.get_server_certificate(("127.0.0.1", self.port), timeout=5)
        return x509.load_pem_x509_certificate(pem.encode())

    # -- the rotation job and what it wrote

    def rotate(self, *extra: str, propagation_delay: str = "2s") -> subprocess.CompletedProcess[str]:
        prefix = [str(TOOL)] if TOOL.exists() else [sys.executable, "-m", "webhooks.cli"]
        argv = [*prefix, "certs", "rotate", f"--namespace={self.namespace}",
                f"--service={SERVICE}", f"--secret={self.secret}",
                f"--ca-secret={self.ca_secret}", f"--webhook-label={self.label}",
                f"--kubeconfig={self.cp.kubeconfig}",
                f"--propagation-delay={propagation_delay}", "--max-wait=60s", *extra]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        with (self.workdir / "rotate.log").open("a") as rotate_log:
            rotate_log.write(result.stdout + result.stderr)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        return result

    def ca_bundle(self) -> list[x509.Certificate]:
        obj = self.cp.get_json("validatingwebhookconfiguration", self.configuration)
        encoded = obj["webhooks"][0]["clientConfig"].get("caBundle") or ""
        return _pem_certs(base64.b64decode(encoded))

    def secret_data(self, name: str) -> dict[str, bytes]:
        obj = self.cp.get_json("secret", "-n", self.namespace, name)
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def bootstrap(self) -> None:
        if self.bootstrapped:
            return
        self.rotate()
        assert self.kubelet is not None
        wait_for("the fake kubelet to copy the serving certificate",
                 (self.cert_dir / "tls.crt").exists, 15, 0.1)
        self.start_server()
        self.bootstrapped = True

    def wait_admitted(self, timeout: float = 20) -> None:
        """A pod create goes through the API server, the webhook and back, allowed."""
        def admitted() -> bool:
            result = self.cp.kubectl("-n", self.namespace, "create", "--dry-run=server", "-f",
                                     "-", check=False, input=_pod("probe"))
            return result.returncode == 0
        wait_for("a pod create admitted through the rotation webhook", admitted, timeout, 0.3)


def _pod(name: str) -> str:
    import yaml

    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                           "spec": {"containers": [{"name": "app", "image": ANYWHERE_IMAGE}],
                                    "restartPolicy": "Never"}})


def _reviews(rotation: Rotation) -> int:
    path = rotation.workdir / f"rotation-server-{rotation.port}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return sum(1 for line in text.splitlines()
               if '"uid"' in line and f'"{rotation.namespace}"' in line)


@pytest.fixture(scope="module")
def rotation(control_plane: ControlPlane) -> Iterator[Rotation]:
    running = Rotation(control_plane)
    try:
        running.setup()
        yield running
    finally:
        running.teardown()


@pytest.fixture
def load(rotation: Rotation, control_plane: ControlPlane) -> Iterator[Load]:
    rotation.bootstrap()
    rotation.wait_admitted()
    thread = Load(control_plane, rotation.namespace)
    yield thread
    thread.stop()


def test_bootstrap_from_nothing_fills_the_bundle_and_admissions_work(
        rotation: Rotation) -> None:
    assert rotation.ca_bundle() == []
    rotation.bootstrap()

    ca_data = rotation.secret_data(rotation.ca_secret)
    ca = x509.load_pem_x509_certificate(ca_data["ca.crt"])
    assert rotation.ca_bundle() == [ca]
    certs_data = rotation.secret_data(rotation.secret)
    leaf = x509.load_pem_x509_certificate(certs_data["tls.crt"])
    assert leaf.issuer == ca.subject
    assert _pem_certs(certs_data["ca.crt"]) == [ca]
    assert rotation.served_certificate() == leaf

    before = _reviews(rotation)
    rotation.wait_admitted(timeout=10)
    for i in range(3):
        result = rotation.cp.kubectl("-n", rotation.namespace, "create", "-f", "-",
                                     input=_pod(f"bootstrap-{i}"))
        assert "created" in result.stdout
    wait_for("the server's review lines", lambda: _reviews(rotation) >= before + 4, 10)


def test_leaf_renewal_and_ca_rollover_under_load_fail_nothing(
        rotation: Rotation, load: Load) -> None:
    old_ca = x509.load_pem_x509_certificate(rotation.secret_data(rotation.ca_secret)["ca.crt"])
    old_leaf = rotation.served_certificate()
    assert rotation.ca_bundle() == [old_ca]
    load.start()
    load.wait_admitted(10)

    # The leaf (90 days + 1 h backdating) is due once renew-before is 90 days.
    rotation.rotate("--leaf-lifetime=91d", "--leaf-renew-before=90d", propagation_delay="3s")
    renewed = x509.load_pem_x509_certificate(rotation.secret_data(rotation.secret)["tls.crt"])
    assert renewed != old_leaf
    assert renewed.issuer == old_ca.subject
    wait_for("the server to serve the renewed leaf",
             lambda: rotation.served_certificate() == renewed, 15, 0.2)
    load.wait_admitted(10)

    # The CA (365 days + 1 h) is due once renew-before is 365 days: a whole rollover in one run.
    rotation.rotate("--ca-lifetime=366d", "--ca-renew-before=365d", "--leaf-lifetime=91d",
                    "--leaf-renew-before=90d", propagation_delay="3s")
    load.wait_admitted(20)  # on connections opened after the last bundle change
    load.stop()

    new_ca = x509.load_pem_x509_certificate(rotation.secret_data(rotation.ca_secret)["ca.crt"])
    assert new_ca != old_ca
    assert new_ca.subject != old_ca.subject
    assert rotation.ca_bundle() == [new_ca]
    served = rotation.served_certificate()
    assert served.issuer == new_ca.subject
    assert served.issuer != old_leaf.issuer
    log(f"rotation under load: {load.ok} admitted, {len(load.failures)} failed")
    assert load.ok >= 50
    assert load.failures == [], load.failures[:5]


def test_serving_a_new_ca_before_the_bundle_has_it_fails_admissions(
        rotation: Rotation, load: Load) -> None:
    """The wrong order (the leaf first, the bundle later) is seen: the test can fail."""
    assert rotation.kubelet is not None
    load.start()
    load.wait_admitted(5)
    rotation.kubelet.paused.set()
    try:
        now = datetime.datetime.now(datetime.UTC)
        rogue_ca = new_ca("not-in-any-bundle", now, datetime.timedelta(days=1))
        leaf = new_serving_cert(rogue_ca, [SERVICE], now, datetime.timedelta(days=1))
        rotation.kubelet.write({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem,
                                "ca.crt": rogue_ca.cert_pem})
        # The API server keeps its connections; a restarted pod (or any new connection) meets
        # the new leaf, which the bundle does not trust.
        rotation.stop_server()
        rotation.start_server()
        wait_for("admissions refused for an untrusted certificate",
                 load.x509_failures, 20, 0.2)
    finally:
        rotation.kubelet.resync()
        rotation.kubelet.paused.clear()
    rotation.wait_admitted()
    load.stop()
    assert load.webhook_failures()
    assert any("certificate signed by unknown authority" in m for m in load.x509_failures()), \
        load.x509_failures()[:3]
