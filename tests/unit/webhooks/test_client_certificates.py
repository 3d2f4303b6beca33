"""Mutual TLS: only the API server's client certificate may send admission reviews.

The TLS layer asks for a client certificate without demanding one: the review port closes a
connection without one right after the handshake, before a byte of a request is read, and the
status port (`--status-bind`) serves the probes and /metrics to kubelet and Prometheus, which have
none. The admission paths also refuse a connection without a verified certificate (or with a name
not allowed) with a 403 before the body is read. First the check inside the app, then the real
server over TLS: the handshake, the TLS settings and the answers.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import signal
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from certs.issue import KeyPair, new_ca
from tests.builders import EXAMPLE_POLICY, make_review
from tests.pipelineruns import POLICY_YAML, run_for
from tests.unit.webhooks.certificates import client_certificate
from tests.unit.webhooks.dev_server import free_port, start_dev_server
from tests.unit.webhooks.fakes import FakeCluster
from webhooks import metrics
from webhooks.admission import ENDPOINTS
from webhooks.app import EXTENSION, create_app
from webhooks.slots import LeaseSlots
from webhooks.tls import TLS12_CIPHERS, ServingCertificate, _server_context

API_SERVER = "kube-apiserver-webhook-client"
NOW = datetime.datetime.now(datetime.UTC)


# --- the check in the app ------------------------------------------------------------------------


class Connection:
    """What gunicorn puts in environ['gunicorn.socket'], reduced to what the check reads."""

    def __init__(self, certificate: dict[str, Any] | None) -> None:
        self.certificate = certificate

    def getpeercert(self) -> dict[str, Any] | None:
        return self.certificate


def verified(common_name: str, *dns_names: str) -> Connection:
    """A connection whose client certificate the handshake verified (ssl's getpeercert shape)."""
    return Connection({"subject": ((("commonName", common_name),),),
                       "subjectAltName": tuple(("DNS", name) for name in dns_names)})


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def mtls_app(tmp_path: Path, cluster: FakeCluster) -> Iterator[Flask]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML)
    app = create_app({"POLICY_FILE": str(policy), "POLICY_RELOAD_SECONDS": 0, "TESTING": True,
                      "ACTIVE_RUNS": LeaseSlots(cluster, cluster),
                      "CLIENT_CERTIFICATES": True, "CLIENT_NAMES": (API_SERVER,)})
    yield app
    app.extensions[EXTENSION].source.stop()


def post(client: FlaskClient, review: dict[str, Any], connection: Connection | None,
         path: str = "/validate/pods") -> Any:
    overrides = {} if connection is None else {"gunicorn.socket": connection}
    return client.post(path, json=review, environ_overrides=overrides)


def refusals() -> float:
    return sum(metrics.REVIEWS.labels(endpoint.name, "", "invalid", "ClientNotAllowed")._value.get()
               for endpoint in ENDPOINTS)


@pytest.mark.parametrize("connection", [
    pytest.param(None, id="not-tls"),
    pytest.param(Connection(None), id="no-certificate"),
    pytest.param(Connection({}), id="certificate-not-verified"),
    pytest.param(verified("mytool", "mytool.example"), id="name-not-allowed"),
])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_admission_path_refuses_a_client_that_is_not_the_api_server(
        mtls_app: Flask, endpoint: Any, connection: Connection | None,
        caplog: pytest.LogCaptureFixture) -> None:
    before = refusals()
    with caplog.at_level(logging.WARNING, logger="webhooks.app"):
        response = post(mtls_app.test_client(), make_review(), connection, endpoint.path)
    assert response.status_code == 403
    assert response.json["kind"] == "Status"
    assert response.json["reason"] == "ClientNotAllowed"
    assert "only from the API server" in response.json["message"]
    assert refusals() == before + 1
    (record,) = [r for r in caplog.records if r.getMessage() == "bad request"]
    assert record.fields["reason"] == "ClientNotAllowed"  # type: ignore[attr-defined]


@pytest.mark.parametrize("connection", [
    pytest.param(verified(API_SERVER), id="common-name"),
    pytest.param(verified("apiserver", API_SERVER), id="dns-name"),
])
def test_the_api_server_certificate_is_answered(mtls_app: Flask, connection: Connection) -> None:
    response = post(mtls_app.test_client(), make_review(), connection)
    assert response.status_code == 200
    assert response.json["kind"] == "AdmissionReview"


def test_any_verified_certificate_is_enough_when_no_names_are_given(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(EXAMPLE_POLICY.read_bytes())
    app = create_app({"POLICY_FILE": str(policy), "POLICY_RELOAD_SECONDS": 0, "TESTING": True,
                      "CLIENT_CERTIFICATES": True})
    try:
        assert post(app.test_client(), make_review(), verified("anything")).status_code == 200
        assert post(app.test_client(), make_review(), Connection(None)).status_code == 403
    finally:
        app.extensions[EXTENSION].source.stop()


def test_a_forged_pipelinerun_review_takes_no_slot(mtls_app: Flask, cluster: FakeCluster) -> None:
    review = make_review(run_for(uid="forged"), resource="pipelineruns", namespace="image-build")
    response = post(mtls_app.test_client(), review, Connection(None), "/validate/pipelineruns")
    assert response.status_code == 403
    assert cluster.leases == {}
    assert cluster.writes == 0
    # The same review from the API server does take the tool's slot: the test above is not empty.
    review = make_review(run_for(uid="real"), resource="pipelineruns", namespace="image-build")
    response = post(mtls_app.test_client(), review, verified(API_SERVER), "/validate/pipelineruns")
    assert response.json["response"]["allowed"] is True
    assert cluster.writes == 1


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_need_no_certificate(mtls_app: Flask, path: str) -> None:
    assert mtls_app.test_client().get(path).status_code == 200


# --- the real server over TLS --------------------------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    ca_file: str
    client_ca: KeyPair
    directory: Path
    status_port: int

    def context(self, certificate: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if certificate is not None:
            context.load_cert_chain(*certificate)
        return context

    def request(self, method: str, path: str, context: ssl.SSLContext,
                body: dict[str, Any] | None = None, port: int | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPSConnection(self.host, port or self.port, context=context,
                                                 timeout=10)
        try:
            connection.request(method, path, body=json.dumps(body) if body else None,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith("{") else text
        finally:
            connection.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("mtls")
    client_ca = new_ca("API server client CA", NOW, datetime.timedelta(days=1))
    (directory / "client-ca.crt").write_bytes(client_ca.cert_pem)
    status_port = free_port()
    dev = start_dev_server("--workers=1", "--threads=4",
                           f"--client-ca={directory / 'client-ca.crt'}",
                           f"--client-name={API_SERVER}", f"--status-bind=127.0.0.1:{status_port}")
    yield Server("127.0.0.1", dev.port, dev.ca_file, client_ca, directory, status_port)
    dev.process.send_signal(signal.SIGTERM)
    dev.process.wait(timeout=30)


@pytest.mark.slow
def test_over_tls_the_api_server_certificate_is_answered(server: Server) -> None:
    certificate = client_certificate(server.client_ca, API_SERVER, server.directory)
    review = make_review()
    status, body = server.request("POST", "/validate/pods", server.context(certificate), review)
    assert status == 200
    assert body["response"]["uid"] == review["request"]["uid"]


@pytest.mark.slow
def test_over_tls_no_certificate_is_closed_right_after_the_handshake(server: Server) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as raw, \
            server.context().wrap_socket(raw, server_hostname=server.host) as tls:
        # Not a byte sent: the server closes without waiting for a request. (With TLS 1.3 the
        # client's handshake ends before the server has looked at its certificate.)
        try:
            data = tls.recv(1)
        except (ssl.SSLError, ConnectionResetError):
            data = b""  # the close arrived as a TLS alert or a reset: closed all the same
        assert data == b""
    # A certificate from the client CA is served on the same port (the test above is not empty).
    certificate = client_certificate(server.client_ca, API_SERVER, server.directory)
    assert server.request("GET", "/healthz", server.context(certificate))[0] == 200


@pytest.mark.slow
def test_over_tls_the_status_port_serves_no_review(server: Server) -> None:
    status, body = server.request("POST", "/validate/pods", server.context(), make_review(),
                                  port=server.status_port)
    assert status == 404
    assert body["kind"] == "Status"
    assert (body["code"], body["reason"]) == (404, "NotFound")
    assert "the status port: it serves /healthz, /readyz and /metrics only" in body["message"]


@pytest.mark.slow
def test_over_tls_a_certificate_with_another_name_gets_a_403(server: Server) -> None:
    certificate = client_certificate(server.client_ca, "mytool", server.directory)
    status, body = server.request("POST", "/validate/pods", server.context(certificate),
                                  make_review())
    assert status == 403
    assert "names ['mytool'] (from 127.0.0.1) are not allowed" in body["message"]


@pytest.mark.slow
def test_over_tls_a_certificate_from_another_ca_fails_the_handshake(server: Server) -> None:
    other = new_ca("another CA", NOW, datetime.timedelta(days=1))
    certificate = client_certificate(other, API_SERVER, server.directory)
    # With TLS 1.3 the client learns of the refusal on its first read, not in its handshake.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        server.request("GET", "/healthz", server.context(certificate))


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_over_tls_probes_and_metrics_need_no_certificate(server: Server, path: str) -> None:
    assert server.request("GET", path, server.context(), port=server.status_port)[0] == 200


@pytest.mark.slow
def test_cbc_and_sha1_suites_are_refused_in_tls_1_2(server: Server) -> None:
    # What OpenSSL's defaults would otherwise accept from a TLS 1.2 client.
    weak = server.context()
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
                     "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with socket.create_connection((server.host, server.port)) as raw, \
            pytest.raises(ssl.SSLError):
        weak.wrap_socket(raw, server_hostname=server.host)


# --- the context itself --------------------------------------------------------------------------


@pytest.fixture
def serving_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    from certs.issue import new_serving_cert

    ca = new_ca("serving CA", NOW, datetime.timedelta(days=1))
    leaf = new_serving_cert(ca, ["localhost"], NOW, datetime.timedelta(days=1))
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(leaf.key_pem)
    (tmp_path / "client-ca.crt").write_bytes(
        new_ca("client CA", NOW, datetime.timedelta(days=1)).cert_pem)
    return tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "client-ca.crt"


def test_the_context_is_tls_1_2_plus_aead_without_compression(
        serving_files: tuple[Path, Path, Path]) -> None:
    cert_file, key_file, client_ca = serving_files
    for ca in (None, str(client_ca)):
        context = _server_context(cert_file, key_file, ca)
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12
        assert all(name.startswith("ECDHE") and ("GCM" in name or "CHACHA20" in name)
                   for name in tls12), tls12
    assert TLS12_CIPHERS == "ECDHE+AESGCM:ECDHE+CHACHA20"
    assert _server_context(cert_file, key_file, None).verify_mode == ssl.CERT_NONE
    # Asked for, verified when sent, but not demanded: probes have no certificate.
    assert _server_context(cert_file, key_file, str(client_ca)).verify_mode == ssl.CERT_OPTIONAL


def test_a_new_client_ca_reaches_new_connections(serving_files: tuple[Path, Path, Path]) -> None:
    cert_file, key_file, client_ca = serving_files
    serving = ServingCertificate(cert_file, key_file, client_ca_file=str(client_ca),
                                 check_interval=0)
    first = serving.context()
    staged = client_ca.with_suffix(".new")
    staged.write_bytes(new_ca("next client CA", NOW, datetime.timedelta(days=1)).cert_pem)
    staged.replace(client_ca)  # as the kubelet swaps a ConfigMap volume
    assert serving.context() is not first
    subjects = [ca["subject"] for ca in serving.context().get_ca_certs()]
    assert subjects == [((("commonName", "next client CA"),),)]
