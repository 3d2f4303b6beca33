"""Invariants of the Kubernetes manifests under manifests/.

The kustomizations are rendered with `kubectl kustomize` when a kubectl that can do so is found
(PATH, or the one tests/e2e builds); otherwise the base is assembled from its files, and the
overlays are skipped. Server-side validation (CEL, schemas) is left to the e2e tests.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.configmap import POLICY_CONFIGMAP, POLICY_KEY
from policies.model import parse_policy
from webhooks import metrics
from webhooks.admission import ENDPOINTS
from webhooks.mounts import POLICY_FILE

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = ["base", "overlays/toolforge"]
SUITE_NAMESPACE = "toolforge-admission"
BUILD_NAMESPACE = "image-build"
PART_OF = "app.kubernetes.io/part-of"
CONFIGURATION_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
GRACEFUL_SECONDS = 25
BUILD_NAMESPACE_ONLY = ("/mutate/build-pods", "/validate/taskruns", "/validate/build-pod-access")

# path -> (sideEffects, longest timeoutSeconds)
EXPECTED = {
    "/validate/pipelineruns": ("NoneOnDryRun", 5),
    "/validate/pods": ("None", 5),
    "/mutate/build-pods": ("None", 3),
    "/validate/taskruns": ("None", 3),
    "/validate/build-pod-access": ("None", 3),
    "/validate/policy": ("None", 5),
}

Doc = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------


def _kubectl_candidates() -> Iterator[str]:
    if os.environ.get("KUBECTL"):
        yield os.environ["KUBECTL"]
    found = shutil.which("kubectl")
    if found:
        yield found
    cache = Path.home() / ".cache" / "toolforge-admission" / "e2e-bin"
    yield from (str(path) for path in sorted(cache.glob("*/kubectl")))


@functools.cache
def _kubectl() -> str | None:
    """A kubectl whose `kustomize` works here, or None."""
    for candidate in _kubectl_candidates():
        try:
            result = subprocess.run([candidate, "kustomize", str(MANIFESTS / "base")],
                                    capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and b"kind:" in result.stdout:
            return candidate
    return None


def _load_files(directory: Path) -> list[Doc]:
    """The base without kubectl: its resources, and its generated ConfigMaps."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for name in kustomization["resources"]:
        docs.extend(doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc)
    for labels in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(labels["pairs"])
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(file).name: (directory / file).read_text() for file in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": generator["name"],
                                  "namespace": generator.get("namespace")},
                     "data": data})
    return docs


@functools.cache
def _render(kustomization: str) -> tuple[Doc, ...]:
    kubectl = _kubectl()
    if kubectl is None:
        if kustomization != "base":
            pytest.skip("no kubectl with a working `kustomize` to render overlays")
        return tuple(_load_files(MANIFESTS / kustomization))
    result = subprocess.run([kubectl, "kustomize", str(MANIFESTS / kustomization)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=KUSTOMIZATIONS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return _render(request.param)


def _of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [doc for doc in _of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _webhooks(docs: tuple[Doc, ...]) -> list[tuple[Doc, Doc]]:
    return [(configuration, webhook) for kind in CONFIGURATION_KINDS
            for configuration in _of_kind(docs, kind) for webhook in configuration["webhooks"]]


def _selects(selector: Doc, namespace: str) -> bool:
    """Whether a namespaceSelector matches a namespace that has only the API server's label."""
    labels = {"kubernetes.io/metadata.name": namespace}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# --- webhook configurations -----------------------------------------------------------------


def test_every_endpoint_has_exactly_one_webhook(docs: tuple[Doc, ...]) -> None:
    paths = sorted(webhook["clientConfig"]["service"]["path"] for _, webhook in _webhooks(docs))
    assert paths == sorted(endpoint.path for endpoint in ENDPOINTS)
    assert sorted(paths) == sorted(EXPECTED)


def test_webhooks_fail_closed_and_speak_v1(docs: tuple[Doc, ...]) -> None:
    for configuration, webhook in _webhooks(docs):
        where = webhook["name"]
        assert configuration["metadata"]["labels"][PART_OF] == "toolforge-admission", where
        assert webhook["failurePolicy"] == "Fail", where
        assert webhook["admissionReviewVersions"] == ["v1"], where
        assert webhook["matchPolicy"] == "Equivalent", where
        service = webhook["clientConfig"]["service"]
        assert (service["namespace"], service["name"], service.get("port", 443)) == (
            SUITE_NAMESPACE, "toolforge-admission", 443), where
        # The rotation job owns the caBundle; a manifest value would fight it on every apply.
        assert "caBundle" not in webhook["clientConfig"], where


def test_side_effects_and_timeouts(docs: tuple[Doc, ...]) -> None:
    for configuration, webhook in _webhooks(docs):
        path = webhook["clientConfig"]["service"]["path"]
        side_effects, longest = EXPECTED[path]
        assert webhook["sideEffects"] == side_effects, path
        assert 1 <= webhook["timeoutSeconds"] <= longest, path
        mutating = configuration["kind"] == "MutatingWebhookConfiguration"
        assert mutating == (path == "/mutate/build-pods"), path
        assert mutating == next(e.mutating for e in ENDPOINTS if e.path == path), path
        if mutating:
            assert webhook["reinvocationPolicy"] == "IfNeeded"


def test_no_object_selector_and_an_unforgeable_namespace_selector(docs: tuple[Doc, ...]) -> None:
    for _, webhook in _webhooks(docs):
        # An objectSelector lets whoever writes the object's labels skip the webhook.
        assert not webhook.get("objectSelector"), webhook["name"]
        selector = webhook["namespaceSelector"]
        keys = {expression["key"] for expression in selector.get("matchExpressions", [])}
        keys |= set(selector.get("matchLabels") or {})
        # Set by the API server to the namespace's name; nobody can change it.
        assert keys == {"kubernetes.io/metadata.name"}, webhook["name"]


def test_namespace_scope(docs: tuple[Doc, ...]) -> None:
    for _, webhook in _webhooks(docs):
        path = webhook["clientConfig"]["service"]["path"]
        selector = webhook["namespaceSelector"]
        assert not _selects(selector, "kube-system"), path
        if path == "/validate/policy":
            assert _selects(selector, SUITE_NAMESPACE)
            assert not _selects(selector, "tool-example")
            assert not _selects(selector, BUILD_NAMESPACE)
            continue
        assert not _selects(selector, SUITE_NAMESPACE), path
        assert _selects(selector, BUILD_NAMESPACE), path
        if path in BUILD_NAMESPACE_ONLY:
            assert not _selects(selector, "tool-example")
        else:
            assert _selects(selector, "tool-example"), path


def _rules(docs: tuple[Doc, ...], path: str) -> set[tuple[str, str, str, str]]:
    found = set()
    for _, webhook in _webhooks(docs):
        if webhook["clientConfig"]["service"]["path"] != path:
            continue
        for rule in webhook["rules"]:
            for group in rule["apiGroups"]:
                for version in rule["apiVersions"]:
                    for resource in rule["resources"]:
                        for operation in rule["operations"]:
                            found.add((group, version, resource, operation))
    return found


def test_rules(docs: tuple[Doc, ...]) -> None:
    pipelineruns = _rules(docs, "/validate/pipelineruns")
    assert pipelineruns == {("tekton.dev", version, resource, operation)
                            for version in ("v1", "v1beta1")
                            for resource, operation in (
                                ("pipelineruns", "CREATE"), ("pipelineruns", "UPDATE"),
                                ("pipelineruns", "DELETE"), ("pipelineruns/status", "UPDATE"))}
    pods = _rules(docs, "/validate/pods")
    expected = {("", "v1", "pods/ephemeralcontainers", "UPDATE")}
    for group, resources in (("", ["pods"]),
                             ("apps", ["deployments", "replicasets", "statefulsets", "daemonsets"]),
                             ("batch", ["jobs", "cronjobs"])):
        for resource in resources:
            expected |= {(group, "v1", resource, op) for op in ("CREATE", "UPDATE")}
    assert pods == expected
    assert _rules(docs, "/mutate/build-pods") == {("", "v1", "pods", "CREATE")}
    assert _rules(docs, "/validate/taskruns") == {
        ("tekton.dev", version, resource, operation) for version in ("v1", "v1beta1")
        for resource, operations in (("taskruns", ("CREATE", "UPDATE", "DELETE")),
                                     ("customruns", ("CREATE", "UPDATE", "DELETE")),
                                     ("taskruns/status", ("UPDATE",)),
                                     ("customruns/status", ("UPDATE",)))
        for operation in operations} | {
        ("tekton.dev", version, resource, operation) for version in ("v1", "v1beta1", "v1alpha1")
        for resource in ("tasks", "pipelines", "stepactions")
        for operation in ("CREATE", "UPDATE", "DELETE")}
    assert _rules(docs, "/validate/build-pod-access") == {
        ("", "v1", f"pods/{sub}", "CONNECT")
        for sub in ("exec", "attach", "portforward", "proxy")}
    assert _rules(docs, "/validate/policy") == {("", "v1", "configmaps", operation)
                                                for operation in ("CREATE", "UPDATE")}


def test_each_webhook_is_sent_the_operations_its_rules_judge(docs: tuple[Doc, ...]) -> None:
    # An operation the rules declare but the webhook is not sent is never judged; one the webhook
    # is sent but no rule judges costs a call for nothing.
    for endpoint in ENDPOINTS:
        sent = {operation for *_, operation in _rules(docs, endpoint.path)}
        judged = {operation for rule in endpoint.rules for operation in rule.operations}
        assert sent == judged, endpoint.path


def test_match_conditions(docs: tuple[Doc, ...]) -> None:
    by_path = {webhook["clientConfig"]["service"]["path"]: webhook for _, webhook in _webhooks(docs)}
    policy = by_path["/validate/policy"]["matchConditions"]
    assert [c["expression"] for c in policy] == [
        f"object.metadata.name == '{POLICY_CONFIGMAP}'"]
    build = " ".join(by_path["/mutate/build-pods"]["matchConditions"][0]["expression"].split())
    # The label map may be absent: test for it before indexing.
    assert build.startswith("has(object.metadata.labels) && "
                            "'app.kubernetes.io/managed-by' in object.metadata.labels && ")
    assert "== 'tekton-pipelines'" in build
    # CREATE is never skipped by the validating hooks.
    for path in ("/validate/pods", "/validate/pipelineruns"):
        for condition in by_path[path].get("matchConditions", []):
            assert condition["expression"].startswith("request.operation != 'UPDATE' || "), path


# --- the server ----------------------------------------------------------------------------------


def _server(docs: tuple[Doc, ...]) -> Doc:
    return _one(docs, "Deployment", "toolforge-admission")


def _restricted(context: Doc, where: str) -> None:
    assert context["runAsNonRoot"] is True, where
    assert context["runAsUser"] == 65532, where
    assert context["readOnlyRootFilesystem"] is True, where
    assert context["allowPrivilegeEscalation"] is False, where
    assert context["capabilities"]["drop"] == ["ALL"], where
    assert not context["capabilities"].get("add"), where
    assert context["seccompProfile"]["type"] == "RuntimeDefault", where


def _pod_specs(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


def test_every_pod_is_restricted(docs: tuple[Doc, ...]) -> None:
    specs = list(_pod_specs(docs))
    assert len(specs) == 4
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            _restricted(container["securityContext"], f"{name}/{container['name']}")
            assert "memory" in container["resources"]["limits"], name
        # The CA key is for the rotation job alone.
        for volume in spec.get("volumes", []):
            assert (volume.get("secret") or {}).get("secretName") != "webhook-ca", name


def test_server_deployment(docs: tuple[Doc, ...]) -> None:
    deployment = _server(docs)
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 3
    assert spec["serviceAccountName"] == "toolforge-admission"
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    (container,) = spec["containers"]
    assert container["args"][0] == "serve"
    assert f"--policy={POLICY_FILE}" in container["args"]
    assert "--cert-dir=/etc/webhook/certs" in container["args"]
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The probes use the status port, which serves them without a client certificate.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert f"--status-bind=0.0.0.0:{ports['status']}" in container["args"]
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["scheme"], get["port"]) == (path, "HTTPS", "status"), probe
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + GRACEFUL_SECONDS
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    policy = mounts["/etc/toolforge-admission/policy"]
    # subPath mounts are never updated by the kubelet: the policy would never reload.
    assert "subPath" not in policy
    assert "subPathExpr" not in policy
    assert volumes[policy["name"]]["configMap"]["name"] == POLICY_CONFIGMAP
    certs = mounts["/etc/webhook/certs"]
    assert "subPath" not in certs
    assert volumes[certs["name"]]["secret"]["secretName"] == "webhook-certs"
    # The server's state dir (made under TMPDIR) holds a copy of the serving key: it must stay
    # in memory, as the Secret volume does, and never reach the node's disk.
    state = volumes[mounts[env["TMPDIR"]["value"]]["name"]]["emptyDir"]
    assert state["medium"] == "Memory"
    assert "sizeLimit" in state
    assert not any("subPath" in mount for mount in container["volumeMounts"])


def test_disruption_budget_and_service(docs: tuple[Doc, ...]) -> None:
    deployment = _server(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = _one(docs, "PodDisruptionBudget", "toolforge-admission")["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable", 0) >= 2
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    service = _one(docs, "Service", "toolforge-admission")["spec"]
    assert service["selector"].items() <= labels.items()
    ports = {port["name"]: port for port in service["ports"]}
    assert set(ports) == {"https", "status"}
    assert ports["https"]["port"] == 443
    assert ports["https"]["targetPort"] in (8443, "https")
    # The ServiceMonitor scrapes /metrics through the status port, which needs no certificate.
    monitor = yaml.safe_load((MANIFESTS / "monitoring" / "servicemonitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("status", "/metrics")
    assert ports["status"]["targetPort"] == "status"


def test_rotation_jobs(docs: tuple[Doc, ...]) -> None:
    cronjob = _one(docs, "CronJob", "toolforge-admission-certs")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    for name, spec in _pod_specs(docs):
        if name in ("toolforge-admission", "toolforge-admission-audit"):
            continue
        assert spec["serviceAccountName"] == "toolforge-admission-certs", name
        args = spec["containers"][0]["args"]
        assert args[:2] == ["certs", "rotate"], name
        assert f"--webhook-label={PART_OF}=toolforge-admission" in args, name


def test_rbac_is_least_privilege(docs: tuple[Doc, ...]) -> None:
    names = {kind: {doc["metadata"]["name"] for doc in _of_kind(docs, kind)}
             for kind in CONFIGURATION_KINDS}
    role = _one(docs, "ClusterRole", "toolforge-admission-certs")
    for rule in role["rules"]:
        writes = {"update", "patch", "create", "delete", "deletecollection", "*"} & set(rule["verbs"])
        if writes:
            assert writes <= {"update", "patch"}
            for resource in rule["resources"]:
                kind = {"validatingwebhookconfigurations": CONFIGURATION_KINDS[0],
                        "mutatingwebhookconfigurations": CONFIGURATION_KINDS[1]}[resource]
                assert set(rule["resourceNames"]) == names[kind]
    # Cluster-wide: the rotation job's ClusterRole, and the server's reads of PipelineRuns (runs
    # live in the build namespace and in tools' namespaces) and TaskRuns, which are read-only.
    assert sorted(doc["metadata"]["name"] for doc in _of_kind(docs, "ClusterRole")) == [
        "toolforge-admission-audit-reader", "toolforge-admission-audit-reports",
        "toolforge-admission-certs", "toolforge-admission-pipelineruns"]
    secrets = _one(docs, "Role", "toolforge-admission-certs")
    for rule in secrets["rules"]:
        assert rule["resources"] == ["secrets"]
        if set(rule["verbs"]) != {"create"}:
            assert set(rule["resourceNames"]) == {"webhook-certs", "webhook-ca"}
    reader = _one(docs, "ClusterRole", "toolforge-admission-pipelineruns")
    assert reader["rules"] == [
        {"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["get", "list"]},
        {"apiGroups": ["tekton.dev"], "resources": ["taskruns"], "verbs": ["get"]}]
    binding = _one(docs, "ClusterRoleBinding", "toolforge-admission-pipelineruns")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "toolforge-admission",
                                    "namespace": "toolforge-admission"}]
    for doc in docs:
        for rule in doc.get("rules", []) if doc["kind"] in ("Role", "ClusterRole") else []:
            assert "*" not in rule["verbs"], doc["metadata"]
            assert "*" not in rule["resources"], doc["metadata"]


def test_audit_reads_exactly_what_it_judges(docs: tuple[Doc, ...]) -> None:
    from webhooks.audit import audited_resources

    reader = _one(docs, "ClusterRole", "toolforge-admission-audit-reader")
    granted = {(group, resource) for rule in reader["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}
    assert granted == {(r.group, r.plural) for r in audited_resources()}
    assert all(rule["verbs"] == ["list"] for rule in reader["rules"])
    policy = _one(docs, "Role", "toolforge-admission-audit-policy")
    assert policy["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                "resourceNames": [POLICY_CONFIGMAP], "verbs": ["get"]}]
    reports = _one(docs, "ClusterRole", "toolforge-admission-audit-reports")
    assert reports["rules"] == [{"apiGroups": ["wgpolicyk8s.io"], "resources": ["policyreports"],
                                 "verbs": ["list", "get", "create", "update", "delete"]}]
    summary = _one(docs, "Role", "toolforge-admission-audit-summary")
    for rule in summary["rules"]:
        assert rule["resources"] == ["configmaps"]
        if rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == ["toolforge-admission-audit"]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in _of_kind(docs, kind):
            if binding["metadata"]["name"].startswith("toolforge-admission-audit"):
                assert binding["subjects"] == [{"kind": "ServiceAccount",
                                                "name": "toolforge-admission-audit",
                                                "namespace": SUITE_NAMESPACE}]


def test_audit_cronjob_publishes_what_the_webhook_exports(docs: tuple[Doc, ...]) -> None:
    from webhooks.app import DEFAULTS
    from webhooks.policy_reports import SUMMARY_CONFIGMAP, SUMMARY_KEY

    cronjob = _one(docs, "CronJob", "toolforge-admission-audit")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "toolforge-admission-audit"
    args = spec["containers"][0]["args"]
    assert args[0] == "audit"
    assert {"--all-namespaces", "--publish", "--exit-zero"} <= set(args)
    deployment = _server(docs)["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    volumes = {volume["name"]: volume for volume in deployment["volumes"]}
    mount = next(m for m in container["volumeMounts"]
                 if volumes[m["name"]].get("configMap", {}).get("name") == SUMMARY_CONFIGMAP)
    assert volumes[mount["name"]]["configMap"]["optional"] is True
    assert DEFAULTS["AUDIT_SUMMARY_FILE"] == f"{mount['mountPath']}/{SUMMARY_KEY}"


# --- who may reach the server -----------------------------------------------------------------------


def _pod_labels(docs: tuple[Doc, ...]) -> dict[str, dict[str, str]]:
    """Each pod template's labels, by the name of its workload."""
    labels = {}
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc["kind"] in ("Deployment", "Job"):
            labels[doc["metadata"]["name"]] = spec["template"]["metadata"].get("labels", {})
        elif doc["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            labels[doc["metadata"]["name"]] = template["metadata"].get("labels", {})
    return labels


def _selected(selector: Doc, labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels is modelled here"
    return (selector.get("matchLabels") or {}).items() <= labels.items()


def test_network_policies_admit_only_the_webhook_port(docs: tuple[Doc, ...]) -> None:
    policies = [doc for doc in _of_kind(docs, "NetworkPolicy")
                if doc["metadata"]["namespace"] == SUITE_NAMESPACE]
    # Everything in the namespace is denied both ways unless a rule below allows it.
    assert any(p["spec"]["podSelector"] == {} and
               set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and
               not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies)
    (container,) = _server(docs)["spec"]["template"]["spec"]["containers"]
    served = [{"protocol": "TCP", "port": port["containerPort"]} for port in container["ports"]
              if port["name"] in ("https", "status")]
    assert len(served) == 2
    labels = _pod_labels(docs)
    admitted = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            # The API server and Prometheus call from node or host addresses that no pod or
            # namespace selector matches, so the port is what this rule narrows.
            assert rule["ports"] in ([port] for port in served), rule
            admitted |= {name for name, pod in labels.items()
                         if _selected(policy["spec"]["podSelector"], pod)}
        for rule in policy["spec"].get("egress") or []:
            ports = {(port["protocol"], port["port"]) for port in rule["ports"]}
            if ports <= {("TCP", 443), ("TCP", 6443)}:
                continue  # the API server
            assert ports <= {("UDP", 53), ("TCP", 53)}, ports
            assert rule["to"] == [{"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
    # Only the server's pods take connections; the certificate jobs take none.
    assert admitted == {"toolforge-admission"}


def _render_with_client_certificates(tmp_path: Path) -> tuple[Doc, ...]:
    """The base with the client-certificates component, as a site overlay adds it."""
    import datetime

    from certs.issue import new_ca

    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("no kubectl with a working `kustomize` to render components")
    ca = new_ca("API server webhook client CA", datetime.datetime.now(datetime.UTC),
                datetime.timedelta(days=1))
    (tmp_path / "client-ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes relative paths only
        "resources": [os.path.relpath(MANIFESTS / "base", tmp_path)],
        "components": [os.path.relpath(MANIFESTS / "components" / "client-certificates",
                                       tmp_path)],
        "configMapGenerator": [{
            "name": "toolforge-admission-client-ca", "namespace": SUITE_NAMESPACE,
            "files": ["ca.crt=client-ca.crt"], "options": {"disableNameSuffixHash": True}}],
    }))
    result = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def test_mutual_tls_is_off_in_the_base(docs: tuple[Doc, ...]) -> None:
    # On before the API servers present their certificate, it would refuse every review.
    (container,) = _server(docs)["spec"]["template"]["spec"]["containers"]
    assert not any(arg.startswith("--client-") for arg in container["args"])


def test_the_client_certificates_component_turns_on_mutual_tls(tmp_path: Path) -> None:
    from webhooks.cli import _parser

    docs = _render_with_client_certificates(tmp_path)
    spec = _server(docs)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = _parser().parse_args(container["args"])
    assert args.client_names == ["kube-apiserver-webhook-client"]
    client_ca = Path(args.client_ca)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(client_ca.parent))
    assert "subPath" not in mount  # the CA reloads when the ConfigMap changes
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = _one(docs, "ConfigMap", volume["configMap"]["name"])
    assert configmap["metadata"]["namespace"] == SUITE_NAMESPACE
    assert configmap["data"][client_ca.name].startswith("-----BEGIN CERTIFICATE-----")
    assert not volume["configMap"].get("optional")
    # The probes need no client certificate: they use the status port, which asks for none
    # (the https port closes a client without one).
    status = next(port["containerPort"] for port in container["ports"]
                  if port["name"] == "status")
    assert args.status_bind == f"0.0.0.0:{status}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert container[probe]["httpGet"]["port"] == "status", probe


# --- the policy ----------------------------------------------------------------------------------


def test_base_policy_is_the_example_policy() -> None:
    copy = (MANIFESTS / "base" / "policy.yaml").read_bytes()
    assert copy == (ROOT / "policies" / "example-policy.yaml").read_bytes(), (
        "manifests/base/policy.yaml must be a byte-for-byte copy of policies/example-policy.yaml: "
        "cp policies/example-policy.yaml manifests/base/policy.yaml")


def test_policy_configmap_loads(docs: tuple[Doc, ...]) -> None:
    configmap = _one(docs, "ConfigMap", POLICY_CONFIGMAP)
    assert configmap["metadata"]["namespace"] == SUITE_NAMESPACE
    policy = parse_policy(configmap["data"][POLICY_KEY])
    assert policy.builds.namespace == BUILD_NAMESPACE


def test_the_suite_lives_in_its_namespace(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in ("Role", "RoleBinding") and (
                doc["metadata"]["name"] == "toolforge-admission-pipelineruns"):
            assert namespace == BUILD_NAMESPACE
        elif namespace is not None:
            assert namespace == SUITE_NAMESPACE, doc["metadata"]


# --- monitoring ---------------------------------------------------------------------------------


def _metric_names() -> set[str]:
    names = set(metrics.AUDIT_METRICS)
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith(metrics.PREFIX):
            names.add(name)
    return names


def test_alerting_rules_agree_and_use_real_metrics() -> None:
    plain = yaml.safe_load((MANIFESTS / "monitoring" / "rules.yaml").read_text())
    operator = yaml.safe_load((MANIFESTS / "monitoring" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"] == plain
    known = _metric_names()
    assert known
    exprs = [rule["expr"] for group in plain["groups"] for rule in group["rules"]]
    dashboard = json.loads((MANIFESTS / "monitoring" / "dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for expr in exprs:
        for used in re.findall(r"\btoolforge_admission_[a-z_]+", expr):
            base = re.sub(r"_(bucket|count|sum|total)$", "", used)
            assert used in known or base in known, used
    alerts = {rule["alert"] for group in plain["groups"] for rule in group["rules"]}
    assert {"ToolforgeAdmissionCertificateExpiresSoon",
            "ToolforgeAdmissionCertificateExpiresVerySoon"} <= alerts
    severities = {rule["alert"]: rule["labels"]["severity"]
                  for group in plain["groups"] for rule in group["rules"]}
    assert severities["ToolforgeAdmissionCertificateExpiresSoon"] == "warning"
    assert severities["ToolforgeAdmissionCertificateExpiresVerySoon"] == "critical"


def test_the_dashboard_shows_every_metric_without_overlapping_panels() -> None:
    dashboard = json.loads((MANIFESTS / "monitoring" / "dashboard.json").read_text())
    panels = dashboard["panels"]
    exprs = " ".join(target["expr"] for panel in panels for target in panel.get("targets", []))
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", used)
             for used in re.findall(r"\btoolforge_admission_[a-z_]+", exprs)}
    assert _metric_names() <= shown, _metric_names() - shown
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[x, y] = panel["title"]
