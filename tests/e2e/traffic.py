"""Many small requests to the real API server, for the soak test and bench/e2e.py.

kubectl costs a Go process start per request (tens of ms of CPU), which on two cores would
measure kubectl, not admission. `Client` instead keeps one HTTP/1.1 keep-alive connection per
thread and authenticates like a kubeconfig's user (client certificate, or a bearer token), so a
request costs the client a few hundred microseconds and its latency is the API server's.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import ssl
import statistics
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.e2e.cluster import BUILD_NAMESPACE, BUILDS_ROLE, ControlPlane, json_lines

BUILDS_API = "builds-api"
"""The builds API's ServiceAccount in the build namespace: a system user of the test policy
(`tools.systemUsers`), so it may start runs for any tool, as in Toolforge."""

WEBHOOK_FAILURE = "failed calling webhook"


@dataclass
class Response:
    status: int
    raw: bytes
    seconds: float

    @property
    def body(self) -> dict[str, Any]:
        """The answer as JSON, decoded only when asked for (most callers need the status)."""
        try:
            parsed = json.loads(self.raw) if self.raw else {}
        except ValueError:
            return {"message": self.raw.decode(errors="replace")}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


class Client:
    """One identity; one keep-alive connection per calling thread."""

    def __init__(self, server: str, ca: pathlib.Path, *, cert: pathlib.Path | None = None,
                 key: pathlib.Path | None = None, token: str | None = None,
                 timeout: float = 30) -> None:
        url = urllib.parse.urlsplit(server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.context = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            self.context.load_cert_chain(cert, key)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def from_kubeconfig(cls, path: pathlib.Path, timeout: float = 30) -> Client:
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        cert, key = user.get("client-certificate"), user.get("client-key")
        return cls(cluster["server"], pathlib.Path(cluster["certificate-authority"]),
                   cert=pathlib.Path(cert) if cert else None,
                   key=pathlib.Path(key) if key else None, token=user.get("token"),
                   timeout=timeout)

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                     timeout=self.timeout)
            self._local.connection = connection
        return connection

    def request(self, method: str, path: str, body: Mapping[str, Any] | bytes | None = None,
                ) -> Response:
        """One request (a body as JSON, or already encoded); the seconds from sending it to
        having read the whole answer."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            connection = self._connection()
            started = time.perf_counter()
            try:
                connection.request(method, path, body=data, headers=self.headers)
                response = connection.getresponse()
                raw = response.read()
            except (ConnectionError, OSError):
                # The server closed an idle kept-alive connection: one retry on a new one. A
                # second failure is a real error for the caller.
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            return Response(response.status, raw, time.perf_counter() - started)
        raise AssertionError("unreachable")

    def create(self, path: str, body: Mapping[str, Any] | bytes, *, dry_run: bool = False,
               ) -> Response:
        return self.request("POST", path + ("?dryRun=All" if dry_run else ""), body)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def runs_path(namespace: str = BUILD_NAMESPACE) -> str:
    return f"/apis/tekton.dev/v1/namespaces/{namespace}/pipelineruns"


def admin(cp: ControlPlane, timeout: float = 30) -> Client:
    return Client.from_kubeconfig(cp.kubeconfig, timeout)


def wait_authorized(client: Client, verb: str, resource: str, namespace: str,
                    group: str = "", timeout: float = 30) -> None:
    """Until RBAC lets the client do it: the API server authorises from an informer's cache, so
    a RoleBinding just made may not be in force yet, and a refused create never reaches the
    suite."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "resource": resource,
                                              "group": group, "namespace": namespace}}}
    deadline = time.monotonic() + timeout
    while True:
        response = client.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                 review)
        if response.status == 201 and response.body.get("status", {}).get("allowed"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"RBAC does not allow {verb} {resource} in {namespace} after "
                               f"{timeout}s: {response.status} {response.body}")
        time.sleep(0.2)


def tool_client(cp: ControlPlane, tool: str) -> Client:
    """A tool's account (CN=<tool>, O=toolforge) with RBAC in tool-<tool> and the build
    namespace; its namespace must exist."""
    client = Client.from_kubeconfig(cp.tool_kubeconfig(tool))
    wait_authorized(client, "create", "pods", f"tool-{tool}")
    return client


def builds_api_client(cp: ControlPlane) -> Client:
    """The builds API's ServiceAccount, with a real token and the workloads role in the build
    namespace."""
    cp.apply([{"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": BUILDS_API, "namespace": BUILD_NAMESPACE}}])
    # A grant in no namespace only makes sure the ClusterRole of the build namespace exists.
    cp.grant(BUILDS_API, [])
    cp.apply([{
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": f"e2e-{BUILDS_API}", "namespace": BUILD_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": BUILDS_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": BUILDS_API,
                      "namespace": BUILD_NAMESPACE}],
    }])
    token = cp.kubectl("-n", BUILD_NAMESPACE, "create", "token", BUILDS_API,
                       "--duration=12h").stdout.strip()
    client = Client(cp.server, cp.pki / "ca.crt", token=token)
    wait_authorized(client, "create", "pipelineruns", BUILD_NAMESPACE, "tekton.dev")
    return client


def delete_all(client: Client, path: str, label_selector: str | None = None) -> Response:
    """Delete a collection at once (background propagation; pods without a node go at once)."""
    query = {"propagationPolicy": "Background"}
    if label_selector:
        query["labelSelector"] = label_selector
    return client.request("DELETE", f"{path}?{urllib.parse.urlencode(query)}")


def count(client: Client, path: str, label_selector: str | None = None) -> int:
    query = {"labelSelector": label_selector} if label_selector else {}
    response = client.request("GET", f"{path}?{urllib.parse.urlencode(query)}")
    assert response.status == 200, response.body
    return len(response.body.get("items") or [])


def wait_empty(client: Client, path: str, label_selector: str | None = None,
               timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while count(client, path, label_selector):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} ({label_selector}) not empty after {timeout}s")
        time.sleep(0.2)


def wait_webhooks(client: Client, namespace: str, *, registered: bool,
                  timeout: float = 60) -> None:
    """Until the API server's view of the webhook configurations agrees with `registered`: a
    dry-run pod from a registry no policy allows is refused by the suite, or admitted."""
    probe = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "e2e-webhook-probe", "namespace": namespace},
             "spec": {"containers": [{"name": "c", "image": "docker.io/library/nginx:1"}]}}
    deadline = time.monotonic() + timeout
    while True:
        response = client.create(pods_path(namespace), probe, dry_run=True)
        refused = response.status == 403 and "denied the request" in response.message
        if refused == registered and response.status in (201, 403):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"webhooks registered={registered} not in effect after "
                               f"{timeout}s: {response.status} {response.message}")
        time.sleep(0.2)


# --- the suite's processes and log ---------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) in MB, 0 when the process is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of the processes (all their threads), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


@dataclass
class LogWindow:
    """The JSON lines a log file gained since this window was opened."""

    path: pathlib.Path
    start: int = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            return handle.read().decode(errors="replace")

    def entries(self) -> list[dict[str, Any]]:
        return json_lines(self.text())

    def reviews(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e.get("message") == "review" and "endpoint" in e]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, ys).slope
