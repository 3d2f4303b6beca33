"""The shipped manifests against a real API server, and the scope they give the webhooks.

- Every rendered manifest (base, the toolforge overlay, monitoring) passes
  `kubectl apply --dry-run=server`: schema, defaulting, validation and the admission chain
  (including the suite's own policy webhook for the policy ConfigMap), nothing persisted.
- kube-system and the suite's own namespace never reach the suite.
- A tool cannot opt out: no label or annotation on its objects decides anything, it may not relabel
  its namespace, and `kubernetes.io/metadata.name` (the label the namespaceSelectors use) is forced
  by the API server even against an admin.

Nothing here really applies the base's webhook configurations: that would swap the registered
clientConfig (a URL to the test suite) for a Service nothing serves and break every other test.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import BUILD_NAMESPACE, REPO, SUITE_NAMESPACE, ControlPlane, Suite, wait_for
from tests.e2e.objects import delete_runs, pipelinerun, unique

MANIFESTS = REPO / "manifests"
RENDERED = {
    "base": MANIFESTS / "base",
    "overlays/toolforge": MANIFESTS / "overlays" / "toolforge",
}
MONITORING = MANIFESTS / "monitoring"
# The Prometheus Operator's kinds: their CRDs are not installed in the test cluster (installing
# empty schemas would only prove that the objects are objects). Their content is checked against
# rules.yaml by tests/unit/test_manifests.py.
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "PrometheusRule"),
                  ("monitoring.coreos.com/v1", "ServiceMonitor")}

TOOL_IMAGE = "tools-harbor.wmcloud.org/tool-mytool/app:1"
DISALLOWED_IMAGE = "docker.io/library/nginx"
DENIED = 'admission webhook "pods.toolforge-admission.toolforge.org" denied the request'




def pod(name: str, namespace: str, image: str, *, labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None) -> str:
    """A pod that also meets the restricted Pod Security Standard (the suite's namespace
    enforces it once the base's Namespace is applied)."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                     "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": image,
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    })


def render(cp: ControlPlane, directory: pathlib.Path) -> list[dict[str, Any]]:
    text = cp.kubectl("kustomize", str(directory)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def dry_run(cp: ControlPlane, documents: list[dict[str, Any]]) -> str:
    result = cp.kubectl("apply", "--dry-run=server", "-f", "-",
                        input=yaml.safe_dump_all(documents), check=False)
    assert result.returncode == 0, f"dry-run refused:\n{result.stderr}\n{result.stdout}"
    return result.stdout


def reference(document: dict[str, Any]) -> str:
    """How `kubectl apply` names an object in its output: kind.group/name."""
    kind = document["kind"].lower()
    group = document["apiVersion"].rpartition("/")[0]
    return f"{kind}.{group}/{document['metadata']['name']}" if group \
        else f"{kind}/{document['metadata']['name']}"


# --- 1. every manifest passes the API server's dry-run ------------------------------------------


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_every_rendered_manifest_passes_a_server_dry_run(
        control_plane: ControlPlane, live_suite: Suite, overlay: str) -> None:
    documents = render(control_plane, RENDERED[overlay])
    kinds = {d["kind"] for d in documents}
    assert {"Namespace", "Deployment", "ConfigMap", "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration"} <= kinds, kinds
    registered = {c["metadata"]["name"]: c for c in live_objects(control_plane)}
    output = dry_run(control_plane, documents)
    for document in documents:
        assert reference(document) in output, (reference(document), output)
    assert "(server dry run)" in output
    # Nothing was persisted: the webhook configurations still point at the test suite.
    assert {c["metadata"]["name"]: c for c in live_objects(control_plane)} == registered


def live_objects(cp: ControlPlane) -> list[dict[str, Any]]:
    items = []
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for item in cp.get_json(kind)["items"]:
            if item["metadata"]["name"].startswith("toolforge-admission-"):
                items.append({"metadata": {"name": item["metadata"]["name"],
                                           "resourceVersion": item["metadata"]["resourceVersion"]},
                              "webhooks": [w["clientConfig"] for w in item["webhooks"]]})
    assert items, "the suite's webhook configurations are not registered"
    for item in items:
        assert all("url" in client for client in item["webhooks"]), item
    return items


def test_the_overlay_policy_is_accepted_by_the_suites_policy_webhook(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    """The dry-run of the policy ConfigMap is reviewed by the running suite (sideEffects None)."""
    documents = [d for d in render(control_plane, RENDERED["overlays/toolforge"])
                 if d["kind"] == "ConfigMap" and d["metadata"]["name"] ==
                 "toolforge-admission-policy"]
    assert len(documents) == 1
    before = len(live_suite.reviews(endpoint="validate-policy"))
    dry_run(control_plane, documents)
    assert len(live_suite.reviews(endpoint="validate-policy")) > before
    # And a broken one is refused through the same path.
    broken = dict(documents[0], data={"policy.yaml": "registries: [this is not a policy"})
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-",
                                   input=yaml.safe_dump(broken), check=False)
    assert result.returncode != 0
    assert "policy.toolforge-admission.toolforge.org" in result.stderr, result.stderr


def test_monitoring_manifests_pass_a_server_dry_run_except_the_operator_kinds(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    documents = render(control_plane, MONITORING)
    operator = [d for d in documents if (d["apiVersion"], d["kind"]) in OPERATOR_KINDS]
    others = [d for d in documents if (d["apiVersion"], d["kind"]) not in OPERATOR_KINDS]
    # Skipped on purpose (see OPERATOR_KINDS): exactly the two operator objects.
    assert sorted(d["kind"] for d in operator) == ["PrometheusRule", "ServiceMonitor"]
    assert others, "monitoring renders nothing but the operator kinds"
    output = dry_run(control_plane, others)
    for document in others:
        assert reference(document) in output, output
    # The plain rule file is only parsed: groups of named rules, each an alert with an expr.
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    assert rules["groups"]
    for group in rules["groups"]:
        assert group["name"], group
        assert group["rules"], group
        for rule in group["rules"]:
            assert rule.get("alert"), rule
            assert rule.get("expr"), rule


# --- 2. the suite never sees kube-system or its own namespace -----------------------------------


@pytest.mark.parametrize("namespace", ["kube-system", SUITE_NAMESPACE])
def test_excluded_namespaces_are_never_sent_to_the_suite(
        control_plane: ControlPlane, live_suite: Suite, namespace: str) -> None:
    control_plane.wait_service_account(namespace)
    name = unique("excluded")
    try:
        result = control_plane.kubectl("create", "-f", "-",
                                       input=pod(name, namespace, DISALLOWED_IMAGE), check=False)
        assert result.returncode == 0, result.stderr
        assert f"pod/{name} created" in result.stdout
        # A request that was sent would be logged by now: make one that is, and wait for it.
        marker = unique("marker")
        control_plane.kubectl("create", "-f", "-", input=pod(marker, "tool-mytool", TOOL_IMAGE))
        live_suite.wait_review(endpoint="validate-pods", name=marker)
        # (The policy webhook does review ConfigMaps in the suite's namespace; the pod webhook
        # never sees a thing there.)
        assert live_suite.reviews(endpoint="validate-pods", namespace=namespace) == []
        assert live_suite.reviews(name=name) == []
    finally:
        control_plane.kubectl("-n", namespace, "delete", "pod", name, "--ignore-not-found",
                              "--wait=false", check=False)


# --- 3. a tool cannot opt out -------------------------------------------------------------------


OPT_OUT_LABELS = {
    "admission.toolforge.org/skip": "true",
    "app.kubernetes.io/managed-by": "tekton-pipelines",
    "app.kubernetes.io/part-of": "toolforge-admission",
    "app.kubernetes.io/name": "toolforge-admission",
    "kubernetes.io/metadata.name": "kube-system",
    "toolforge.org/exempt": "true",
}
OPT_OUT_ANNOTATIONS = {
    "admission.toolforge.org/skip": "true",
    "toolforge.org/exempt": "true",
    "policy.toolforge.org/exempt": "true",
}


def test_opt_out_looking_labels_on_a_tool_pod_change_nothing(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    name = unique("optout")
    result = control_plane.kubectl(
        "create", "-f", "-", user=mytool, check=False,
        input=pod(name, "tool-mytool", DISALLOWED_IMAGE, labels=OPT_OUT_LABELS,
                  annotations=OPT_OUT_ANNOTATIONS))
    assert result.returncode != 0, result.stdout
    assert DENIED in result.stderr, result.stderr
    entry = live_suite.wait_review(endpoint="validate-pods", name=name)
    assert entry["decision"] == "denied", entry
    assert entry["namespace"] == "tool-mytool"
    assert control_plane.kubectl("-n", "tool-mytool", "get", "pod", name,
                                 check=False).returncode != 0


def test_a_tool_cannot_relabel_its_namespace(
        control_plane: ControlPlane, mytool: pathlib.Path) -> None:
    before = control_plane.get_json("namespace", "tool-mytool")["metadata"]["labels"]
    for label in ("admission.toolforge.org/skip=true",
                  "kubernetes.io/metadata.name=kube-system"):
        result = control_plane.kubectl("label", "namespace", "tool-mytool", label, "--overwrite",
                                       user=mytool, check=False)
        assert result.returncode != 0, result.stdout
        assert "forbidden" in result.stderr.lower(), result.stderr
    assert control_plane.get_json("namespace", "tool-mytool")["metadata"]["labels"] == before


def test_the_namespace_name_label_is_forced_even_against_an_admin(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    def name_label() -> str:
        labels = control_plane.get_json("namespace", "tool-mytool")["metadata"]["labels"]
        value: str = labels["kubernetes.io/metadata.name"]
        return value

    assert name_label() == "tool-mytool"
    # Either refused or silently set back by the API server; never kube-system.
    control_plane.kubectl("label", "namespace", "tool-mytool",
                          "kubernetes.io/metadata.name=kube-system", "--overwrite", check=False)
    assert name_label() == "tool-mytool"
    # And the webhooks still see the namespace: a disallowed image is still refused there.
    name = unique("after-relabel")
    result = control_plane.kubectl("create", "-f", "-", user=mytool, check=False,
                                   input=pod(name, "tool-mytool", DISALLOWED_IMAGE))
    assert result.returncode != 0
    assert DENIED in result.stderr, result.stderr


# --- the server's own rights ----------------------------------------------------------------------


RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def service_account_kubeconfig(cp: ControlPlane, namespace: str, name: str,
                               path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig that acts as a ServiceAccount, with a token from the TokenRequest API."""
    token = cp.kubectl("-n", namespace, "create", "token", name).stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cp.server, "certificate-authority": str(cp.pki / "ca.crt")}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "sa"}}],
    }))
    return path


def test_the_servers_rbac_allows_the_active_run_check_and_nothing_less_would(
        control_plane: ControlPlane, live_suite: Suite, tmp_path: pathlib.Path) -> None:
    """The active-run check, made with the base's ServiceAccount and RBAC (really applied), lists
    the tool's runs in every namespace and writes its Lease; an account without them cannot."""
    from kubernetes import client, config

    from policies.slots import Claim, Reservation
    from webhooks import slots

    rbac = [d for d in render(control_plane, RENDERED["base"]) if d["kind"] in RBAC_KINDS]
    server_account = next(d for d in rbac if d["kind"] == "ServiceAccount"
                          and d["metadata"]["name"] == "toolforge-admission")
    control_plane.apply(rbac)
    tool = unique("rbac")
    candidate = Reservation(uid=unique("uid"), namespace="image-build", name=unique("run"),
                            reserved_at=datetime.datetime.now(datetime.UTC))

    def claim(account: str) -> Claim:
        kubeconfig = service_account_kubeconfig(control_plane, SUITE_NAMESPACE, account,
                                                tmp_path / f"{account}.kubeconfig")
        api = client.ApiClient(config.new_client_from_config(str(kubeconfig)).configuration)
        active_runs = slots.LeaseSlots(
            slots.KubernetesLeases(client.CoordinationV1Api(api), SUITE_NAMESPACE),
            slots.KubernetesRuns(client.CustomObjectsApi(api)))
        return active_runs.claim(tool, candidate, limit=1, label="toolforge.org/tool",
                                 reserve=True)

    try:
        made = claim(server_account["metadata"]["name"])
        assert made.fits, made
        assert made.changed, made
        lease = control_plane.get_json("-n", SUITE_NAMESPACE, "lease", slots.lease_name(tool))
        assert candidate.uid in lease["metadata"]["annotations"][slots.RESERVATIONS_ANNOTATION]

        stranger = unique("stranger")
        control_plane.kubectl("-n", SUITE_NAMESPACE, "create", "serviceaccount", stranger)
        with pytest.raises(slots.SlotsUnavailableError, match="HTTP 403"):
            claim(stranger)
    finally:
        control_plane.kubectl("-n", SUITE_NAMESPACE, "delete", "lease", slots.lease_name(tool),
                              "--ignore-not-found", check=False)


def test_the_servers_rbac_lets_it_find_a_build_pods_pipelinerun_and_nothing_less_would(
        control_plane: ControlPlane, live_suite: Suite, tmp_path: pathlib.Path) -> None:
    """The lookup behind the build-pod and TaskRun rules, made with the base's ServiceAccount and
    RBAC (really applied): pod -> TaskRun -> PipelineRun; an account without them cannot."""
    from kubernetes import client, config

    from webhooks.runs import BuildRuns, KubernetesTektonObjects, RunsUnavailableError

    rbac = [d for d in render(control_plane, RENDERED["base"]) if d["kind"] in RBAC_KINDS]
    control_plane.apply(rbac)
    tool = "rbacruns"
    control_plane.grant(tool, [BUILD_NAMESPACE])
    account = control_plane.user_kubeconfig(tool, ["toolforge"])
    run = unique(f"{tool}-buildpacks-pipelinerun")

    def runs(name: str) -> BuildRuns:
        kubeconfig = service_account_kubeconfig(control_plane, SUITE_NAMESPACE, name,
                                                tmp_path / f"{name}.kubeconfig")
        api = client.ApiClient(config.new_client_from_config(str(kubeconfig)).configuration)
        return BuildRuns(KubernetesTektonObjects(client.CustomObjectsApi(api)))

    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, tool)),
                              user=account)
        pods = wait_for(f"the pod of {run}", lambda: control_plane.get_json(
            "-n", BUILD_NAMESPACE, "pods", "-l", f"tekton.dev/pipelineRun={run}")["items"], 120)
        found = runs("toolforge-admission").pipelinerun_of_pod(BUILD_NAMESPACE, pods[0])
        assert found.run is not None, found.problem
        assert found.run["metadata"]["name"] == run

        stranger = unique("stranger")
        control_plane.kubectl("-n", SUITE_NAMESPACE, "create", "serviceaccount", stranger)
        with pytest.raises(RunsUnavailableError, match="HTTP 403"):
            runs(stranger).pipelinerun_of_pod(BUILD_NAMESPACE, pods[0])
    finally:
        delete_runs(control_plane, tool)
