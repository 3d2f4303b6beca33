"""Hostile clients that hold connections to the webhook: for the slow-client tests (unit and
end to end) and the benchmark's hostile cell (bench/run.py).

Each kind is what any pod that reaches the port can do with a socket:

- `silent`: a TCP connection that sends nothing, not even a TLS ClientHello;
- `idle`: a TLS connection that sends no request (as the API server leaves a spare one);
- `slow-header`: part of a request line and headers, then nothing;
- `slow-body`: a review's headers (`Content-Length: 100`) and one byte of the body, then nothing.

With `reconnect`, a connection the server closes is opened again (the attack keeps its force
however the server sheds it), from one background thread.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from collections import Counter

KINDS = ("silent", "idle", "slow-header", "slow-body")
MIXED = {"idle": 96, "slow-header": 80, "slow-body": 80}
"""256 connections, idle, slow-header and slow-body mixed: the attack the end-to-end test of a
server without mutual TLS (tests/e2e/test_slow_clients.py) makes on its review port."""
SLOW_HEADER = b"POST /validate/pods HTTP/1.1\r\nHost: toolforge-admission\r\nContent-"
SLOW_BODY = (b"POST /validate/pods HTTP/1.1\r\nHost: toolforge-admission\r\n"
             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")


class SlowClients:
    """Connections of the given kinds to host:port, opened by `start`, closed by `stop`."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext,
                 counts: dict[str, int], *, reconnect: bool = False) -> None:
        self.address = (host, port)
        self.context = context
        self.counts = counts
        self.reconnect = reconnect
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="slow-clients", daemon=True)
        self.closed_by_server: Counter[str] = Counter()
        self.failed_opens = 0

    def __enter__(self) -> SlowClients:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        for kind, count in self.counts.items():
            for _ in range(count):
                self._open(kind)
        self.thread.start()

    def open_now(self) -> Counter[str]:
        """How many connections of each kind are open (as far as this side knows)."""
        with self.lock:
            return Counter(key.data for key in self.selector.get_map().values())

    def connections(self) -> set[object]:
        """The connections open now (as far as this side knows), to follow them one by one."""
        with self.lock:
            return {key.fileobj for key in self.selector.get_map().values()}

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        with self.lock:
            for key in list(self.selector.get_map().values()):
                self.selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]

    def _open(self, kind: str) -> None:
        try:
            raw = socket.create_connection(self.address, timeout=10)
            sock: socket.socket = raw
            if kind != "silent":
                sock = self.context.wrap_socket(raw, server_hostname=self.address[0])
                if kind == "slow-header":
                    sock.sendall(SLOW_HEADER)
                elif kind == "slow-body":
                    sock.sendall(SLOW_BODY)
        except OSError:  # refused at once (mutual TLS without a certificate): counts as closed
            self.failed_opens += 1
            return
        sock.setblocking(False)
        with self.lock:
            self.selector.register(sock, selectors.EVENT_READ, kind)

    def _watch(self) -> None:
        """Notice the server's closes (and its 408s); open again with `reconnect`."""
        while not self.stopping.is_set():
            with self.lock:
                events = self.selector.select(0) if self.selector.get_map() else []
            if not events:
                self.stopping.wait(0.05)
                continue
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if _still_open(sock):
                    continue
                with self.lock:
                    self.selector.unregister(sock)
                sock.close()
                self.closed_by_server[key.data] += 1
                if self.reconnect and not self.stopping.is_set():
                    self._open(key.data)


def _still_open(sock: socket.socket) -> bool:
    """Read what the server sent (a 408, an alert); False once it has closed."""
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False
    return False

