"""The captured Tekton build pods under tests/fixtures/tekton: regenerated here, or checked.

A tiny recording webhook (HTTPS on 127.0.0.1, in this process) is registered as the only
webhook configuration while a run is created, exactly like the capture the fixtures came from
(tests/fixtures/tekton/README.md): it allows everything and keeps each body byte for byte.

- With TOOLFORGE_ADMISSION_REGENERATE_FIXTURES=1 (`make fixtures`), the captured
  `pod.create.admissionreview.json` of each scenario below replaces the stored one.
- Without it, the stored fixture must parse and have the shape the real controller produces
  today: same containers in the same order, same step images, same credential flags and mounts,
  same volumes (up to random suffixes), same requester.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import pathlib
import re
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    TEKTON_CONTROLLER_USER,
    ControlPlane,
    Suite,
    free_port,
    wait_for,
)
from tests.e2e.objects import build_token_automounted

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "tekton"
REGENERATE = os.environ.get("TOOLFORGE_ADMISSION_REGENERATE_FIXTURES") == "1"
APP_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/tool-mytool:latest"
BUILDER = "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"
PARAMS = [{"name": "APP_IMAGE", "value": APP_IMAGE}, {"name": "BUILDER_IMAGE", "value": BUILDER}]

# The scenarios this harness can produce, with the run the admin creates (as in the capture).
# b (buildpacks-phases 0.3) and d (dockerconfigjson Secret) need their own namespaces and Task
# and are not regenerated here; their stored files are still checked for parsing below.
SCENARIOS: dict[str, dict[str, Any]] = {
    "a-taskrun-phases-0.2-basic-auth": {
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {"name": "mytool-buildpacks-phases-02", "namespace": BUILD_NAMESPACE},
        "spec": {"serviceAccountName": "buildpacks-service-account",
                 "taskRef": {"name": "buildpacks-phases", "kind": "Task"},
                 "params": PARAMS, "workspaces": [{"name": "source", "emptyDir": {}}]},
    },
    "c-pipelinerun-phases-0.2-basic-auth": {
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "mytool-buildpacks-pipelinerun-7xk2p",
                     "namespace": BUILD_NAMESPACE},
        "spec": {"pipelineRef": {"name": "buildpacks"}, "params": PARAMS,
                 "taskRunTemplate": {"serviceAccountName": "buildpacks-service-account"},
                 "workspaces": [{"name": "source-ws", "emptyDir": {}}]},
    },
}


class Recorder:
    """An HTTPS admission webhook that allows everything and records every body."""

    def __init__(self, workdir: pathlib.Path) -> None:
        from certs.issue import new_ca, new_serving_cert

        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        ca = new_ca("e2e capture CA", now, datetime.timedelta(days=1))
        leaf = new_serving_cert(ca, ["localhost"], now, datetime.timedelta(days=1),
                                ip_addresses=("127.0.0.1",))
        directory = workdir / "capture-certs"
        directory.mkdir(exist_ok=True)
        (directory / "tls.crt").write_bytes(leaf.cert_pem)
        (directory / "tls.key").write_bytes(leaf.key_pem)
        self.ca_pem = ca.cert_pem
        self.bodies: list[tuple[str, bytes]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.bodies.append((self.path, body))
                uid = json.loads(body)["request"]["uid"]
                answer = json.dumps({"apiVersion": "admission.k8s.io/v1",
                                     "kind": "AdmissionReview",
                                     "response": {"uid": uid, "allowed": True}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def configuration(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "capture.e2e.toolforge-admission.test",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"url": f"https://127.0.0.1:{self.port}/pods",
                                 "caBundle": base64.b64encode(self.ca_pem).decode()},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                           "operations": ["CREATE"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": BUILD_NAMESPACE}},
                "sideEffects": "None", "failurePolicy": "Fail",
                "reinvocationPolicy": "Never", "timeoutSeconds": 10,
            }],
        }

    def pod_review(self, pod_name: str) -> bytes | None:
        for _, body in self.bodies:
            request = json.loads(body)["request"]
            if request.get("name") == pod_name or \
                    request["object"]["metadata"].get("name") == pod_name:
                return body
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def captures(control_plane: ControlPlane, suite: Suite,
             e2e_workdir: pathlib.Path) -> Iterator[dict[str, tuple[bytes, dict[str, Any]]]]:
    """Per scenario: the Pod CREATE body the API server sent, and the Pod as stored."""
    recorder = Recorder(e2e_workdir)
    name = "e2e-capture-admission-reviews"
    # The only webhook configuration while capturing, as in the original capture: the objects
    # are then exactly what any webhook sees (no other webhook's patch). The build
    # ServiceAccount automounts its API token, as Kubernetes' default (and the capture) has it.
    suite.unregister()
    control_plane.apply([recorder.configuration(name)])
    results: dict[str, tuple[bytes, dict[str, Any]]] = {}
    try:
        with build_token_automounted(control_plane):
            for scenario, run in SCENARIOS.items():
                kind = run["kind"].lower()
                control_plane.kubectl("delete", kind, run["metadata"]["name"], "-n",
                                      BUILD_NAMESPACE, "--ignore-not-found", "--wait=true")
                control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(run))
                label = f"tekton.dev/{'pipelineRun' if kind == 'pipelinerun' else 'taskRun'}"

                def stored(label: str = label, run_name: str = run["metadata"]["name"]) -> Any:
                    control_plane.tekton.check_alive()
                    items = control_plane.get_json("-n", BUILD_NAMESPACE, "pods", "-l",
                                                   f"{label}={run_name}")["items"]
                    return items[0] if items else None

                pod = wait_for(f"the pod of {scenario}", stored, timeout=120)
                body = wait_for(f"the review of {scenario}'s pod",
                                lambda pod=pod: recorder.pod_review(pod["metadata"]["name"]), 30)
                results[scenario] = (body, pod)
                (e2e_workdir / f"{scenario}.pod.json").write_text(json.dumps(pod, indent=2))
        yield results
    finally:
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", name,
                              "--ignore-not-found")
        for run in SCENARIOS.values():
            control_plane.kubectl("delete", run["kind"].lower(), run["metadata"]["name"], "-n",
                                  BUILD_NAMESPACE, "--ignore-not-found", "--wait=false")
        recorder.close()
        suite.register()


# --- the shape of a build pod ------------------------------------------------------------------


def _unsuffix(name: str) -> str:
    return re.sub(r"^(kube-api-access-)[a-z0-9]{5}$", r"\1*", name)


def _untag(image: str) -> str:
    """Tekton's own images carry the controller's release; compare them without it."""
    return re.sub(r"(/cmd/[a-z]+):v[0-9.]+$", r"\1", image)


def shape(review: dict[str, Any]) -> dict[str, Any]:
    request = review["request"]
    pod = request["object"]
    spec = pod["spec"]
    containers = spec.get("initContainers", []) + spec["containers"]
    return {
        "envelope": (request["kind"], request["resource"], request["operation"]),
        "user": request["userInfo"]["username"],
        "containers": [c["name"] for c in containers],
        "images": [_untag(c["image"]) for c in containers],
        "credential flags": {c["name"]: [a for a in c.get("args", [])
                                         if a.startswith(("-basic-docker=", "-docker-config="))]
                             for c in containers},
        "mounts": {c["name"]: [(_unsuffix(m["name"]), m["mountPath"])
                               for m in c.get("volumeMounts", [])] for c in containers},
        "volumes": [_unsuffix(v["name"]) for v in spec["volumes"]],
        "managed-by": pod["metadata"]["labels"].get("app.kubernetes.io/managed-by"),
    }


def stored_fixture(scenario: str) -> dict[str, Any]:
    review: dict[str, Any] = json.loads(
        (FIXTURES / scenario / "pod.create.admissionreview.json").read_bytes())
    return review


@pytest.mark.parametrize("scenario", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_every_stored_fixture_is_a_tekton_pod_create_review(scenario: str) -> None:
    review = stored_fixture(scenario)
    assert review["kind"] == "AdmissionReview"
    assert review["apiVersion"] == "admission.k8s.io/v1"
    request = review["request"]
    assert request["operation"] == "CREATE"
    assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert request["oldObject"] is None
    assert request["userInfo"]["username"] == TEKTON_CONTROLLER_USER
    assert shape(review)["managed-by"] == "tekton-pipelines"
    assert all(name.startswith("step-") for name in
               [c["name"] for c in request["object"]["spec"]["containers"]])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_stored_fixture_matches_what_tekton_makes_today(
        scenario: str, captures: dict[str, tuple[bytes, dict[str, Any]]]) -> None:
    body, pod = captures[scenario]
    fresh = json.loads(body)
    # The review's object is the pod as stored (the recorder sent no patch).
    stored_names = [c["name"] for c in pod["spec"].get("initContainers", [])
                    + pod["spec"]["containers"]]
    assert shape(fresh)["containers"] == stored_names
    path = FIXTURES / scenario / "pod.create.admissionreview.json"
    if REGENERATE:
        path.write_bytes(body)  # byte for byte what the API server POSTed
    assert shape(stored_fixture(scenario)) == shape(fresh)
