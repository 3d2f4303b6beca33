"""gunicorn, configured for an admission webhook.

- gthread workers: the API server keeps HTTPS connections alive and reuses them, which sync
  workers cannot do (they would pay a TLS handshake per review).
- keep-alive longer than the API server's 90 s idle timeout, so the API server always closes an
  idle connection first; a server-side close races with a reuse and fails a review.
- on SIGTERM gunicorn stops accepting, finishes in-flight reviews within the graceful timeout and
  answers them with `Connection: close`, so the API server moves to the other replicas.
- a connection gets a thread only when its request arrives (`AdmissionWorker`).
"""

from __future__ import annotations

import email.utils
import errno
import gc
import logging
import os
import queue
import selectors
import ssl
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from gunicorn import http, sock, util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

KEEPALIVE_SECONDS = 120
GRACEFUL_SECONDS = 25


@dataclass(frozen=True)
class ServerOptions:
    bind: str
    cert_file: Path
    key_file: Path
    policy_file: Path
    workers: int = 2
    threads: int = 2
    client_ca_file: Path | None = None
    """When set, admission reviews only from clients with a certificate from this CA (the API
    server); probes and /metrics stay open."""
    client_names: tuple[str, ...] = ()
    """With a client CA: the client certificate's CN or a DNS name must be one of these."""
    log_level: str = "info"
    state_dir: Path = Path("/tmp")  # noqa: S108 - the pod's own emptyDir in production
    """Files the workers of this server share (the last good policy, and the last good serving
    certificate with its key: in production a memory-backed emptyDir)."""
    cluster: bool = True
    """Use the cluster (in-cluster config or KUBECONFIG) for the active-run check; without it
    the check is skipped with a warning, as in `--dev` mode with no KUBECONFIG."""


class WebhookServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running `webhooks.app:create_app` with the options above."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.options).items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        # Runs in each worker after the fork: the Kubernetes client's connection pool must not
        # be shared between processes.
        from webhooks import runs, slots
        from webhooks.app import create_app

        cluster = self.options.cluster
        return create_app({
            "POLICY_FILE": str(self.options.policy_file),
            "POLICY_LAST_GOOD_FILE": self.options.state_dir / "last-good-policy.yaml",
            "ACTIVE_RUNS": slots.from_environment() if cluster else None,
            "BUILD_RUNS": runs.from_environment() if cluster else None,
            "CLIENT_CERTIFICATES": self.options.client_ca_file is not None,
            "CLIENT_NAMES": self.options.client_names,
        })


class AdmissionWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, except that a new connection waits for its first request in the poller.

    Stock gthread hands a new connection to a pool thread, which does the TLS handshake and then
    blocks until the first request comes. The API server's client dials spare connections in
    bursts and may leave one idle for 90 s, and a client can also connect and send nothing, not
    even a ClientHello; each such connection held a thread, and a few of them left a worker no
    thread for reviews. Here the main thread does the handshake without blocking, as far as the
    bytes that have arrived allow, and the connection then waits in the poller, as gthread's
    kept-alive connections do, until request bytes are readable; only then does a thread take it.
    The wait is bounded by the keep-alive timeout, and a stopping worker closes such connections
    after the same short linger as its idle kept-alive ones. It builds on gthread's own pending
    connections (gunicorn 27.0, pinned in setup.cfg).

    Per request, stock gthread also wraps the connection in a Future, and the thread hands it
    back to the main thread through a wake-up pipe to be put in the poller again: a pipe write,
    a main-thread wake-up and two GIL hand-offs for every review. Here the threads take
    connections from a plain queue and put a kept-alive connection back in the poller
    themselves (epoll watches a descriptor registered from any thread at once); only closing a
    connection, which touches the worker's connection count, goes through the main thread.
    """

    def init_process(self) -> None:
        util.http_date = _HttpDate()  # this process's responses only
        super().init_process()

    def get_thread_pool(self) -> _ThreadPool:
        return _ThreadPool(self.cfg.threads)

    def enqueue_req(self, conn: TConn) -> None:
        self.tpool.submit(self._serve, conn)

    def _serve(self, conn: TConn) -> None:
        """In a pool thread: answer the request, then hand the connection on."""
        keepalive = self.handle(conn)
        while keepalive is True and self.alive and conn.parser.unreader.buf.getvalue():
            keepalive = self.handle(conn)  # the next request was read ahead with this one's body
        if keepalive is not True or not self.alive:
            self.method_queue.defer(self._finish, conn, keepalive)
            return
        conn.sock.setblocking(False)
        conn.set_timeout()
        # In the deque before the poller can see it: the readable callback removes it from there.
        self.keepalived_conns.append(conn)
        if not self.alive:  # the stop began meanwhile, maybe after its linger was applied
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_client_socket_readable, conn))

    def _finish(self, conn: TConn, keepalive: object) -> None:
        done: futures.Future[object] = futures.Future()
        done.set_result(keepalive)
        self.finish_request(conn, done)

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())  # non-blocking
        if not self.cfg.is_ssl:
            self._wait_for_request(conn)
            return
        try:
            conn.sock = sock.ssl_context(self.cfg).wrap_socket(
                conn.sock, server_side=True, do_handshake_on_connect=False,
                suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
        except Exception:  # the main loop must survive anything one connection does
            self.log.exception("cannot set up TLS for a connection")
            self._drop(conn)
            return
        self._shake_hands(conn)

    def _shake_hands(self, conn: TConn, _fileobj: object = None) -> None:
        if _fileobj is not None:
            self._unpark(conn)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._park(conn, selectors.EVENT_READ, self._shake_hands)
        except ssl.SSLWantWriteError:
            self._park(conn, selectors.EVENT_WRITE, self._shake_hands)
        except (ssl.SSLError, OSError) as error:
            self.log.debug("TLS handshake failed: %s", error)
            self._drop(conn)
        except Exception:
            self.log.exception("TLS handshake failed")
            self._drop(conn)
        else:
            self._wait_for_request(conn)

    def _wait_for_request(self, conn: TConn) -> None:
        # With the parser in place, TConn.init in the thread neither wraps nor shakes hands.
        # The context offers only HTTP/1.1 (webhooks.tls), so there is no HTTP/2 to set up.
        conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            conn.data_ready = True  # decrypted already: the socket will not turn readable
            self.enqueue_req(conn)
        else:
            self._park(conn, selectors.EVENT_READ, self.on_pending_socket_readable)

    def _park(self, conn: TConn, events: int, callback: Callable[..., None]) -> None:
        """Let the poller watch the connection, until the keep-alive timeout at most."""
        conn.timeout = time.monotonic() + self.cfg.keepalive
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, events, partial(callback, conn))

    def _unpark(self, conn: TConn) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)

    def _drop(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    def _cap_keepalive(self, deadline: float) -> None:
        # Called when the worker stops: a connection that has sent no request yet can be closed
        # as safely as an idle kept-alive one, and must not hold the stop for the whole grace.
        # A copy of the deques, which pool threads may append to meanwhile.
        for conn in [*self.keepalived_conns, *self.pending_conns]:
            conn.timeout = min(conn.timeout, deadline)


class _ThreadPool:
    """The worker's threads, fed connections through one queue.

    A thread needs nothing but the connection; concurrent.futures' Future, work item and
    callbacks cost several microseconds per review for nothing here.
    """

    def __init__(self, size: int) -> None:
        self.queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=f"pool-{n}") for n in range(size)]
        for thread in self.threads:
            thread.start()

    def submit(self, function: Callable[..., None], *args: Any) -> None:
        self.queue.put((function, args))

    def shutdown(self, wait: bool = True) -> None:
        """Each thread ends after its current work; with `wait`, wait for that."""
        for _ in self.threads:
            self.queue.put(None)
        if wait:
            for thread in self.threads:
                thread.join()

    def _run(self) -> None:
        while (work := self.queue.get()) is not None:
            function, args = work
            try:
                function(*args)
            except Exception:  # a thread must outlive any one request
                logging.getLogger(__name__).exception("unexpected error in a worker thread")


class _HttpDate:
    """gunicorn's `util.http_date`, formatted once a second instead of for every response."""

    def __init__(self) -> None:
        self.formatted = (0, "")

    def __call__(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return email.utils.formatdate(timestamp, usegmt=True)
        now = int(time.time())
        second, text = self.formatted  # one tuple, so threads never see a torn pair
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            self.formatted = (now, text)
        return text


def gunicorn_settings(options: ServerOptions) -> dict[str, Any]:
    """The gunicorn settings for these options."""
    serving = _serving_certificate(options)

    def ssl_context(_config: Any, _default: Callable[[], Any]) -> Any:
        return serving().context()

    return {
        "bind": [options.bind],
        "worker_class": AdmissionWorker,
        "workers": options.workers,
        "threads": options.threads,
        "keepalive": KEEPALIVE_SECONDS,
        "graceful_timeout": GRACEFUL_SECONDS,
        "timeout": 30,
        "certfile": str(options.cert_file),
        "keyfile": str(options.key_file),
        "ssl_context": ssl_context,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": options.log_level,
        # Right after the fork, before the worker loads the app: loading it already logs (the
        # policy loaded, or refused and why), and post_worker_init would come too late for that.
        "post_fork": _post_fork,
        "post_worker_init": _post_worker_init,
        "child_exit": _child_exit,
        "proc_name": "toolforge-admission",
        # gunicorn's runtime control socket is an unauthenticated local admin interface that
        # also needs a writable home; the webhook has no use for it.
        "control_socket_disable": True,
    }


def _serving_certificate(options: ServerOptions) -> Callable[[], Any]:
    # One ServingCertificate per worker process, created after the fork: the check interval and
    # the last good context are per process, like the connections they serve.
    cache: dict[int, Any] = {}

    def get() -> Any:
        pid = os.getpid()
        if pid not in cache:
            from webhooks.tls import ServingCertificate

            cache.clear()
            cache[pid] = ServingCertificate(
                options.cert_file, options.key_file,
                client_ca_file=str(options.client_ca_file) if options.client_ca_file else None,
                last_good=options.state_dir / "last-good-certificate.pem")
        return cache[pid]

    return get


def _post_fork(_server: Any, _worker: Any) -> None:
    from webhooks import logs

    logs.configure(os.environ.get("TOOLFORGE_ADMISSION_LOG_LEVEL", "INFO"))


def _post_worker_init(_worker: Any) -> None:
    # The app, the Kubernetes client and the policy are loaded and live as long as the worker:
    # tens of thousands of objects that every full collection would walk again. A review makes
    # thousands of short-lived ones (a Tekton pod is 45 KB of JSON), so full collections come
    # often enough that walking those took up to 20 ms, a pause for every review in the worker.
    # Frozen, they are left out of collections.
    gc.collect()
    gc.freeze()


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
