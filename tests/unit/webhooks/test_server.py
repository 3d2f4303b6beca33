"""The service as it runs in production: gunicorn through the CLI, over TLS, with hot reload."""

from __future__ import annotations

import gc
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.model import parse_policy
from tests.builders import EXAMPLE_POLICY, make_review
from tests.unit.webhooks.dev_server import Server, post_review, start_dev_server
from webhooks.server import ServerOptions, gunicorn_settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    policy_file = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy_file.write_bytes(EXAMPLE_POLICY.read_bytes())
    dev = start_dev_server("--policy", str(policy_file), "--workers", "2")
    yield Server(dev.process, "127.0.0.1", dev.port, dev.ca_file, policy_file)
    dev.process.send_signal(signal.SIGTERM)
    dev.process.wait(timeout=30)


@pytest.mark.slow
def test_dev_server_answers_a_review_over_tls(server: Server) -> None:
    review = make_review({"metadata": {"name": "x"}}, resource="configmaps")
    connection = server.connection()
    answer = post_review(connection, review)
    assert answer["response"] == {"uid": review["request"]["uid"], "allowed": True}


@pytest.mark.slow
def test_connections_are_kept_alive_across_reviews(server: Server) -> None:
    connection = server.connection()
    post_review(connection, make_review({"metadata": {"name": "x"}}, resource="configmaps"))
    first = connection.sock
    post_review(connection, make_review({"metadata": {"name": "x"}}, resource="configmaps"))
    assert connection.sock is first


@pytest.mark.slow
def test_tls_below_1_2_is_refused(server: Server) -> None:
    old = server.context()
    with pytest.warns(DeprecationWarning, match="TLSv1_1"):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.warns(DeprecationWarning, match="TLSv1"):
        old.minimum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection((server.host, server.port)) as raw, \
            pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname=server.host)


@pytest.mark.slow
def test_tls_1_2_uses_a_forward_secret_aead_cipher_without_compression(server: Server) -> None:
    context = server.context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection((server.host, server.port)) as raw, \
            context.wrap_socket(raw, server_hostname=server.host) as tls:
        name, version, _ = tls.cipher()  # type: ignore[misc]
        assert version == "TLSv1.2"
        assert name.startswith("ECDHE")
        assert "GCM" in name or "CHACHA20" in name
        assert tls.compression() is None


@pytest.mark.slow
def test_a_bad_policy_edit_is_refused_while_the_old_policy_keeps_serving(server: Server) -> None:
    _, before = server.get("/readyz")
    good_digest = before.split()[2]
    server.replace_policy("builds: {maxActiveRuns: 0}\n")
    deadline = time.monotonic() + 15
    notes: set[str] = set()
    refused_in_a_row = 0
    # New connections land on either worker; twenty refusals in a row means both have seen it.
    while time.monotonic() < deadline and refused_in_a_row < 20:
        status, text = server.get("/readyz")
        assert status == 200
        assert text.split()[2] == good_digest
        if "refused" in text:
            notes.add(text)
        refused_in_a_row = refused_in_a_row + 1 if "refused" in text else 0
        time.sleep(0.05)
    assert refused_in_a_row >= 20
    assert any("builds.maxActiveRuns: must be an integer >= 1" in note for note in notes)


@pytest.mark.slow
def test_a_valid_edit_reaches_every_worker_within_seconds(server: Server) -> None:
    server.replace_policy("builds: {maxActiveRuns: 4}\n")
    deadline = time.monotonic() + 15
    seen_new = 0
    while time.monotonic() < deadline and seen_new < 20:
        # New connections land on either worker; twenty fresh answers in a row means both.
        _, text = server.get("/readyz")
        seen_new = seen_new + 1 if "refused" not in text and _digest_of(server) == text.split()[2] \
            else 0
        time.sleep(0.05)
    assert seen_new >= 20


def _digest_of(server: Server) -> str:
    import hashlib

    return hashlib.sha256(server.policy_file.read_bytes()).hexdigest()[:12]


@pytest.mark.slow
def test_metrics_are_summed_across_workers(server: Server) -> None:
    for _ in range(6):
        connection = server.connection()
        post_review(connection, make_review({"metadata": {"name": "x"}}, resource="configmaps"))
        connection.close()
    status, text = server.get("/metrics")
    assert status == 200
    counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("toolforge_admission_reviews_total{")
              and 'endpoint="validate-policy"' in line and 'decision="allowed"' in line]
    assert sum(counts) >= 6
    assert "toolforge_admission_certificate_not_after_timestamp_seconds" in text


def test_a_worker_freezes_what_it_loaded_so_full_collections_skip_it() -> None:
    options = ServerOptions(bind="127.0.0.1:0", cert_file=Path("c"), key_file=Path("k"),
                            policy_file=EXAMPLE_POLICY)
    gc.unfreeze()
    try:
        # What a worker has loaded when it starts serving (the app, the client, the policy) ...
        loaded = {"policy": parse_policy(EXAMPLE_POLICY.read_bytes())}
        gunicorn_settings(options)["post_worker_init"](None)
        # ... and what a review makes afterwards.
        made_by_a_review = [{"kind": "Pod", "metadata": {"name": "p"}}]
        # A collection walks the objects gc.get_objects() lists; frozen ones are not among them.
        walked = {id(o) for o in gc.get_objects()}
        assert id(loaded) not in walked
        assert id(loaded["policy"]) not in walked
        assert id(made_by_a_review) in walked
    finally:
        gc.unfreeze()
