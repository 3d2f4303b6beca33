"""Mutual TLS with the real API server: only it may send the suite admission reviews.

The harness runs the API server with an AdmissionConfiguration whose kubeConfigFile gives it a
client certificate for webhooks (from a CA of its own), and the suite with `--client-ca`,
`--client-name` and `--status-bind` (see cluster.py). Anyone else who reaches the review port
(here: this test) is closed right after the handshake, before a byte of a review is read, so a
forged review cannot take a tool's active-run slot; the probes and /metrics are on the status
port, which needs no certificate and serves nothing else.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.builders import make_review
from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    SUITE_NAMESPACE,
    WEBHOOK_CLIENT_NAME,
    ClusterCA,
    ControlPlane,
    Suite,
    wait_for,
)
from tests.e2e.objects import pipelinerun, pod_manifest, unique
from webhooks.slots import lease_name

REFUSED = "ClientNotAllowed"
# What a client that the TLS layer refuses sees, depending on where the alert lands.
HANDSHAKE_REFUSED = (ssl.SSLError, ConnectionError, urllib.error.URLError)


def refusals(suite: Suite) -> float:
    return suite.metric("toolforge_admission_reviews_total", reason=REFUSED)


def forged_run_review(tool: str) -> dict[str, Any]:
    """What the API server would send for a tool's run: a valid run that would take a slot."""
    run = pipelinerun(unique(f"{tool}-buildpacks-pipelinerun"), tool)
    run["metadata"]["uid"] = str(uuid.uuid4())
    return make_review(run, resource="pipelineruns", namespace=BUILD_NAMESPACE, username=tool)


def leases(cp: ControlPlane) -> dict[str, str]:
    """The suite's Leases (the active-run slots): name -> resourceVersion."""
    items = cp.get_json("leases", "-n", SUITE_NAMESPACE)["items"]
    return {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in items}


def context_with(suite: Suite, certificate: tuple[Any, Any] | None) -> ssl.SSLContext:
    """Trusts the suite, and presents `certificate` (cert and key files) or none."""
    context = ssl.create_default_context(cafile=str(suite.cert_dir / "ca.crt"))
    if certificate is not None:
        context.load_cert_chain(*certificate)
    return context


def test_the_api_server_presents_its_certificate(
        control_plane: ControlPlane, live_suite: Suite, mytool: Any) -> None:
    before = refusals(live_suite)
    name = unique("mtls")
    control_plane.kubectl("create", "-f", "-", input=pod_manifest(name, "tool-mytool"),
                          user=mytool)
    assert live_suite.wait_review(endpoint="validate-pods", name=name)["decision"] == "allowed"
    assert refusals(live_suite) == before


def test_a_forged_review_without_a_certificate_is_refused_and_takes_no_slot(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    tool = f"t{uuid.uuid4().hex[:8]}"
    before, slots = refusals(live_suite), leases(control_plane)
    shed = live_suite.metric("toolforge_admission_connections_closed_total",
                             reason="no_client_certificate")
    # The review port closes the connection right after the handshake, before the request.
    with pytest.raises(HANDSHAKE_REFUSED):
        live_suite.post("/validate/pipelineruns", forged_run_review(tool),
                        context=context_with(live_suite, None))
    assert live_suite.metric("toolforge_admission_connections_closed_total",
                             reason="no_client_certificate") == shed + 1
    # The status port, which needs no certificate, serves no review at all.
    request = urllib.request.Request(f"{live_suite.status_url}/validate/pipelineruns",
                                     data=json.dumps(forged_run_review(tool)).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context_with(live_suite, None), timeout=10)
    assert refused.value.code == 404
    assert refusals(live_suite) == before  # neither reached the application
    assert leases(control_plane) == slots
    # The same review from the API server's side does take the tool's slot: the check above
    # would have seen a forged one do it.
    status, body = live_suite.post("/validate/pipelineruns", forged_run_review(tool))
    assert status == 200, body
    assert body["response"]["allowed"] is True, body
    assert lease_name(tool) in wait_for("the tool's Lease", lambda: leases(control_plane), 10)


def test_a_certificate_from_another_ca_fails_the_handshake(
        control_plane: ControlPlane, live_suite: Suite, mytool: Any) -> None:
    before = refusals(live_suite)
    directory = control_plane.workdir / "mtls-test"
    directory.mkdir(exist_ok=True)
    stranger = ClusterCA(directory).issue(
        "stranger", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, WEBHOOK_CLIENT_NAME)]))
    # A tool's own certificate is signed by the cluster CA, which the suite does not trust.
    tool = (control_plane.pki / "user-mytool-toolforge.crt",
            control_plane.pki / "user-mytool-toolforge.key")
    for certificate in (stranger, tool):
        with pytest.raises(HANDSHAKE_REFUSED):
            live_suite.post("/validate/pods", make_review(),
                            context=context_with(live_suite, certificate))
    assert refusals(live_suite) == before  # never got as far as HTTP


def test_a_certificate_from_the_right_ca_with_another_name_is_refused(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    impostor = control_plane.webhook_client_issuer.issue(
        "impostor", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mytool")]))
    status, body = live_suite.post("/validate/pods", make_review(),
                                   context=context_with(live_suite, impostor))
    assert status == 403, body
    assert body["reason"] == REFUSED
    assert "names ['mytool'] (from 127.0.0.1) are not allowed" in body["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_answer_without_a_certificate(live_suite: Suite, path: str) -> None:
    status, _ = live_suite.get(path)
    assert status == 200

