"""`toolforge-admission serve --dev` as a subprocess: the real server, for tests over TLS."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DevServer:
    process: subprocess.Popen[str]
    port: int
    ca_file: str
    """The CA of the certificate that `--dev` made (it prints the file's path on stdout)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_dev_server(*args: str, log: Path | None = None, timeout: float = 20) -> DevServer:
    """Start `serve --dev` on a free loopback port with `args`; return once /readyz is 200 (on
    the `--status-bind` port when there is one).

    Without `log`, the server's log shares stdout with the CA line: for servers that log little.
    """
    port = free_port()
    command = [sys.executable, "-m", "webhooks.cli", "serve", "--dev",
               f"--bind=127.0.0.1:{port}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log is None:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env)
    else:
        with log.open("w") as stream:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stream, text=True,
                                       env=env)
    assert process.stdout is not None
    ca_file = next((found.group(1) for line in process.stdout
                    if (found := re.search(r"CA certificate: (\S+)", line))), "")
    assert ca_file, "serve --dev did not print its CA"
    context = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + timeout
    status = next((int(arg.rpartition(":")[2]) for arg in args
                   if arg.startswith("--status-bind=")), port)
    while not is_ready(status, context):
        assert time.monotonic() < deadline, f"serve --dev was not ready in {timeout:g} s"
        time.sleep(0.1)
    return DevServer(process, port, ca_file)


def is_ready(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server on this local port answers /readyz with 200."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@dataclass
class Server:
    """A started server, with its policy file, as the tests talk to it."""

    process: subprocess.Popen[str]
    host: str
    port: int
    ca_file: str
    policy_file: Path

    def context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        for name, version in versions.items():
            setattr(context, name, version)
        return context

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context(), timeout=10)

    def replace_policy(self, text: str) -> None:
        """Swap the file in one step, as the kubelet does for a ConfigMap volume."""
        staged = self.policy_file.with_suffix(".new")
        staged.write_text(text)
        os.replace(staged, self.policy_file)

    def get(self, path: str) -> tuple[int, str]:
        connection = self.connection()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()


def post_review(connection: http.client.HTTPSConnection, review: dict[str, object],
                path: str = "/validate/policy") -> dict[str, object]:
    """POST a review on a connection; the AdmissionReview answered (HTTP 200 asserted)."""
    connection.request("POST", path, body=json.dumps(review),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int, context: ssl.SSLContext) -> str:
    """The /metrics text of the server on `port`."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()
