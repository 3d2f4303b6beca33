"""The gunicorn worker: a thread gets a request only once all of it is in memory.

Every webhook of the suite fails closed and sits on the path of every tool pod, so no client may
hold the threads that answer reviews. gunicorn's gthread worker gives a connection a thread while
its request is read: eight clients sending a body slowly, or thirty sending headers slowly, held
every thread and stopped admission for the whole cluster. Here the worker's main loop does all
the reading, without blocking, under deadlines in the spirit of Go's `http.Server`:

- the TLS handshake must end within `header_seconds` of the accept (Go: the handshake timeout);
- a connection with no request started waits up to `idle_seconds` (longer than the API server's
  90 s idle timeout, so that it, not the server, closes an idle connection: a server-side close
  races with a reuse, and the API server does not retry an admission POST). Unlike Go, a new
  connection waits like a kept-alive one: the API server's client dials spare connections that it
  may first use much later;
- from the first byte of a request, its request line and headers must arrive within
  `header_seconds` (Go's ReadHeaderTimeout), and then its body within `body_seconds`;
- an answer that cannot be written at once is finished by the main loop within `write_seconds`.

A client that misses a deadline is answered 408 where it is still reading (408 needs a request
started) and closed. With mutual TLS the client certificate is checked right after the handshake,
before a byte of the request is read: a client without one is closed at once. Each worker holds at
most `max_connections`; a new connection beyond that closes one that has never carried a request
(a flood's: silent, idle from the start, or slow with its first request), the one opened longest
ago first, and only when there are none of those a kept-alive connection that has served
requests (the API server's), the one idle longest first (a client that is reading a request
counts as idle only once all idle ones are gone). A flood thus sheds its own connections, costs
neither descriptors nor memory without bound, and the API server's kept-alive connections, whose
close could race a reuse and fail a review, are the last to go. The bodies being read share
`buffered_bytes`, and when they would exceed it the slowest of them is closed.

Parsing JSON takes up to 35 bytes of memory per byte of body (a 3 MiB body of nested empty
objects, about 100 MB; some 135 MB more for the worker in all), so a pod that parsed several
such bodies at once would exceed its memory limit. A request whose body is over `LARGE_BODY` is
handed to a thread only when no other such request is in a thread of the worker (it waits in the
main loop, in order; smaller ones pass it), and that thread takes the pod's `large_body_lock`
(a file lock the workers share) before it answers: one large body is parsed at a time in the
whole pod, and the other threads stay free for the reviews of ordinary size.

A thread is handed a complete request (`Handover`: only the thread that gets it is woken), runs the
WSGI application, writes the answer without blocking and hands the connection back through a queue;
only the main loop touches the poller and closes connections. The thread wakes the main loop (a
byte in a pipe) only when the loop has something to do at once: an answer to finish, a connection
to close, a large body waiting for the one just answered. A kept-alive connection whose answer is
out stays in the poller, and the client's next request wakes the loop, which then takes the
connection back first. The request is parsed by webhooks.http1, a small strict HTTP/1.1 reader for
what the API server, probes and Prometheus send, rather than by gunicorn's parser: the request is
in memory already, and gunicorn's parser (a socket reader, a message object, an environ builder and
a response writer: a quarter of a review's time in the profile of bench/HISTORY.md) would only read
it again. gunicorn remains the process manager: the master, forking and replacing workers, signals,
the heartbeat (`base.Worker`; tests/unit/webhooks/test_gunicorn_contract.py fails if a release
changes what this relies on). Nothing of gunicorn is patched.

On SIGTERM the worker stops accepting, answers what it has read with `Connection: close`, lets
connections that have a request under way finish it for `STOP_LINGER` seconds at most, closes
the rest, and logs one line saying what it closed (`worker stopped`), well within gunicorn's
graceful timeout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import queue
import resource
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from gunicorn.workers.base import Worker

from webhooks import http1
from webhooks.review import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

HANDSHAKE, IDLE, HEAD, BODY, BUSY, WRITE, LINGER = range(7)
PHASES = ("handshake", "idle", "head", "body", "busy", "write", "linger")
TIMED_OUT = {HANDSHAKE: "handshake_timeout", IDLE: "idle_timeout", HEAD: "header_timeout",
             BODY: "body_timeout", WRITE: "write_timeout", LINGER: "closed"}
STOP_LINGER = 2.0
"""Seconds a stopping worker keeps connections that are not being answered: a request already
on its way on an idle one is answered (with `Connection: close`), a stalled one is closed."""
LINGER_SECONDS = 1.0
"""After an answer that closes the connection: how long unread input is read and discarded, so
that the close does not reset the connection before the client has read the answer."""
STATUS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RECV_BYTES = 256 * 1024
LARGE_BODY = 256 * 1024
"""Requests with a body larger than this are handed to the threads one at a time (a review of a
Tekton build pod, among the largest the API server sends, is about 45 KB)."""
ACCEPTS_PER_EVENT = 64


@dataclass(frozen=True)
class Limits:
    """Deadlines (seconds) and bounds of one worker; see the module docstring."""

    header_seconds: float = 5.0
    body_seconds: float = 10.0
    idle_seconds: float = 120.0
    write_seconds: float = 10.0
    max_connections: int = 512
    buffered_bytes: int = 32 * 1024 * 1024
    max_body: int = MAX_BODY_BYTES


class Served(Protocol):
    """What the worker needs from the application gunicorn gives it (webhooks.server)."""

    limits: Limits
    client_certificates: bool
    status_port: int | None
    large_body_lock: str
    """A file the workers of a pod lock in turn to parse a large body."""

    def tls_context(self) -> ssl.SSLContext:
        ...


class PeerCertificate:
    """The client certificate of a connection, read once after the handshake; the application
    reads it from environ['gunicorn.socket'] as it would from the socket."""

    __slots__ = ("certificate",)

    def __init__(self, certificate: dict[str, Any] | None) -> None:
        self.certificate = certificate

    def getpeercert(self) -> dict[str, Any] | None:
        return self.certificate


NO_CERTIFICATE = PeerCertificate(None)


class Connection:
    """One client connection and where it stands."""

    __slots__ = (
        "address",
        "answer",
        "body",
        "body_start",
        "broken",
        "buffer",
        "close_after",
        "deadline",
        "done_at",
        "environ",
        "events",
        "handed_back",
        "head",
        "parked",
        "peer",
        "phase",
        "reserved",
        "scanned",
        "served_at",
        "sock",
        "status_only",
    )

    def __init__(self, sock: socket.socket, address: Any, status_only: bool) -> None:
        self.sock: socket.socket = sock
        self.address = address
        self.status_only = status_only
        self.phase = HANDSHAKE
        self.deadline = 0.0
        self.events = 0
        self.buffer = bytearray()
        self.scanned = 0
        self.head: http1.RequestHead | None = None
        self.body_start = 0
        self.reserved = 0
        self.body = b""
        self.answer = b""
        self.close_after = False
        self.broken = False
        self.peer = NO_CERTIFICATE
        self.environ: dict[str, Any] = {}
        self.served_at = 0.0
        self.done_at = 0.0
        self.handed_back = False
        self.parked = False


class AdmissionWorker(Worker):  # type: ignore[misc]
    """gunicorn worker: reads requests in its main loop, answers them in a pool of threads."""

    def init_process(self) -> None:
        # After the fork, before the application loads: metrics files are per process.
        from webhooks import metrics

        self.metrics = metrics
        self.served: Served = self.app
        self.limits = self.served.limits
        _raise_descriptor_limit()
        self.poller = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.wake_pending = False
        self.handback = threading.Lock()
        self.returned: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.connections: set[Connection] = set()
        # Connections by phase, each in the order of its deadline (a phase's timeout is the
        # same for all, so the order they entered it): the oldest first, for expiry and eviction.
        self.timed: dict[int, OrderedDict[Connection, None]] = {
            phase: OrderedDict() for phase in TIMED_OUT}
        # Connections that have not yet had a whole request read, in the order they were
        # accepted: the first to close when the worker is full.
        self.unserved: OrderedDict[Connection, None] = OrderedDict()
        self.buffered = 0
        self.in_flight = 0
        # One request with a large body in a thread at most; the others wait here, in order.
        self.large_in_thread = False
        self.large_waiting: deque[Connection] = deque()
        # Opened after the fork: each worker has its own open file, so the lock excludes them.
        self.large_lock = os.open(self.served.large_body_lock, os.O_RDWR | os.O_CREAT, 0o600)
        self.busy_seconds = 0.0
        self.stop_deadline = float("inf")
        self.date = http1.HttpDate()
        self.ready = Handover()
        self.threads = [threading.Thread(target=self._serve_requests, name=f"pool-{n}",
                                         daemon=True) for n in range(self.cfg.threads)]
        try:
            # Once per worker before serving: the certificate gauges are true from the start.
            self.served.tls_context()
        except (OSError, ssl.SSLError) as error:
            logger.error("no usable certificate yet", extra={"fields": {"error": str(error)}})
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        # A signal wakes the main loop at once (SIGTERM: stop accepting now).
        signal.set_wakeup_fd(self.wake_write)

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.poller.register(self.wake_read, selectors.EVENT_READ, self._woken)
        for listener in self.sockets:
            listener.setblocking(False)
            status_only = self.served.status_port is not None and \
                listener.getsockname()[1] == self.served.status_port
            self.poller.register(listener, selectors.EVENT_READ,
                                 lambda sock, only=status_only: self._accept(sock, only))
        for thread in self.threads:
            thread.start()
        self.metrics.worker_started(len(self.threads))
        housekeeping = 0.0
        while self.alive:
            self._turn()
            now = time.monotonic()
            if now >= housekeeping:  # once a second, not once per event: each is a syscall
                self.notify()  # the heartbeat the master watches (it allows 15 s)
                self._housekeeping()
                housekeeping = now + 1.0
                if self.ppid != os.getppid():
                    logger.info("the gunicorn master is gone: stopping")
                    break
        self._stop()

    def _turn(self) -> None:
        timeout = 1.0
        for connections in self.timed.values():
            if connections:
                first = next(iter(connections))
                timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
        try:
            events = self.poller.select(timeout)
        except InterruptedError:
            events = []
        for key, _ in events:
            try:
                key.data(key.fileobj)
            except Exception:  # the main loop must outlive anything one connection does
                logger.exception("unexpected error in the worker's main loop")
                connection = getattr(key.data, "connection", None)
                if isinstance(connection, Connection):
                    self._close(connection, "error")
        self._take_back()
        self._expire(time.monotonic())

    def _housekeeping(self) -> None:
        self.metrics.worker_state(
            connections=len(self.connections), busy=min(self.in_flight, len(self.threads)),
            busy_seconds=self.busy_seconds)
        self.busy_seconds = 0.0

    # -- accepting -----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, status_only: bool) -> None:
        # Connections already answered are idle before these: eviction closes the one idle
        # longest, so they must be in the idle order first.
        self._take_back()
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                client, address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors despite the cap: close the longest idle, try later.
                    logger.warning("cannot accept: %s", error.strerror)
                    self._evict()
                    return
                raise
            if len(self.connections) >= self.limits.max_connections and not self._evict():
                self.metrics.connection_closed("full")
                client.close()
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = self.served.tls_context().wrap_socket(
                    client, server_side=True, do_handshake_on_connect=False)
            except ssl.SSLError as error:  # no usable certificate: the log said why
                logger.error("cannot set up TLS for a connection: %s", error)
                self.metrics.connection_closed("error")
                client.close()
                continue
            except Exception:
                logger.exception("cannot set up TLS for a connection")
                self.metrics.connection_closed("error")
                client.close()
                continue
            connection = Connection(tls, address, status_only)
            self.connections.add(connection)
            self.unserved[connection] = None
            self._enter(connection, HANDSHAKE, self.limits.header_seconds)
            self._handshake(connection)

    def _evict(self) -> bool:
        """Close the connection opened longest ago of those that never carried a request, else
        the one idle longest (else the one reading a request longest); False when every
        connection is being answered."""
        if self.unserved:
            self._close(next(iter(self.unserved)), "evicted")
            return True
        self._take_back()  # answered ones are idle
        for phase in (IDLE, LINGER, HANDSHAKE, HEAD, BODY, WRITE):
            if self.timed[phase]:
                self._close(next(iter(self.timed[phase])), "evicted")
                return True
        return False

    # -- phases ---------------------------------------------------------------------------------

    def _enter(self, connection: Connection, phase: int, seconds: float) -> None:
        if connection.phase in self.timed:
            self.timed[connection.phase].pop(connection, None)
        connection.phase = phase
        if phase in self.timed:
            connection.deadline = min(time.monotonic() + seconds, self.stop_deadline)
            self.timed[phase][connection] = None

    def _watch(self, connection: Connection, events: int) -> None:
        if events == connection.events:
            return
        if connection.events == 0:
            self.poller.register(connection.sock, events, _Callback(self._ready, connection))
        elif events == 0:
            self.poller.unregister(connection.sock)
        else:
            self.poller.modify(connection.sock, events, _Callback(self._ready, connection))
        connection.events = events

    def _ready(self, connection: Connection) -> None:
        phase = connection.phase
        if phase == HANDSHAKE:
            self._handshake(connection)
        elif phase in (IDLE, HEAD, BODY):
            self._read(connection)
        elif phase == WRITE:
            self._flush(connection)
        elif phase == LINGER:
            self._discard(connection)
        else:
            # Busy: a thread has it, or has handed it back without waking this loop (the client's
            # next request is what made it readable).
            with self.handback:
                if not connection.handed_back:
                    # Still being answered, and the client sent more (a pipelined request, or
                    # its close): the poller looks again once the answer is out, and the thread
                    # wakes this loop for it.
                    self._watch(connection, 0)
                    connection.parked = True
                    return
            self._take_back()
            if connection.phase == IDLE:
                self._read(connection)

    def _handshake(self, connection: Connection) -> None:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(connection, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(connection, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as error:
            logger.debug("TLS handshake failed: %s", error)
            self._close(connection, "handshake_failed")
            return
        certificate = sock.getpeercert()
        if certificate:
            connection.peer = PeerCertificate(certificate)
        elif self.served.client_certificates and not connection.status_only:
            # Mutual TLS: not the API server. Closed before a byte of a request is read.
            self._close(connection, "no_client_certificate")
            return
        self._take_back()  # as in _accept: the answered are idle longer than this one
        self._idle(connection)

    def _idle(self, connection: Connection) -> None:
        self._enter(connection, IDLE, self.limits.idle_seconds)
        if connection.buffer or connection.sock.pending():  # type: ignore[attr-defined]
            self._read(connection)  # already here: the poller would not say so
        else:
            self._watch(connection, selectors.EVENT_READ)

    def _read(self, connection: Connection) -> None:
        sock = connection.sock
        while True:
            if connection.buffer and self._progress(connection):
                return
            try:
                data = sock.recv(RECV_BYTES)
            except (ssl.SSLWantReadError, BlockingIOError):
                self._watch(connection, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._watch(connection, selectors.EVENT_WRITE)
                return
            except (ssl.SSLError, OSError):
                self._close(connection, "error")
                return
            if not data:
                self._close(connection, "")  # the client's close: not counted
                return
            if connection.phase == IDLE:
                self._enter(connection, HEAD, self.limits.header_seconds)
            connection.buffer += data

    def _progress(self, connection: Connection) -> bool:
        """Take in what has arrived; True when the connection left the reading phases."""
        buffer = connection.buffer
        if connection.head is None:
            if connection.phase == IDLE:
                self._enter(connection, HEAD, self.limits.header_seconds)
            end = buffer.find(http1.HEAD_END, max(0, connection.scanned - 3))
            if end < 0:
                connection.scanned = len(buffer)
                if len(buffer) > http1.MAX_HEAD_BYTES:
                    self._refuse(connection, 431, "the request line and headers exceed "
                                                  f"{http1.MAX_HEAD_BYTES} bytes")
                    return True
                return False
            try:
                head = http1.parse_head(bytes(buffer[:end]), self.limits.max_body)
                if connection.status_only and head.path not in STATUS_PATHS:
                    raise http1.RequestError(404, "no such path on the status port: it "
                                                  "serves /healthz, /readyz and /metrics only "
                                                  "(GET); admission reviews go to the review "
                                                  "port")
            except http1.RequestError as error:
                self._refuse(connection, error.status, str(error))
                return True
            connection.head = head
            connection.body_start = end + len(http1.HEAD_END)
            if not self._reserve(connection, head.content_length):
                return True
            self._enter(connection, BODY, self.limits.body_seconds)
            if head.expect_continue and head.content_length and \
                    len(buffer) == connection.body_start:
                _send_quietly(connection.sock, http1.CONTINUE)
        head = connection.head
        end = connection.body_start + head.content_length
        if len(buffer) < end:
            return False
        connection.body = bytes(buffer[connection.body_start:end])
        del buffer[:end]  # what follows is the next, pipelined, request
        connection.scanned = 0
        self._dispatch(connection)
        return True

    def _reserve(self, connection: Connection, length: int) -> bool:
        """Room for a body among the bodies being read: the slowest ones are closed for it."""
        if self.buffered + length > self.limits.buffered_bytes:
            self._take_back()  # answered requests give their room back
        while self.buffered + length > self.limits.buffered_bytes:
            slowest = next((c for c in self.timed[BODY] if c is not connection), None)
            if slowest is None:
                self._refuse(connection, 503, "too many large requests at once: try again")
                return False
            self._time_out(slowest, "evicted")
        connection.reserved = length
        self.buffered += length
        return True

    def _dispatch(self, connection: Connection) -> None:
        self.unserved.pop(connection, None)
        self._enter(connection, BUSY, 0)
        self.in_flight += 1
        if len(connection.body) > LARGE_BODY:
            if self.large_in_thread:
                self.large_waiting.append(connection)
                return
            self.large_in_thread = True
        self.ready.put(connection)

    def _take_back(self) -> None:
        """Connections whose answer a thread has written (or tried to)."""
        # Only this loop takes from the queue, so one that is not empty has an item to get (an
        # Empty raised at the end of every drain cost more than the check).
        while not self.returned.empty():
            connection = self.returned.get_nowait()
            connection.handed_back = connection.parked = False
            self.in_flight -= 1
            self.busy_seconds += connection.done_at - connection.served_at
            self.buffered -= connection.reserved
            connection.reserved = 0
            if len(connection.body) > LARGE_BODY:
                self._next_large()
            connection.head = None
            connection.body = b""
            if connection.sock.fileno() < 0:
                continue  # closed by a stop that could not wait for it
            if connection.broken:
                self._close(connection, "error")
            elif connection.answer:
                self._enter(connection, WRITE, self.limits.write_seconds)
                self._flush(connection)
            else:
                self._answered(connection)

    def _next_large(self) -> None:
        """A request with a large body is out of the threads: hand them the next one."""
        if self.large_waiting:
            self.ready.put(self.large_waiting.popleft())
        else:
            self.large_in_thread = False

    def _answered(self, connection: Connection) -> None:
        if connection.close_after:
            self._linger(connection)
        else:
            self._idle(connection)

    def _flush(self, connection: Connection) -> None:
        try:
            sent = connection.sock.send(connection.answer)
        except (ssl.SSLWantWriteError, BlockingIOError):
            self._watch(connection, selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            self._watch(connection, selectors.EVENT_READ)
            return
        except (ssl.SSLError, OSError):
            self._close(connection, "error")
            return
        connection.answer = connection.answer[sent:]
        if connection.answer:
            self._watch(connection, selectors.EVENT_WRITE)
        else:
            self._answered(connection)

    def _refuse(self, connection: Connection, status: int, reason: str) -> None:
        """Answer a request the application will not see, then close."""
        logger.debug("request refused", extra={"fields": {
            "status": status, "reason": reason, "peer": _peer(connection)}})
        self.metrics.connection_closed(f"refused_{status}")
        _send_quietly(connection.sock, http1.refusal(status, reason, date=self.date.now()))
        self._linger(connection)

    def _linger(self, connection: Connection) -> None:
        """Close after an answer: stop writing, read and discard what the client still sends
        (a close with unread input would reset the connection, and the answer with it)."""
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection, "")
            return
        connection.buffer = bytearray()
        self._enter(connection, LINGER, LINGER_SECONDS)
        self._discard(connection)

    def _discard(self, connection: Connection) -> None:
        for _ in range(16):
            try:
                data = connection.sock.recv(RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._watch(connection, selectors.EVENT_READ)
                return
            except OSError:
                break
            if not data:
                break
        self._close(connection, "")

    def _expire(self, now: float) -> None:
        for phase, connections in self.timed.items():
            while connections:
                connection = next(iter(connections))
                if connection.deadline > now:
                    break
                self._time_out(connection, TIMED_OUT[phase])

    def _time_out(self, connection: Connection, reason: str) -> None:
        if connection.phase == LINGER:
            self._close(connection, "")
            return
        if not self.alive and reason != "evicted":
            reason = "stopped"
        if connection.phase not in (HEAD, BODY):
            self._close(connection, reason)
            return
        # The client is sending a request: tell it why it is closed, if it still reads.
        self.metrics.connection_closed(reason)
        self.buffered -= connection.reserved
        connection.reserved = 0
        answer = http1.refusal(503, "the server is stopping", date=self.date.now()) \
            if reason == "stopped" else http1.refusal(
                408, f"the request was not received in time ({reason.replace('_', ' ')})",
                date=self.date.now())
        _send_quietly(connection.sock, answer)
        self._linger(connection)

    def _close(self, connection: Connection, reason: str) -> None:
        if reason:
            self.metrics.connection_closed(reason)
        if connection.phase in self.timed:
            self.timed[connection.phase].pop(connection, None)
        if connection.phase in (HEAD, BODY):
            self.buffered -= connection.reserved
            connection.reserved = 0
        self.connections.discard(connection)
        self.unserved.pop(connection, None)
        if connection.events:
            with contextlib.suppress(KeyError, ValueError):
                self.poller.unregister(connection.sock)
            connection.events = 0
        connection.sock.close()

    # -- waking up ------------------------------------------------------------------------------

    def _woken(self, _fileobj: object) -> None:
        # Drain first, then clear: a thread that finds the flag set after this has its
        # connection in the queue before `_take_back` reads it; one that finds it clear writes
        # a byte that wakes the loop again. (Clearing first would let the drain swallow a byte
        # written after the clear, leaving the flag set with nothing in the pipe.)
        # One read drains it: the flag lets a byte in only while none is pending, and signals
        # add one each; a full read means there may be more.
        with contextlib.suppress(BlockingIOError):
            while len(os.read(self.wake_read, 4096)) == 4096:
                pass
        self.wake_pending = False

    def _wake(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                os.write(self.wake_write, b"\0")

    # -- the threads ----------------------------------------------------------------------------

    def _serve_requests(self) -> None:
        inbox: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        while (connection := self.ready.take(inbox)) is not None:
            connection.served_at = time.monotonic()
            try:
                if len(connection.body) > LARGE_BODY:
                    with _locked(self.large_lock):
                        self._answer(connection)
                else:
                    self._answer(connection)
            except Exception:  # a thread must outlive any one request
                logger.exception("unexpected error in a worker thread")
                connection.broken = True
            connection.done_at = time.monotonic()
            # The loop must come at once to finish an answer, to close, or to hand the threads
            # the next large body waiting for this one; a kept-alive connection whose answer is
            # out, still in the poller, waits for the client's next request, which wakes the loop
            # itself: no wake-up (a pipe write and a thread switch) for it.
            urgent = (connection.broken or bool(connection.answer) or connection.close_after
                      or len(connection.body) > LARGE_BODY or not self.alive)
            with self.handback:
                connection.handed_back = True
                self.returned.put(connection)
                urgent = urgent or connection.parked or \
                    connection.events != selectors.EVENT_READ
            if urgent:
                self._wake()

    def _answer(self, connection: Connection) -> None:
        """In a pool thread: run the application, write its answer as far as the socket takes
        it without blocking; the main loop writes the rest."""
        head = connection.head
        assert head is not None
        environ = self._environ(connection, head)
        close = not head.keep_alive or not self.alive
        reply: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info and reply:
                raise exc_info[1].with_traceback(exc_info[2])
            reply[:] = [status, headers]
            return _no_write

        try:
            result: Iterable[bytes] = self.wsgi(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                closing = getattr(result, "close", None)
                if closing is not None:
                    closing()
            status, headers = reply
            answer = http1.response(status, headers, body, date=self.date.now(), close=close,
                                    head_only=head.method == "HEAD")
        except Exception:
            logger.exception("error handling request", extra={"fields": {
                "method": head.method, "path": head.path}})
            answer = http1.refusal(500, "internal error", date=self.date.now())
            close = True
        connection.close_after = close
        try:
            sent = connection.sock.send(answer)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            sent = 0
        except OSError:
            connection.broken = True
            return
        connection.answer = answer[sent:]

    def _environ(self, connection: Connection, head: http1.RequestHead) -> dict[str, Any]:
        environ = connection.environ
        if not environ:
            host, port = connection.sock.getsockname()[:2]
            environ.update({
                "SCRIPT_NAME": "", "SERVER_NAME": str(host), "SERVER_PORT": str(port),
                "REMOTE_ADDR": str(connection.address[0]),
                "REMOTE_PORT": str(connection.address[1]),
                "wsgi.version": (1, 0), "wsgi.url_scheme": "https", "wsgi.errors": sys.stderr,
                "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
                "gunicorn.socket": connection.peer})
        request = dict(environ)
        request["REQUEST_METHOD"] = head.method
        request["PATH_INFO"] = head.path
        request["QUERY_STRING"] = head.query
        request["RAW_URI"] = head.target
        request["SERVER_PROTOCOL"] = head.version
        request["wsgi.input"] = io.BytesIO(connection.body)
        for name, value in head.headers:
            key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
            request[key] = f"{request[key]},{value}" if key in request else value
        return request

    # -- stopping -------------------------------------------------------------------------------

    def _stop(self) -> None:
        started = time.monotonic()
        self._take_back()
        for listener in self.sockets:
            self.poller.unregister(listener)
            listener.close()
        # What is being read or idle gets STOP_LINGER more seconds at most (an idle connection
        # may carry a request already on its way); what a thread answers is waited for.
        self.stop_deadline = started + STOP_LINGER
        for connections in self.timed.values():
            for connection in connections:
                connection.deadline = min(connection.deadline, self.stop_deadline)
        open_at_stop = dict(Counter(PHASES[connection.phase] for connection in self.connections))
        closed_before = dict(self.metrics.closed_counts())
        # Leave a margin before the master's SIGKILL at the graceful timeout.
        limit = started + max(1.0, self.cfg.graceful_timeout - 2.0)
        while self.connections and time.monotonic() < limit:
            self.notify()
            self._turn()
        abandoned = len(self.connections)
        for connection in list(self.connections):
            self._close(connection, "stopped")
        for _ in self.threads:
            self.ready.put(None)
        closed = {reason: count - closed_before.get(reason, 0)
                  for reason, count in self.metrics.closed_counts().items()
                  if count > closed_before.get(reason, 0)}
        logger.info("worker stopped", extra={"fields": {
            "seconds": round(time.monotonic() - started, 3), "open_at_stop": open_at_stop,
            "closed": closed,
            "abandoned_in_progress": min(abandoned, self.in_flight)}})
        self._housekeeping()


class Handover:
    """Requests from the main loop to the threads: a request goes to one waiting thread, and
    wakes only that one.

    A queue.SimpleQueue shared by the threads wakes a waiting thread on a put, and that thread,
    as it takes the request, wakes the next waiting one, which finds the queue empty and sleeps
    again: with two threads, every review woke both, a thread switch and a GIL hand-over for
    nothing (bench/HISTORY.md, entry 31). Here each waiting thread waits on its own inbox, and a
    request that finds no thread waiting waits in order for the first that is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for a few list operations, never while waiting
        self._waiting: deque[Connection | None] = deque()
        self._idle: list[queue.SimpleQueue[Connection | None]] = []

    def put(self, item: Connection | None) -> None:
        """Hand a request (None: stop) to a thread, the one that waited last if any waits."""
        with self._lock:
            if not self._idle:
                self._waiting.append(item)
                return
            inbox = self._idle.pop()  # the last to wait: its stack and caches are warm
        inbox.put(item)

    def take(self, inbox: queue.SimpleQueue[Connection | None]) -> Connection | None:
        """In a thread: the next request, waiting on `inbox` (the thread's own) for one."""
        with self._lock:
            if self._waiting:
                return self._waiting.popleft()
            self._idle.append(inbox)
        return inbox.get()


class _Callback:
    """A poller callback that knows its connection (for the main loop's error path)."""

    __slots__ = ("connection", "function")

    def __init__(self, function: Callable[[Connection], None], connection: Connection) -> None:
        self.function = function
        self.connection = connection

    def __call__(self, _fileobj: object) -> None:
        self.function(self.connection)


@contextlib.contextmanager
def _locked(descriptor: int) -> Iterator[None]:
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)


def _no_write(_data: bytes) -> None:
    raise RuntimeError("the WSGI write() callable is not supported: return the body")


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """A short write that is not worth waiting for (a refusal, a 100 Continue)."""
    with contextlib.suppress(OSError):
        sock.send(data)


def _peer(connection: Connection) -> str:
    address = connection.address
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _raise_descriptor_limit() -> None:
    """As Go does at start: the soft limit of open files up to the hard one (connections are
    capped by Limits.max_connections, not by a low default)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

