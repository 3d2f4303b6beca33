"""audit on the real API server: objects the policy admitted, then a tighter policy.

Two tools create what the policy in force admits (through the suite's webhooks): webservices,
a CronJob, pods, one with an image under a "bring your own container" exception, and builds.
Then the policy is tightened three ways: a registry removed, the exception expired, a builder
removed. `audit` (as a ServiceAccount bound to nothing but the manifests' read-only roles) lists
exactly the objects that would now be refused, each with its tool and the Deployment's
ReplicaSet and pods folded into one finding; the same from the policy ConfigMap in force; and
`audit --publish` (as the CronJob's ServiceAccount) writes PolicyReports that say the same, and
says so when the PolicyReport CRD is missing.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    MANIFESTS,
    SUITE_NAMESPACE,
    ControlPlane,
    Suite,
    ensure_namespaces,
    wait_for,
)
from tests.e2e.crds import policy_report_crd
from tests.e2e.objects import delete_runs, pipelinerun, unique

ONE, TWO = "auditone", "audittwo"
PREBUILT = "docker-registry.tools.wmflabs.org/toolforge-python311-sssd-web:latest"
CLASSIC = "tools-harbor.wmcloud.org/toolforge/heroku-builder-classic:22"
BYOC = "quay.io/example-org/app:1"
AUDIT_ACCOUNT = "toolforge-admission-audit"
READ_ONLY_ACCOUNT = "audit-read-only"


def policies(default_text: str) -> tuple[str, str]:
    """The policy the objects are created under, and the tightened one."""
    admitting = yaml.safe_load(default_text)
    admitting["registries"]["exceptions"][f"tool-{TWO}"] = [
        {"prefix": "quay.io/example-org", "expires": "2099-12-31"}]
    tightened = yaml.safe_load(yaml.safe_dump(admitting))
    tightened["registries"]["allowed"].remove("docker-registry.tools.wmflabs.org")
    tightened["registries"]["exceptions"][f"tool-{TWO}"][0]["expires"] = "2020-01-01"
    tightened["builds"]["builders"].remove(CLASSIC)
    return yaml.safe_dump(admitting), yaml.safe_dump(tightened)


def deployment(name: str, namespace: str, image: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": name, "image": image}]}}}}


def pod(name: str, namespace: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": name, "image": image}]}}


def cronjob(name: str, namespace: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": name, "image": image}]}}}}}}


def audit_roles() -> list[dict[str, Any]]:
    """The audit's RBAC and ServiceAccount, as the manifests ship them."""
    documents = [d for d in yaml.safe_load_all((MANIFESTS / "rbac-audit.yaml").read_text()) if d]
    documents += [d for d in yaml.safe_load_all(
        (MANIFESTS / "serviceaccounts.yaml").read_text())
        if d and d["metadata"]["name"] == AUDIT_ACCOUNT]
    return documents


def read_only_bindings() -> list[dict[str, Any]]:
    """Another ServiceAccount, bound to the read-only roles alone (what a person running
    `audit` by hand is given)."""
    subject = [{"kind": "ServiceAccount", "name": READ_ONLY_ACCOUNT, "namespace": SUITE_NAMESPACE}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": READ_ONLY_ACCOUNT, "namespace": SUITE_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"e2e-{READ_ONLY_ACCOUNT}"}, "subjects": subject,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "toolforge-admission-audit-reader"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"e2e-{READ_ONLY_ACCOUNT}", "namespace": SUITE_NAMESPACE},
         "subjects": subject,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "toolforge-admission-audit-policy"}},
    ]


def run_audit(kubeconfig: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = pathlib.Path(sys.executable).parent / "toolforge-admission"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "webhooks.cli"]
    return subprocess.run([*command, "audit", "-o", "json", *args], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(MANIFESTS.parent.parent)})


def ours(findings: list[dict[str, Any]]) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    """This test's findings (the cluster is shared with other tests)."""
    return {(f["tool"], f["namespace"], f["kind"], f["name"], tuple(sorted(f["owned"])))
            for f in findings if f["tool"] in (ONE, TWO)}


@pytest.fixture
def workloads(control_plane: ControlPlane, default_policy: Suite) -> Iterator[dict[str, Any]]:
    """The two tools' objects, created as the tools under the admitting policy."""
    cp, suite = control_plane, default_policy
    ensure_namespaces(cp, [f"tool-{ONE}", f"tool-{TWO}"])
    admitting, tightened = policies(suite.default_policy)
    suite.set_policy(admitting)
    one, two = cp.tool_kubeconfig(ONE), cp.tool_kubeconfig(TWO)
    runs = {ONE: unique(f"{ONE}-build"), TWO: unique(f"{TWO}-build")}
    try:
        old_build = pipelinerun(runs[ONE], ONE)
        old_build["spec"]["params"][1]["value"] = CLASSIC
        # Created as the tools themselves, through the suite's webhooks.
        cp.kubectl("apply", "-f", "-", user=one, input=yaml.safe_dump_all([
            deployment("web", f"tool-{ONE}", PREBUILT, 2),
            cronjob("nightly", f"tool-{ONE}", f"tools-harbor.wmcloud.org/tool-{ONE}/app:1"),
            pod("solo", f"tool-{ONE}", "tools-harbor.wmcloud.org/toolforge/base:1"),
            old_build]))
        cp.kubectl("apply", "-f", "-", user=two, input=yaml.safe_dump_all([
            pod("byoc", f"tool-{TWO}", BYOC),
            deployment("api", f"tool-{TWO}", f"tools-harbor.wmcloud.org/tool-{TWO}/api:1", 1),
            pipelinerun(runs[TWO], TWO)]))
        # The Deployments' controllers make their ReplicaSets and pods, reviewed like the rest.
        for namespace, name, replicas in ((f"tool-{ONE}", "web", 2), (f"tool-{TWO}", "api", 1)):
            wait_for(f"{replicas} pods of {namespace}/{name}",
                     lambda n=namespace, a=name, r=replicas: len(
                         cp.get_json("pods", "-n", n, "-l", f"app={a}")["items"]) == r, 120)
        yield {"tightened": tightened, "runs": runs}
    finally:
        for tool in (ONE, TWO):
            delete_runs(cp, tool)
            cp.kubectl("delete", "namespace", f"tool-{tool}", "--wait=false", check=False)
        cp.kubectl("-n", SUITE_NAMESPACE, "delete", "configmap", "toolforge-admission-policy",
                   "toolforge-admission-audit", "--ignore-not-found", check=False)


def test_audit_lists_exactly_what_a_tighter_policy_refuses_and_reports_it(
        control_plane: ControlPlane, workloads: dict[str, Any], tmp_path: pathlib.Path) -> None:
    cp = control_plane
    cp.apply(audit_roles() + read_only_bindings())
    account = f"system:serviceaccount:{SUITE_NAMESPACE}:{READ_ONLY_ACCOUNT}"
    wait_for("RBAC for the read-only audit account", lambda: cp.kubectl(
        "auth", "can-i", "list", "pipelineruns.tekton.dev", "--all-namespaces",
        f"--as={account}", check=False).stdout.strip() == "yes", 30)
    read_only = cp.service_account_kubeconfig(SUITE_NAMESPACE, READ_ONLY_ACCOUNT)
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(workloads["tightened"])
    expected = {
        (ONE, f"tool-{ONE}", "Deployment", "web", ("Pod", "Pod", "ReplicaSet")),
        (TWO, f"tool-{TWO}", "Pod", "byoc", ()),
        (ONE, BUILD_NAMESPACE, "PipelineRun", workloads["runs"][ONE], ()),
    }

    # A proposed policy, as a person with the read-only roles runs it.
    result = run_audit(read_only, "--policy", str(proposed))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    found = {(tool, ns, kind, name, tuple(sorted(label.split()[0] for label in owned)))
             for tool, ns, kind, name, owned in ours(report["findings"])}
    assert found == expected, report["findings"]
    by_name = {f["name"]: f for f in report["findings"] if f["tool"] in (ONE, TWO)}
    assert "docker-registry.tools.wmflabs.org" in by_name["web"]["message"]
    assert "the exception for quay.io/example-org ended on 2020-01-01" in \
        by_name["byoc"]["message"]
    assert CLASSIC in by_name[workloads["runs"][ONE]]["message"]

    # The same policy put in force through the ConfigMap (reviewed by the policy webhook).
    cp.apply([{"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "toolforge-admission-policy", "namespace": SUITE_NAMESPACE},
               "data": {"policy.yaml": workloads["tightened"]}}])
    in_force = run_audit(read_only)
    assert in_force.returncode == 1, in_force.stderr
    assert "against the ConfigMap toolforge-admission/toolforge-admission-policy" in \
        in_force.stderr
    assert ours(json.loads(in_force.stdout)["findings"]) == ours(report["findings"])

    # Read-only: it cannot publish.
    denied = run_audit(read_only, "--publish")
    assert denied.returncode == 2
    assert "cannot publish the audit" in denied.stderr

    # The CronJob's account, before the PolicyReport CRD exists: it says so, and still reports.
    wait_for("RBAC for the audit account", lambda: cp.kubectl(
        "auth", "can-i", "create", "configmaps", "-n", SUITE_NAMESPACE,
        f"--as=system:serviceaccount:{SUITE_NAMESPACE}:{AUDIT_ACCOUNT}",
        check=False).stdout.strip() == "yes", 30)
    cronjob = cp.service_account_kubeconfig(SUITE_NAMESPACE, AUDIT_ACCOUNT)
    crd = cp.kubectl("get", "crd", "policyreports.wgpolicyk8s.io", check=False)
    if crd.returncode != 0:
        without = run_audit(cronjob, "--publish", "--exit-zero")
        assert without.returncode == 0, without.stderr
        assert "PolicyReports not published: the API server does not serve " \
               "policyreports.wgpolicyk8s.io" in without.stderr
        assert ours(json.loads(without.stdout)["findings"]) == ours(report["findings"])
        summary = json.loads(cp.get_json("configmap", "-n", SUITE_NAMESPACE,
                                         "toolforge-admission-audit")["data"]["audit.json"])
        assert summary["findings"] >= len(expected)
        cp.apply(policy_report_crd(), "--server-side")
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   "crd/policyreports.wgpolicyk8s.io")

    published = run_audit(cronjob, "--publish", "--exit-zero")
    assert published.returncode == 0, published.stderr
    assert "PolicyReports: " in published.stderr
    results = set()
    for namespace in (f"tool-{ONE}", f"tool-{TWO}", BUILD_NAMESPACE):
        policy_report = cp.get_json("policyreport", "-n", namespace, "toolforge-admission")
        for entry in policy_report["results"]:
            if entry["properties"]["tool"] in (ONE, TWO):
                (resource,) = entry["resources"]
                assert entry["result"] == "fail"
                results.add((entry["properties"]["tool"], resource["namespace"],
                             resource["kind"], resource["name"]))
        if namespace == f"tool-{ONE}":
            # Three workloads there (web, nightly, solo); one would be refused.
            assert policy_report["summary"]["fail"] == 1
            assert policy_report["summary"]["pass"] == 2
    assert results == {finding[:4] for finding in expected}
