"""A fault-injecting proxy between the suite and the real kube-apiserver.

The suite reaches the API server through `ApiProxy` (a kubeconfig with a plain-HTTP server URL
on 127.0.0.1), which forwards every request to the real API server over TLS as the admin. Told
to at run time, it is slow, unreachable, or answers chosen requests with an API server's error
Status itself. Only the suite's own calls (the active-run check) go through it: the API server
that calls the suite, the tools and the Tekton controller are untouched.

Faults are rules matched in order on the method and path, each for a number of requests or
until cleared:

- `status`: answer with a `Status` of that code (409, 429, 500, ...), forwarding nothing;
- `delay_request`: hold the request, then forward it: it reaches the API server late, after the
  client may have given up (a write that lands after its client timed out);
- `delay_response`: forward at once, hold the answer: the write is applied, but the client
  hears of it late or never.

`refuse()` makes the API server unreachable: the listener closes (connection refused) and every
open connection is cut; `accept()` listens again on the same port.

Every exchange is recorded (`exchanges`), with the client's port, so a test can tell which
worker process sent it (`tcp_connections`).

Below the proxy: a Suite behind it, registered for a test module, and creates timed as a tool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import pathlib
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import yaml

from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    MANIFESTS,
    ControlPlane,
    Suite,
    wait_for,
)

LEASE_WRITE = ("POST|PUT", r"^/apis/coordination\.k8s\.io/v1/namespaces/[^/]+/leases(/[^/?]+)?$")
LEASE_READ = ("GET", r"^/apis/coordination\.k8s\.io/v1/namespaces/[^/]+/leases/[^/?]+$")
RUNS_LIST = ("GET", r"^/apis/tekton\.dev/v1/pipelineruns$")
ANY = (".*", ".*")

REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable"}
MESSAGES = {
    409: "Operation cannot be fulfilled on leases.coordination.k8s.io: the object has been "
         "modified; please apply your changes to the latest version and try again",
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: injected by the e2e fault proxy",
    503: "The server is currently unable to handle the request",
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
              "proxy-connection", "te", "trailer", "upgrade"}


@dataclasses.dataclass
class Fault:
    """One rule: requests whose method and path match get `action`, `times` times (or always)."""

    match: tuple[str, str]
    action: str  # "status", "delay_request" or "delay_response"
    code: int = 0
    seconds: float = 0.0
    times: int | None = None

    def matches(self, method: str, path: str) -> bool:
        methods, pattern = self.match
        return (re.fullmatch(methods, method) is not None
                and re.search(pattern, path.split("?", 1)[0]) is not None)


@dataclasses.dataclass
class Exchange:
    """One request as the proxy saw it."""

    method: str
    path: str
    client_port: int
    body: bytes
    fault: str = ""
    held: bool = False
    upstream_status: int | None = None
    """What the real API server answered; None when it was never asked (or not yet)."""
    done: bool = False

    @property
    def lease(self) -> str:
        """The Lease a write is for (its body's metadata.name), or ""."""
        try:
            return str(json.loads(self.body)["metadata"]["name"])
        except (ValueError, KeyError, TypeError):
            return ""


class ApiProxy:
    """The proxy, listening on 127.0.0.1 until `stop()`."""

    def __init__(self, control_plane: ControlPlane) -> None:
        upstream = control_plane.server.removeprefix("https://")
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.context = ssl.create_default_context(cafile=str(control_plane.pki / "ca.crt"))
        self.context.load_cert_chain(control_plane.pki / "admin.crt",
                                     control_plane.pki / "admin.key")
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.exchanges: list[Exchange] = []
        self.connections: set[socket.socket] = set()
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.accept()

    # -- control

    def kubeconfig(self, path: pathlib.Path) -> pathlib.Path:
        """A kubeconfig that reaches the API server through this proxy (which authenticates)."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            "current-context": "proxy",
        }))
        return path

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def clear(self) -> None:
        """No more faults (requests already held finish as they were told)."""
        with self.lock:
            self.faults.clear()

    def refuse(self) -> None:
        """Unreachable: close the listener (connection refused) and cut every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def accept(self) -> None:
        """Listen (again, on the same port once it has one)."""
        if self._server is not None:
            return
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="api-proxy",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.clear()
        self.refuse()

    # -- what happened

    def seen(self, match: tuple[str, str], since: int = 0) -> list[Exchange]:
        probe = Fault(match, "")
        with self.lock:
            return [e for e in self.exchanges[since:] if probe.matches(e.method, e.path)]

    def mark(self) -> int:
        """A position in the record, for `seen(..., since=)`."""
        with self.lock:
            return len(self.exchanges)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until every exchange so far is finished (held requests included)."""
        wait_for("the proxy's exchanges to finish",
                 lambda: all(e.done for e in list(self.exchanges)), timeout)

    # -- used by the handler

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path) and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: ApiProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as with the real API server
    _upstream: http.client.HTTPSConnection | None = None

    def setup(self) -> None:
        super().setup()
        with self.owner.lock:
            self.owner.connections.add(self.connection)

    def finish(self) -> None:
        with self.owner.lock:
            self.owner.connections.discard(self.connection)
        if self._upstream is not None:
            self._upstream.close()
        with contextlib.suppress(OSError):  # the client is gone
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return  # the exchanges are the record

    def do_GET(self) -> None:
        self._exchange()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

    def _exchange(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        exchange = Exchange(self.command, self.path, self.client_address[1], body)
        with self.owner.lock:
            self.owner.exchanges.append(exchange)
        fault = self.owner._fault_for(self.command, self.path)
        try:
            if fault is not None:
                exchange.fault = f"{fault.action} {fault.code or fault.seconds}"
            if fault is not None and fault.action == "status":
                self._status(fault.code)
                return
            if fault is not None and fault.action == "delay_request":
                exchange.held = True
                time.sleep(fault.seconds)
                exchange.held = False
            status, headers, data = self._forward(body)
            exchange.upstream_status = status
            if fault is not None and fault.action == "delay_response":
                exchange.held = True
                time.sleep(fault.seconds)
                exchange.held = False
            self._reply(status, headers, data)
        except OSError:
            self.close_connection = True  # the client (or the API server) went away
        finally:
            exchange.done = True

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{self.owner.upstream[0]}:{self.owner.upstream[1]}"
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPSConnection(
                    *self.owner.upstream, context=self.owner.context, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body or None,
                                       headers=headers)
                response = self._upstream.getresponse()
                data = response.read()
                return response.status, response.getheaders(), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The API server closed an idle connection: once more on a new one.
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status)
        for key, value in headers:
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _status(self, code: int) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": MESSAGES.get(code, "injected fault"),
                  "reason": REASONS.get(code, "InternalError"), "code": code}
        headers = [("Content-Type", "application/json")]
        if code == 429:
            status["details"] = {"retryAfterSeconds": 1}
            headers.append(("Retry-After", "1"))
        self._reply(code, headers, json.dumps(status).encode())


# --- which process holds a connection ----------------------------------------------------------


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of each TCP socket of process `pid` (0: not connected)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes:
                found.append((int(local.rsplit(":", 1)[1], 16),
                              int(remote.rsplit(":", 1)[1], 16)))
    return found


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (gunicorn's workers, for the master's PID)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (in parentheses) may hold spaces: the PPID follows its last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


# --- a suite behind the proxy, and what tests do with it ---------------------------------------


@contextlib.contextmanager
def proxied_suite(control_plane: ControlPlane, session_suite: Suite, workdir: pathlib.Path,
                  **options: Any) -> Iterator[tuple[ApiProxy, Suite]]:
    """A Suite that reaches the API server through a new ApiProxy, registered meanwhile.

    The API server holds one set of the project's webhook configurations: this suite's replace
    the session suite's, which are registered again afterwards.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    proxy = ApiProxy(control_plane)
    running = Suite(control_plane, workdir, **options,
                    kubeconfig=proxy.kubeconfig(workdir / "proxy.kubeconfig"))
    try:
        running.start()
        running.register()
        yield proxy, running
    finally:
        running.stop()
        session_suite.register()
        proxy.stop()


def webhook_timeout(configuration: str = "webhook-pipelineruns.yaml") -> float:
    """The timeoutSeconds the API server gives the webhook, as the manifests set it."""
    document = yaml.safe_load((MANIFESTS / configuration).read_text())
    return float(document["webhooks"][0]["timeoutSeconds"])


def new_tool(control_plane: ControlPlane) -> tuple[str, pathlib.Path]:
    """A tool no other test uses: its name and kubeconfig (CN=<tool>, O=toolforge)."""
    tool = f"t{uuid.uuid4().hex[:8]}"
    control_plane.grant(tool, [BUILD_NAMESPACE])
    return tool, control_plane.user_kubeconfig(tool, ["toolforge"])


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the API server answered to a create."""

    name: str
    status: int
    """201 created; 403 denied by a webhook; 500 when calling the webhook failed."""
    message: str
    seconds: float

    @property
    def created(self) -> bool:
        return self.status == 201


def create(api_client: Any, body: dict[str, Any]) -> Outcome:
    """Create a Pod or a PipelineRun with the official client, timing the API server's answer."""
    from kubernetes import client

    metadata = body["metadata"]
    started = time.monotonic()
    try:
        if body["kind"] == "Pod":
            pods: Any = client.CoreV1Api(api_client)  # given the plain dict, as the CLI sends it
            pods.create_namespaced_pod(metadata["namespace"], body, _preload_content=False)
        else:
            client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                "tekton.dev", "v1", metadata["namespace"], "pipelineruns", body,
                _preload_content=False)
    except client.ApiException as error:
        seconds = time.monotonic() - started
        try:
            message = str(json.loads(error.body or "")["message"])
        except (TypeError, ValueError, KeyError):
            message = str(error.body)
        return Outcome(metadata["name"], int(error.status), message, seconds)
    return Outcome(metadata["name"], 201, "", time.monotonic() - started)


def tool_client(kubeconfig: pathlib.Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(kubeconfig))
