"""Connections that never send a request must not take the threads that answer reviews.

The API server's HTTP client dials spare connections in bursts (TLS handshake done, then idle
for up to 90 s), and a port scanner or a stuck load balancer may connect without even a
ClientHello. Stock gthread gives each new connection a thread that waits for its first request;
a few such connections then hold every thread of a worker and reviews time out.
"""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.builders import EXAMPLE_POLICY, make_review
from tests.unit.webhooks.dev_server import Server, post_review, start_dev_server

THREADS = 2
PROMPT = 5.0
"""Seconds a review may take while idle connections are open (it takes milliseconds)."""

pytestmark = pytest.mark.slow  # every test here starts a server


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker with two threads, so that three idle connections would take them all."""
    server = start_server(tmp_path_factory.mktemp("policy"))
    yield server
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)


def start_server(directory: Path) -> Server:
    policy_file = directory / "policy.yaml"
    policy_file.write_bytes(EXAMPLE_POLICY.read_bytes())
    dev = start_dev_server("--policy", str(policy_file), "--workers", "1",
                           "--threads", str(THREADS), log=directory / "server.log")
    return Server(dev.process, "127.0.0.1", dev.port, dev.ca_file, policy_file)


def idle_tls(server: Server) -> ssl.SSLSocket:
    """A connection as the API server leaves a spare one: handshake done, no request."""
    raw = socket.create_connection((server.host, server.port), timeout=PROMPT)
    return server.context().wrap_socket(raw, server_hostname=server.host)


def review_answered(server: Server) -> bool:
    connection = server.connection()
    connection.timeout = PROMPT
    review = make_review({"metadata": {"name": "x"}}, resource="configmaps")
    try:
        answer = post_review(connection, review)
    finally:
        connection.close()
    return answer["response"] == {"uid": review["request"]["uid"], "allowed": True}


def test_idle_connections_leave_the_threads_to_reviews(small_server: Server) -> None:
    silent = [socket.create_connection((small_server.host, small_server.port))
              for _ in range(THREADS + 1)]
    handshaken = [idle_tls(small_server) for _ in range(THREADS + 1)]
    try:
        started = time.monotonic()
        assert review_answered(small_server)
        assert review_answered(small_server)
        assert time.monotonic() - started < PROMPT
        # A spare connection is served when the client finally uses it.
        spare = small_server.connection()
        spare.sock = handshaken[0]
        review = make_review({"metadata": {"name": "x"}}, resource="configmaps")
        assert post_review(spare, review)["response"]["allowed"] is True  # type: ignore[index]
    finally:
        for sock in silent + handshaken:
            sock.close()


def test_a_client_that_stops_mid_handshake_holds_no_thread(small_server: Server) -> None:
    # Half a ClientHello: the handshake can neither finish nor fail until the client goes.
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = small_server.context().wrap_bio(*hello, server_hostname=small_server.host)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    record = hello[1].read()
    stalled = [socket.create_connection((small_server.host, small_server.port))
               for _ in range(THREADS + 1)]
    try:
        for sock in stalled:
            sock.sendall(record[:len(record) // 2])
        assert review_answered(small_server)
    finally:
        for sock in stalled:
            sock.close()


def test_many_kept_alive_connections_take_turns_on_two_threads(small_server: Server) -> None:
    def reviews(_: int) -> int:
        connection = small_server.connection()
        try:
            return sum(review_on(connection) for _ in range(20))
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(reviews, range(8))) == 8 * 20


def review_on(connection: http.client.HTTPSConnection) -> bool:
    review = make_review({"metadata": {"name": "x"}}, resource="configmaps")
    return post_review(connection, review)["response"]["allowed"] is True  # type: ignore[index]


def test_idle_connections_do_not_hold_up_a_stop(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        idle = [idle_tls(server), socket.create_connection((server.host, server.port))]
        connection = server.connection()
        assert review_on(connection)  # and kept alive, idle too
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        # gunicorn's graceful timeout is 25 s; idle connections are closed after a short linger.
        assert time.monotonic() - started < 10
    finally:
        server.process.kill()
        for sock in idle:
            sock.close()
