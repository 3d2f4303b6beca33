"""The worker's deadlines and bounds, against the real server (webhooks.worker).

One worker with short deadlines (2 s for the headers, 2 s for the body), so that each test can
wait for a deadline to pass. The tests wait on what the server does (a 408, a close, a metric),
not on time: each deadline has a partner that must not be affected by it (an idle connection
outlives a slow one that was opened with it).
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import EXAMPLE_POLICY, make_review
from tests.slow_clients import SLOW_BODY, SLOW_HEADER
from tests.unit.webhooks.dev_server import DevServer, free_port, metric, scrape, start_dev_server

# They start real servers (`serve`): `make test-unit` leaves them out.
pytestmark = pytest.mark.slow

WAIT = 30.0
"""Seconds any one condition may take to become true (it takes about two)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    directory = tmp_path_factory.mktemp("deadlines")
    policy = directory / "policy.yaml"
    policy.write_bytes(EXAMPLE_POLICY.read_bytes())
    dev = start_dev_server("--workers=1", "--threads=2", "--header-timeout=2",
                           "--body-timeout=2", "--max-connections=16", f"--policy={policy}",
                           log=directory / "server.log")
    yield dev
    dev.process.send_signal(signal.SIGTERM)
    dev.process.wait(timeout=30)


def tls(server: DevServer) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=server.ca_file)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a timeout fails the test)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def review_request() -> bytes:
    body = json.dumps(make_review({"metadata": {"name": "x"}}, resource="configmaps")).encode()
    return (b"POST /validate/policy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def answered(sock: ssl.SSLSocket) -> bool:
    """Send a review on `sock` and read the answer: True for an allowed review."""
    sock.sendall(review_request())
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status == 200 and json.loads(response.read())["response"]["allowed"] is True


def closed_for(server: DevServer, reason: str) -> float:
    context = ssl.create_default_context(cafile=server.ca_file)
    return metric(scrape(server.port, context), "toolforge_admission_connections_closed_total",
                  reason=reason)


def test_slow_headers_get_a_408_and_a_close_while_an_idle_connection_waits(
        server: DevServer) -> None:
    idle = tls(server)
    slow = tls(server)
    slow.sendall(SLOW_HEADER)
    answer = read_until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"Connection: close" in answer
    assert b"header timeout" in answer
    # The idle connection, opened before, is still served: idle is not slow.
    assert answered(idle)
    assert closed_for(server, "header_timeout") >= 1


def test_a_slow_body_gets_a_408_and_a_close(server: DevServer) -> None:
    idle = tls(server)
    slow = tls(server)
    slow.sendall(SLOW_BODY)
    answer = read_until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"body timeout" in answer
    assert answered(idle)
    assert closed_for(server, "body_timeout") >= 1


def test_a_connection_without_a_handshake_is_closed(server: DevServer) -> None:
    idle = tls(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as silent:
        assert read_until_closed(silent) == b""
    assert answered(idle)
    assert closed_for(server, "handshake_timeout") >= 1


def test_a_kept_alive_connection_waits_idle_between_requests(server: DevServer) -> None:
    kept = tls(server)
    assert answered(kept)
    # A slow client started after the answer is shed; the kept-alive connection is not.
    slow = tls(server)
    slow.sendall(SLOW_HEADER)
    assert read_until_closed(slow).startswith(b"HTTP/1.1 408")
    assert answered(kept)


def test_pipelined_requests_are_answered_in_order(server: DevServer) -> None:
    sock = tls(server)
    first = make_review({"metadata": {"name": "a"}}, resource="configmaps")
    second = make_review({"metadata": {"name": "b"}}, resource="configmaps")
    data = b""
    for review in (first, second):
        body = json.dumps(review).encode()
        data += (b"POST /validate/policy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data += b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sock.sendall(data)
    stream = read_until_closed(sock)
    answers = stream.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3, stream
    uids = [json.loads(answer.partition(b"\r\n\r\n")[2])["response"]["uid"]
            for answer in answers[:2]]
    assert uids == [first["request"]["uid"], second["request"]["uid"]]
    assert answers[2].startswith(b"200 OK")
    assert answers[2].endswith(b"ok\n")


def test_expect_100_continue_is_answered_before_the_body(server: DevServer) -> None:
    sock = tls(server)
    body = json.dumps(make_review({"metadata": {"name": "x"}}, resource="configmaps")).encode()
    sock.sendall(b"POST /validate/policy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nExpect: 100-continue\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    assert response.status == 200


@pytest.mark.parametrize(("request_head", "status"), [
    (b"POST /validate/pods HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
     411),
    (b"POST /validate/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{", 413),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
])
def test_requests_the_server_does_not_read_are_refused_and_closed(
        server: DevServer, request_head: bytes, status: int) -> None:
    sock = tls(server)
    sock.sendall(request_head)
    answer = read_until_closed(sock)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert b"Connection: close" in answer


def test_a_full_worker_closes_the_connection_idle_longest(server: DevServer) -> None:
    # --max-connections=16 for the one worker: the oldest idle one goes first.
    oldest = tls(server)
    assert answered(oldest)
    others = [tls(server) for _ in range(15)]
    for sock in others:
        assert answered(sock)
    newcomer = tls(server)  # the 17th
    assert answered(newcomer)
    assert read_until_closed(oldest) == b""
    assert all(answered(sock) for sock in others)
    assert closed_for(server, "evicted") >= 1
    for sock in [*others, newcomer]:
        sock.close()


def test_a_full_worker_closes_a_flood_before_a_kept_alive_connection(tmp_path: Path) -> None:
    # Its own server: connections left by other tests would take part in the eviction.
    dev = start_dev_server("--workers=1", "--max-connections=4", log=tmp_path / "server.log")
    try:
        # The API server's connection: it has served, then waits idle, longer than any other.
        kept = tls(dev)
        assert answered(kept)
        # A flood that never carries a request, started after it: idle and slow from the start.
        flood = [tls(dev) for _ in range(6)]
        flood[4].sendall(SLOW_HEADER)
        flood[5].sendall(SLOW_BODY)
        # The worker is full from the fourth on: the flood's oldest go, the kept one stays.
        assert read_until_closed(flood[0]) == b""
        assert read_until_closed(flood[1]) == b""
        assert answered(kept)
        assert closed_for(dev, "evicted") >= 3
    finally:
        dev.process.send_signal(signal.SIGTERM)
        dev.process.wait(timeout=30)


def test_the_idle_and_write_deadlines_are_set_on_serve(tmp_path: Path) -> None:
    dev = start_dev_server("--workers=1", "--idle-timeout=1", "--write-timeout=1",
                           log=tmp_path / "server.log")
    try:
        # Idle: a kept-alive connection with no request after its answer is closed, silently.
        kept = tls(dev)
        assert answered(kept)
        assert read_until_closed(kept) == b""
        assert closed_for(dev, "idle_timeout") >= 1
        # Write: a client that asks and never reads. Its answers fill the socket buffers on
        # both sides (twice the most the kernel gives a send buffer, to be sure); what the
        # server could not write is given a second, then closed.
        context = ssl.create_default_context(cafile=dev.ca_file)
        most_buffered = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        answers = 2 * most_buffered // len(scrape(dev.port, context)) + 100
        raw = socket.socket()
        raw.settimeout(WAIT)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", dev.port))
        reader = context.wrap_socket(raw, server_hostname="127.0.0.1")
        reader.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * answers)
        deadline = time.monotonic() + WAIT
        while closed_for(dev, "write_timeout") < 1:
            assert time.monotonic() < deadline, "the server kept writing to a client not reading"
            time.sleep(0.2)
        reader.close()
    finally:
        dev.process.send_signal(signal.SIGTERM)
        dev.process.wait(timeout=30)


def server_has_read(port: int, *, connections: int) -> bool:
    """The server's side of exactly `connections` connections on `port` is established, with
    nothing left unread in its receive queue (/proc/net/tcp: local port, state 01, tx:rx)."""
    held = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                held.append(int(fields[4].split(":")[1], 16))
    return len(held) == connections and not any(held)


def test_stalled_clients_do_not_hold_up_a_stop(tmp_path: Path) -> None:
    # Deadlines far off: only the stop closes these connections.
    dev = start_dev_server("--workers=1", "--header-timeout=60", "--body-timeout=60",
                           log=tmp_path / "server.log")
    try:
        # First, so that it is accepted before the TLS ones finish their handshakes.
        silent = socket.create_connection(("127.0.0.1", dev.port))
        idle = tls(dev)
        assert answered(idle)
        stalled = [tls(dev) for _ in range(4)]
        for sock in stalled[:2]:
            sock.sendall(SLOW_BODY)
        for sock in stalled[2:]:
            sock.sendall(SLOW_HEADER)
        # The server holds all six and has read what each sent. Read from the kernel's table, not
        # from /metrics: a scrape's own connection would be one more, in whatever phase it is in
        # when the stop comes.
        deadline = time.monotonic() + WAIT
        while not server_has_read(dev.port, connections=6):
            assert time.monotonic() < deadline, "the server does not hold the connections"
            time.sleep(0.2)
        dev.process.send_signal(signal.SIGTERM)
        # Within gunicorn's graceful timeout (25 s): the worker closes them after 2 s.
        dev.process.wait(timeout=25)
        for plain in [idle, silent]:
            assert read_until_closed(plain) == b""
        for sock in stalled:
            answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
            assert b"the server is stopping" in answer
    finally:
        dev.process.kill()
    log = (tmp_path / "server.log").read_text()
    stopped = [json.loads(line) for line in log.splitlines()
               if line.startswith("{") and '"worker stopped"' in line]
    assert len(stopped) == 1, log
    assert stopped[0]["open_at_stop"] == {"idle": 1, "body": 2, "head": 2, "handshake": 1}
    assert stopped[0]["closed"] == {"stopped": 6}
    assert stopped[0]["abandoned_in_progress"] == 0
    assert "SIGKILL" not in log
    assert "Worker exiting" in log


SERVE_WITH_A_SMALL_BUDGET = """
import dataclasses, os, sys, tempfile
from pathlib import Path
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from webhooks.cli import _dev_certificate
from webhooks.server import ServerOptions, WebhookServer
from webhooks.worker import Limits
bind = sys.argv[1]
certs = _dev_certificate(bind)
print(f"CA certificate: {certs / 'ca.crt'}", flush=True)
WebhookServer(ServerOptions(
    bind=bind, cert_file=certs / "tls.crt", key_file=certs / "tls.key",
    policy_file=Path(sys.argv[2]), workers=1, cluster=False, state_dir=Path(tempfile.mkdtemp()),
    limits=Limits(buffered_bytes=100_000))).run()
"""


def test_bodies_being_read_share_a_budget_and_the_slowest_makes_room(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "server.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_WITH_A_SMALL_BUDGET, f"127.0.0.1:{port}",
             str(EXAMPLE_POLICY)], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        ca_file = next(line.split(": ", 1)[1].strip() for line in process.stdout
                       if line.startswith("CA certificate: "))
        server = DevServer(process, port, ca_file)
        wait_for_readiness(server)
        idle = tls(server)
        first = tls(server)
        first.sendall(b"POST /validate/policy HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"
                      b"Content-Type: application/json\r\n\r\n{")
        assert answered(idle)  # the first body is under way (the server has read its head)
        second = tls(server)
        second.sendall(b"POST /validate/policy HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"
                       b"Content-Type: application/json\r\n\r\n{")
        # 2 x 60,000 bytes do not fit in 100,000: the body under way longest is closed.
        answer = read_until_closed(first)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert b"(evicted)" in answer
        # The second goes on: its body is read and answered (a 400: it is not a review).
        second.sendall(b" " * 59_999)
        assert read_status(second) == 400
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def server_read_all(port: int, client: socket.socket) -> bool:
    """Everything `client` sent has reached the server, and the server has read it (the
    client's send queue and the server's receive queue of the connection are empty)."""
    mine = client.getsockname()[1]
    queues = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
            transmit, receive = (int(queue, 16) for queue in fields[4].split(":"))
            if (local, remote) == (mine, port):
                queues["client"] = transmit
            elif (local, remote) == (port, mine):
                queues["server"] = receive
    return queues == {"client": 0, "server": 0}


def lock_waiters(lock_file: Path) -> int:
    """How many processes wait for the flock on `lock_file` (/proc/locks: `->` lines)."""
    inode = f":{lock_file.stat().st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if " -> FLOCK " in line and inode in line)


def large_request() -> bytes:
    # Over the worker's LARGE_BODY; not JSON, so the answer is a quick 400 once it is parsed.
    return (b"POST /validate/pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300000\r\n\r\n" + b" " * 300_000)


def test_large_bodies_are_parsed_one_at_a_time_and_leave_a_thread_free(tmp_path: Path) -> None:
    dev = start_dev_server("--workers=1", "--threads=2", log=tmp_path / "server.log")
    try:
        worker = int(Path(f"/proc/{dev.process.pid}/task/{dev.process.pid}/children")
                     .read_text().split()[0])
        lock_file = next(Path(os.readlink(link)) for link in Path(f"/proc/{worker}/fd").iterdir()
                         if os.readlink(link).endswith("/large-body.lock"))
        # The test holds the pod's lock, as another worker parsing a large body would.
        held = os.open(lock_file, os.O_RDWR)
        fcntl.flock(held, fcntl.LOCK_EX)
        first, second, small = tls(dev), tls(dev), tls(dev)
        first.sendall(large_request())
        deadline = time.monotonic() + WAIT
        while lock_waiters(lock_file) < 1:
            assert time.monotonic() < deadline, "no thread waits for the pod's large-body lock"
            time.sleep(0.1)
        # A second large body waits in the worker, not in a thread: the other thread answers
        # a review of ordinary size at once.
        second.sendall(large_request())
        deadline = time.monotonic() + WAIT
        while not server_read_all(dev.port, second):
            assert time.monotonic() < deadline, "the server does not read the second body"
            time.sleep(0.1)
        assert answered(small)
        assert lock_waiters(lock_file) == 1
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
        assert read_status(first) == 400
        assert read_status(second) == 400
    finally:
        dev.process.send_signal(signal.SIGTERM)
        dev.process.wait(timeout=30)


def wait_for_readiness(server: DevServer) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = tls(server)
        except OSError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
            continue
        sock.close()
        return


def read_status(sock: ssl.SSLSocket) -> int:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status
