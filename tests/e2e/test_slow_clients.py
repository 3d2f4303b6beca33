"""Slow clients against the suite while tools create pods through the real API server.

Issue 14's end-to-end proof: 50 clients create pods (each create goes through the suite's pods
webhook, `failurePolicy: Fail`, 3 s timeout) while 256 hostile connections are held on the
suite's ports and opened again whenever the suite closes one. The suite runs as in production
(2 workers x 2 threads, mutual TLS), so a stranger without a certificate can hold a review-port
connection only before its TLS handshake (`silent`: until the handshake deadline); the status
port, which needs no certificate, gets connections that idle, and that send headers or a body
slowly. Every create must get the suite's answer: not one `failed calling webhook`.
"""

from __future__ import annotations

import itertools
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.cluster import ControlPlane, Suite, wait_for
from tests.e2e.objects import TOOL_IMAGE
from tests.e2e.traffic import (
    WEBHOOK_FAILURE,
    Client,
    admin,
    delete_all,
    pods_path,
    tool_client,
    wait_empty,
)
from tests.slow_clients import SlowClients

CLIENTS = 50
CREATES = 400
LABEL = "e2e-slow-clients"
NAMESPACE = "tool-mytool"
REVIEW_PORT_ATTACK = {"silent": 128}
STATUS_PORT_ATTACK = {"idle": 64, "slow-header": 32, "slow-body": 32}


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {LABEL: "yes"}},
            "spec": {"containers": [{"name": "app", "image": TOOL_IMAGE}],
                     "restartPolicy": "Never"}}


@pytest.fixture
def tool(control_plane: ControlPlane) -> Iterator[Client]:
    client = tool_client(control_plane, "mytool")
    yield client
    owner = admin(control_plane)
    delete_all(owner, pods_path(NAMESPACE), f"{LABEL}=yes")
    wait_empty(owner, pods_path(NAMESPACE), f"{LABEL}=yes")


def test_pods_are_admitted_while_slow_clients_hold_connections(
        control_plane: ControlPlane, live_suite: Suite, tool: Client) -> None:
    context = ssl.create_default_context(cafile=str(live_suite.cert_dir / "ca.crt"))
    names = itertools.count()
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    def create(_: int) -> None:
        with lock:
            name = f"slow-clients-{next(names)}"
        response = tool.create(pods_path(NAMESPACE), pod(name))
        with lock:
            outcomes[str(response.status)] += 1
            if response.status != 201 or WEBHOOK_FAILURE in response.message:
                failures.append(f"{name}: {response.status} {response.message[:300]}")

    shed_before = live_suite.metric("toolforge_admission_connections_closed_total")
    with SlowClients("127.0.0.1", live_suite.port, context, REVIEW_PORT_ATTACK,
                     reconnect=True) as on_reviews, \
            SlowClients("127.0.0.1", live_suite.status_port, context, STATUS_PORT_ATTACK,
                        reconnect=True) as on_status, \
            ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(create, range(CREATES)))
        held = on_reviews.open_now() + on_status.open_now()
        # The suite sheds slow clients at their deadlines (5 s for a handshake or headers).
        wait_for("the suite to close a slow client", lambda: live_suite.metric(
            "toolforge_admission_connections_closed_total") > shed_before, 30)
    assert failures == []
    assert outcomes == {"201": CREATES}
    # Every create went through the suite (its log has each review), and the attack held: its
    # connections were open when the creates were done.
    reviewed = {entry["name"] for entry in live_suite.reviews(endpoint="validate-pods")
                if str(entry.get("name", "")).startswith("slow-clients-")}
    assert len(reviewed) == CREATES
    assert sum(held.values()) >= 200, held


def test_the_suite_closes_none_of_the_api_servers_connections(
        control_plane: ControlPlane, live_suite: Suite, tool: Client) -> None:
    # The end-to-end benchmark saw connections to the suite closed during pod creates (216 in
    # 6,000); each costs the API server a new mutual-TLS handshake. They are the API server's
    # own (client-go keeps at most 25 idle connections per host and closes the others): the
    # suite itself must close none of a client's connections that keeps to the protocol.
    closed = live_suite.metric("toolforge_admission_connections_closed_total")
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = Counter(pool.map(
            lambda i: tool.create(pods_path(NAMESPACE), pod(f"kept-alive-{i}")).status,
            range(CREATES)))
    assert statuses == {201: CREATES}
    assert live_suite.metric("toolforge_admission_connections_closed_total") == closed
