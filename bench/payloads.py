"""The request bodies the benchmark sends, written as compact JSON files.

- tekton: the real Tekton build-pod review recorded from a control plane
  (tests/fixtures/tekton/a-*/pod.create.admissionreview.json, with the RUN_IMAGE a run must set),
  sent to /mutate/build-pods as recorded, and to /validate/pods after that mutation, as the API
  server does for every build.
- pod: a ~12 KB tool Pod CREATE as the replicaset-controller sends it: 3 containers, 2 init
  containers, env with fieldRef and secretKeyRef, 5 volumes with the projected kube-api-access
  volume, probes, securityContext, tolerations, an ownerReference and managedFields.
- pipelinerun: a tekton.dev/v1 PipelineRun CREATE by the builds API's ServiceAccount, with
  pipelineRef buildpacks and the IMAGE params (no cluster: the slot check is skipped).

Every payload is admitted by policies/example-policy.yaml (checked by run.py before measuring),
so the numbers are for the common path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HARBOR = "tools-harbor.wmcloud.org"
TOOL = "mytool"
NAMESPACE = f"tool-{TOOL}"


def _review(obj: dict[str, Any], *, resource: str, group: str, kind: str, namespace: str,
            user: dict[str, Any], uid: str, name: str) -> dict[str, Any]:
    gvk = {"group": group, "version": "v1", "kind": kind}
    gvr = {"group": group, "version": "v1", "resource": resource}
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {
        "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": name, "namespace": namespace, "operation": "CREATE", "userInfo": user,
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}


def _probe(path: str, port: int, period: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port, "scheme": "HTTP"}, "initialDelaySeconds": 5,
            "timeoutSeconds": 2, "periodSeconds": period, "successThreshold": 1,
            "failureThreshold": 3}


def _container(name: str, image: str, *, port: int | None, init: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name, "image": image,
        "command": ["/cnb/process/web"] if not init else ["/bin/sh", "-c"],
        "args": [] if not init else [f"until nc -z {name}-db 3306; do sleep 1; done"],
        "env": [
            {"name": "TOOL_NAME", "value": TOOL},
            {"name": "TOOL_DATA_DIR", "value": f"/data/project/{TOOL}"},
            {"name": "HOME", "value": f"/data/project/{TOOL}"},
            {"name": "PORT", "value": str(port or 8000)},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                             "fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                           "fieldPath": "status.podIP"}}},
            {"name": "TOOL_TOOLSDB_USER", "valueFrom": {"secretKeyRef": {
                "name": "toolforge-envvar-tool-toolsdb-user", "key": "TOOL_TOOLSDB_USER"}}},
            {"name": "TOOL_TOOLSDB_PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": "toolforge-envvar-tool-toolsdb-password", "key": "TOOL_TOOLSDB_PASSWORD"}}},
            {"name": "TOOL_REPLICA_CNF_USER", "valueFrom": {"secretKeyRef": {
                "name": "toolforge-envvar-replica-cnf-user", "key": "TOOL_REPLICA_CNF_USER"}}},
            {"name": "NO_PROXY", "value": "localhost,127.0.0.1,.svc,.cluster.local,.wmcloud.org"},
        ],
        "resources": {"limits": {"cpu": "500m", "memory": "512Mi"},
                      "requests": {"cpu": "125m", "memory": "256Mi"}},
        "volumeMounts": [
            {"name": "home", "mountPath": f"/data/project/{TOOL}"},
            {"name": "etcldap", "mountPath": "/etc/ldap.conf", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kube-api-access-x7k2p", "mountPath":
             "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "Always",
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "runAsUser": 52503, "runAsGroup": 52503,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        container["livenessProbe"] = _probe("/healthz", port, 10)
        container["readinessProbe"] = _probe("/readyz", port, 5)
        container["startupProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 2,
                                     "failureThreshold": 30, "timeoutSeconds": 1,
                                     "successThreshold": 1}
    return container


def tool_pod_review() -> dict[str, Any]:
    """A tool's webservice Pod, created by the replicaset-controller (about 12 KB compact)."""
    rs_uid = "6a1e0c0e-3d9c-4a9e-9d7b-3c1c0b6f4e21"
    managed = {"f:metadata": {"f:generateName": {}, "f:labels": {
        ".": {}, "f:app.kubernetes.io/component": {}, "f:app.kubernetes.io/managed-by": {},
        "f:pod-template-hash": {}, "f:toolforge": {}}, "f:ownerReferences": {
        ".": {}, f'k:{{"uid":"{rs_uid}"}}': {}}},
        "f:spec": {"f:containers": {f'k:{{"name":"{c}"}}': {
            ".": {}, "f:env": {".": {}, 'k:{"name":"TOOL_NAME"}': {".": {}, "f:name": {},
                                                                  "f:value": {}}},
            "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {
                ".": {}, "f:limits": {}, "f:requests": {}}, "f:volumeMounts": {}}
            for c in ("webservice", "worker", "metrics")},
            "f:initContainers": {}, "f:volumes": {}, "f:tolerations": {},
            "f:securityContext": {}}}
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": f"{TOOL}-7d9f8c6b5d-", "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/component": "web",
                       "app.kubernetes.io/managed-by": "toolforge-webservice",
                       "app.kubernetes.io/name": TOOL, "pod-template-hash": "7d9f8c6b5d",
                       "toolforge": "tool"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-22T09:14:03Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": f"{TOOL}-7d9f8c6b5d", "uid": rs_uid,
                                 "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "time": "2026-11-22T09:14:03Z",
                               "fieldsType": "FieldsV1", "fieldsV1": managed}],
        },
        "spec": {
            "initContainers": [
                _container("wait-for-db", f"{HARBOR}/toolforge/bookworm-sssd:latest",
                           port=None, init=True),
                _container("migrate", f"{HARBOR}/{NAMESPACE}/{TOOL}:latest", port=None,
                           init=True),
            ],
            "containers": [
                _container("webservice", f"{HARBOR}/{NAMESPACE}/{TOOL}:latest", port=8000),
                _container("worker", f"{HARBOR}/{NAMESPACE}/{TOOL}-worker:v2.3.1", port=None),
                _container("metrics", "docker-registry.tools.wmflabs.org/toolforge-exporter:2",
                           port=9100),
            ],
            "volumes": [
                {"name": "home",
                 "hostPath": {"path": f"/data/project/{TOOL}", "type": "Directory"}},
                {"name": "etcldap", "hostPath": {"path": "/etc/ldap.conf", "type": "File"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "config", "configMap": {"name": f"{TOOL}-config", "defaultMode": 420}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "serviceAccount": "default", "enableServiceLinks": True, "schedulerName":
            "default-scheduler", "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
            "securityContext": {"fsGroup": 52503, "runAsUser": 52503, "runAsGroup": 52503,
                                "supplementalGroups": [52503],
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {},
    }
    user = {"username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "3d0ec9ab-53a9-4e1c-9e0b-3a2ed9b7f1d1",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                       "system:authenticated"]}
    return _review(pod, resource="pods", group="", kind="Pod", namespace=NAMESPACE, user=user,
                   uid="5b3c9a1e-8d2f-4e6a-b1c7-0f9e8d7c6b5a", name="")


def pipelinerun_review() -> dict[str, Any]:
    """A buildpacks PipelineRun started by the builds API for a tool (about 1.7 KB compact)."""
    name = f"{TOOL}-buildpacks-pipelinerun-k8v2q"
    run = {
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {
            "generateName": f"{TOOL}-buildpacks-pipelinerun-", "name": name,
            "namespace": "image-build", "uid": "0c8a7d3e-1f2b-4c5d-8e9f-0a1b2c3d4e5f",
            "creationTimestamp": "2026-11-22T13:27:00Z", "generation": 1,
            "labels": {"toolforge.org/tool": TOOL, "app.kubernetes.io/created-by": "builds-api"},
        },
        "spec": {
            "pipelineRef": {"name": "buildpacks"},
            "params": [
                {"name": "APP_IMAGE", "value": f"{HARBOR}/tool-{TOOL}/{TOOL}:latest"},
                {"name": "BUILDER_IMAGE", "value": f"{HARBOR}/toolforge/heroku-builder:22"},
                {"name": "RUN_IMAGE", "value": f"{HARBOR}/toolforge/heroku-run:22"},
                {"name": "SOURCE_URL", "value": "https://gitlab.wikimedia.org/toolforge/mytool.git"},
                {"name": "SOURCE_REFERENCE", "value": "main"},
            ],
            "workspaces": [{"name": "source-ws", "emptyDir": {}},
                           {"name": "cache-ws", "emptyDir": {}}],
            "taskRunTemplate": {"serviceAccountName": "buildpacks-service-account"},
            "timeouts": {"pipeline": "1h"},
        },
    }
    user = {"username": "system:serviceaccount:image-build:builds-api",
            "uid": "8f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:image-build",
                       "system:authenticated"]}
    return _review(run, resource="pipelineruns", group="tekton.dev", kind="PipelineRun",
                   namespace="image-build", user=user, uid="9e8d7c6b-5a49-4837-a625-1403f2e1d0c9",
                   name=name)


def tekton_review() -> dict[str, Any]:
    """The recorded review, its pod that of a run with RUN_IMAGE: the recording's run left it
    out (its export step says `-run-image=`), which the build-pod rule refuses since a phase
    given no run image reads one from /layers (tests/buildruns.py)."""
    from tests.buildruns import TASKRUN_POD, captured_review

    return captured_review(TASKRUN_POD)


def tekton_mutated_review() -> dict[str, Any]:
    """The same build pod as the validating webhook gets it: after /mutate/build-pods."""
    from policies.credentials import strip_build_credentials
    from policies.model import parse_policy

    data = tekton_review()
    request = data["request"]
    policy = parse_policy((ROOT / "policies/example-policy.yaml").read_bytes())
    decision = strip_build_credentials(request["object"], request["namespace"], policy)
    if decision.patched is not None:
        request["object"] = decision.patched
    return data


# name -> (body, path)
PAYLOADS = {
    "pod": (tool_pod_review, "/validate/pods"),
    "tekton-validate": (tekton_mutated_review, "/validate/pods"),
    "tekton-mutate": (tekton_review, "/mutate/build-pods"),
    "pipelinerun": (pipelinerun_review, "/validate/pipelineruns"),
}


def write(directory: Path) -> dict[str, tuple[Path, str]]:
    """Write each payload's body as compact JSON; name -> (file, path)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (make, path) in PAYLOADS.items():
        file = directory / f"{name}.json"
        file.write_bytes(json.dumps(make(), separators=(",", ":")).encode())
        out[name] = (file, path)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench-payloads")
    for name, (file, path) in write(target).items():
        print(f"{name:16} {path:24} {file.stat().st_size:7d} B  {file}")
