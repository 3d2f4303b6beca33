"""audit: what already runs, judged as the endpoints would judge it now, collapsed per workload,
read page by page; and the PolicyReports and summary the continuous audit publishes.

The API is a fake here (the e2e test uses the real API server): it serves lists in pages as the
API server does (limit, continue) and answers 404 for kinds it does not serve.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.model import Policy
from tests.builders import EXAMPLE_POLICY
from webhooks.audit import AuditError, audit, audited_resources
from webhooks.cli import EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK, main
from webhooks.inventory import ApiError, Resource
from webhooks.policy_reports import (
    REPORT_NAME,
    SUMMARY_CONFIGMAP,
    SUMMARY_KEY,
    publish_reports,
    publish_summary,
    summary,
)

NOW = datetime.datetime(2027, 1, 15, tzinfo=datetime.UTC)
OWN = "tools-harbor.wmcloud.org/tool-mytool/web:1"
BANNED = "docker.io/library/nginx:1"
BUILDER = "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"


class FakeApi:
    """Objects by resource plural; lists in pages; 404 for what it does not serve."""

    def __init__(self, objects: list[dict[str, Any]], *, served: set[str] | None = None,
                 forbidden: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.objects = objects
        self.served = served
        self.forbidden = forbidden
        self.pages: list[tuple[str, str | None, int, str]] = []
        self.written: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str, str]] = []

    def _of(self, resource: Resource, namespace: str | None) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == resource.kind
                and (namespace is None or o["metadata"].get("namespace") == namespace)]

    def list_page(self, resource: Resource, namespace: str | None, *, limit: int, token: str,
                  label_selector: str) -> dict[str, Any]:
        if resource.plural in self.forbidden:
            raise ApiError(403, f'{resource.plural} is forbidden: User "x" cannot list')
        if self.served is not None and resource.plural not in self.served:
            raise ApiError(404, "the server could not find the requested resource")
        self.pages.append((resource.plural, namespace, limit, token))
        start = int(token or 0)
        items = self._of(resource, namespace)
        if label_selector:
            key, _, value = label_selector.partition("=")
            items = [i for i in items if i["metadata"].get("labels", {}).get(key) == value]
        page = [json.loads(json.dumps({k: v for k, v in o.items() if k not in ("kind",
                                                                              "apiVersion")}))
                for o in items[start:start + limit]]
        more = start + limit < len(items)
        return {"kind": f"{resource.kind}List", "items": page,
                "metadata": {"continue": str(start + limit) if more else ""}}

    def read(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self._of(resource, namespace)
                     if o["metadata"]["name"] == name), None)

    def write(self, resource: Resource, namespace: str, body: Mapping[str, Any]) -> None:
        self.written[(resource.plural, namespace, body["metadata"]["name"])] = dict(body)

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        self.deleted.append((resource.plural, namespace, name))


def meta(name: str, namespace: str, uid: str, owner: str | None = None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid,
                                "managedFields": [{"manager": "kubectl"}]}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Owner", "name": "o",
                                        "uid": owner, "controller": True}]
    if labels:
        metadata["labels"] = labels
    return metadata


def pod(name: str, image: str, namespace: str = "tool-mytool", owner: str | None = None,
        ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta(name, namespace, f"u-{name}",
                                                                 owner),
            "spec": {"containers": [{"name": "c", "image": image}]}}


def workload(kind: str, name: str, image: str, namespace: str = "tool-mytool",
             owner: str | None = None) -> dict[str, Any]:
    group = "batch" if kind in ("Job", "CronJob") else "apps"
    template = {"spec": {"containers": [{"name": "c", "image": image}]}}
    spec = {"jobTemplate": {"spec": {"template": template}}} if kind == "CronJob" \
        else {"template": template}
    return {"apiVersion": f"{group}/v1", "kind": kind,
            "metadata": meta(name, namespace, f"u-{name}", owner), "spec": spec}


def run(name: str, tool: str, builder: str = BUILDER) -> dict[str, Any]:
    return {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": meta(name, "image-build", f"u-{name}",
                             labels={"toolforge.org/tool": tool}),
            "spec": {"pipelineRef": {"name": "buildpacks"},
                     "taskRunTemplate": {"serviceAccountName": "buildpacks-service-account"},
                     "params": [
                         {"name": "APP_IMAGE",
                          "value": f"tools-harbor.wmcloud.org/tool-{tool}/{tool}:latest"},
                         {"name": "BUILDER_IMAGE", "value": builder},
                         {"name": "RUN_IMAGE",
                          "value": "tools-harbor.wmcloud.org/toolforge/heroku-run:22"},
                         {"name": "SOURCE_URL", "value": "https://example.org/x.git"}]},
            "status": {"conditions": [{"type": "Succeeded", "status": "Unknown"}]}}


def cluster() -> list[dict[str, Any]]:
    return [
        # A Deployment whose image is not allowed: one finding with its ReplicaSet and pods.
        workload("Deployment", "web", BANNED),
        workload("ReplicaSet", "web-7d9", BANNED, owner="u-web"),
        pod("web-7d9-a", BANNED, owner="u-web-7d9"),
        pod("web-7d9-b", BANNED, owner="u-web-7d9"),
        # A CronJob, its Job and pod, all allowed: no finding.
        workload("CronJob", "nightly", OWN),
        workload("Job", "nightly-1", OWN, owner="u-nightly"),
        pod("nightly-1-x", OWN, owner="u-nightly-1"),
        # A Deployment fixed since, with an old ReplicaSet still refused: the Deployment is named.
        workload("Deployment", "api", OWN),
        workload("ReplicaSet", "api-old", BANNED, owner="u-api"),
        # A lone pod of another tool.
        pod("debug", BANNED, namespace="tool-other"),
        # Not a tool namespace, and an exempt one: not audited.
        pod("ingress", BANNED, namespace="ingress-nginx"),
        pod("dns", BANNED, namespace="kube-system"),
        # Builds: one with an approved builder, one without.
        run("ok-run", "mytool"),
        run("old-builder", "other", builder="tools-harbor.wmcloud.org/toolforge/old:1"),
    ]


@pytest.fixture
def policy(example_policy: Policy) -> Policy:
    return example_policy


def test_findings_are_per_workload_with_what_it_owns(policy: Policy) -> None:
    result = audit(FakeApi(cluster()), policy, now=NOW)
    assert [(f.tool, f.namespace, f.kind, f.name, f.owned, f.refused)
            for f in result.findings] == [
        ("mytool", "tool-mytool", "Deployment", "api", ("ReplicaSet api-old",),
         ("ReplicaSet api-old",)),
        ("mytool", "tool-mytool", "Deployment", "web",
         ("ReplicaSet web-7d9", "Pod web-7d9-a", "Pod web-7d9-b"),
         ("Deployment web", "ReplicaSet web-7d9", "Pod web-7d9-a", "Pod web-7d9-b")),
        ("other", "image-build", "PipelineRun", "old-builder", (), ("PipelineRun old-builder",)),
        ("other", "tool-other", "Pod", "debug", (), ("Pod debug",)),
    ]
    api_finding, web_finding, run_finding, _ = result.findings
    assert api_finding.message.startswith("ReplicaSet api-old: 1 image is not allowed")
    assert web_finding.message.startswith("1 image is not allowed in namespace \"tool-mytool\"")
    assert web_finding.reason == "ImageNotAllowed"
    assert "tools-harbor.wmcloud.org/toolforge/old:1" in run_finding.message
    assert run_finding.endpoints == ("validate-pipelineruns",)
    assert result.judged == 12  # not the two pods outside tool namespaces
    assert result.workloads == {"tool-mytool": 3, "tool-other": 1, "image-build": 2}
    assert dict(result.by_rule) == {"ImageNotAllowed": 3, "BuilderNotAllowed": 1}


def test_lists_are_read_in_pages(policy: Policy) -> None:
    objects = [pod(f"p{i}", OWN) for i in range(7)] + [pod("bad", BANNED)]
    api = FakeApi(objects)
    result = audit(api, policy, now=NOW, page_size=3)
    assert result.judged == 8
    assert [(plural, token) for plural, _, _, token in api.pages if plural == "pods"] == [
        ("pods", ""), ("pods", "3"), ("pods", "6")]
    assert [f.name for f in result.findings] == ["bad"]


def test_one_namespace_only_and_whatever_it_is(policy: Policy) -> None:
    api = FakeApi(cluster())
    result = audit(api, policy, now=NOW, namespace="ingress-nginx")
    assert {namespace for _, namespace, _, _ in api.pages} == {"ingress-nginx"}
    assert [(f.namespace, f.name, f.tool) for f in result.findings] == [
        ("ingress-nginx", "ingress", "")]


def test_in_the_build_namespace_only_the_builds_are_audited(policy: Policy) -> None:
    # Its pods are Tekton's, made for admitted runs; what a tool asked for is the run.
    build_pod = pod("old-builder-pod", BANNED, namespace="image-build")
    result = audit(FakeApi([*cluster(), build_pod]), policy, now=NOW, namespace="image-build")
    assert [(f.kind, f.name) for f in result.findings] == [("PipelineRun", "old-builder")]
    assert result.judged == 2


def test_a_run_is_judged_without_what_tekton_wrote_onto_it(policy: Policy) -> None:
    # The controller labels a run with its pipeline and copies the pipeline's own labels and
    # annotations onto it: none of that is the tool's doing.
    touched = run("touched", "mytool")
    touched["metadata"]["labels"].update({"tekton.dev/pipeline": "buildpacks",
                                          "app.kubernetes.io/version": "0.2"})
    touched["metadata"]["annotations"] = {"tekton.dev/pipelines.minVersion": "0.50.0"}
    old = run("old-builder", "other", builder="tools-harbor.wmcloud.org/toolforge/old:1")
    old["metadata"]["labels"]["tekton.dev/pipeline"] = "buildpacks"
    result = audit(FakeApi([touched, old]), policy, now=NOW, namespace="image-build")
    assert [(f.name, f.reason) for f in result.findings] == [("old-builder", "BuilderNotAllowed")]
    assert "tools-harbor.wmcloud.org/toolforge/old:1" in result.findings[0].message


def test_what_the_cluster_does_not_serve_is_noted_not_fatal(policy: Policy) -> None:
    served = {r.plural for r in audited_resources()} - {"pipelineruns"}
    result = audit(FakeApi(cluster(), served=served), policy, now=NOW)
    assert result.not_served == ("pipelineruns.tekton.dev",)
    assert all(f.kind != "PipelineRun" for f in result.findings)


def test_no_access_is_one_line_naming_the_role(policy: Policy) -> None:
    with pytest.raises(AuditError, match=r"may not list pods in all namespaces .*"
                                         r"toolforge-admission-audit-reader"):
        audit(FakeApi(cluster(), forbidden={"pods"}), policy, now=NOW)


def test_the_audited_kinds_are_those_the_endpoints_accept() -> None:
    from webhooks.offline import endpoints_for

    assert {r.kind for r in audited_resources()} == {
        "Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob",
        "PipelineRun"}
    assert all(endpoints_for(r.group, r.kind) for r in audited_resources())


def test_policy_reports_per_namespace_and_stale_ones_deleted(policy: Policy) -> None:
    stale = {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
             "metadata": {"name": REPORT_NAME, "namespace": "tool-gone",
                          "labels": {"app.kubernetes.io/managed-by": "toolforge-admission-audit"}}}
    objects = [*cluster(), stale]
    api = FakeApi(objects)
    result = audit(api, policy, now=NOW)
    note = publish_reports(api, result, NOW, policy.digest)
    assert note == "PolicyReports: 3 written, 1 stale deleted"
    assert api.deleted == [("policyreports", "tool-gone", REPORT_NAME)]
    report = api.written[("policyreports", "tool-mytool", REPORT_NAME)]
    assert report["apiVersion"] == "wgpolicyk8s.io/v1alpha2"
    assert report["summary"] == {"pass": 1, "fail": 2, "warn": 0, "error": 0, "skip": 0}
    web = next(r for r in report["results"] if r["resources"][0]["name"] == "web")
    assert web["result"] == "fail"
    assert web["rule"] == "ImageNotAllowed"
    assert web["resources"] == [{"apiVersion": "apps/v1", "kind": "Deployment",
                                 "namespace": "tool-mytool", "name": "web", "uid": "u-web"}]
    assert web["properties"]["tool"] == "mytool"
    assert web["timestamp"] == {"seconds": int(NOW.timestamp()), "nanos": 0}
    assert all(isinstance(v, str) for v in web["properties"].values())


def test_without_the_crd_it_says_so_and_writes_nothing(policy: Policy) -> None:
    served = {r.plural for r in audited_resources()}
    api = FakeApi(cluster(), served=served)
    result = audit(api, policy, now=NOW)
    note = publish_reports(api, result, NOW, policy.digest)
    assert note.startswith("PolicyReports not published: the API server does not serve "
                           "policyreports.wgpolicyk8s.io")
    assert api.written == {}


def test_the_summary_counts_findings_per_rule(policy: Policy) -> None:
    api = FakeApi(cluster())
    result = audit(api, policy, now=NOW)
    publish_summary(api, "toolforge-admission", summary(result, NOW, policy.digest))
    configmap = api.written[("configmaps", "toolforge-admission", SUMMARY_CONFIGMAP)]
    counts = json.loads(configmap["data"][SUMMARY_KEY])
    assert counts["time"] == NOW.timestamp()
    assert counts["findings"] == 4
    assert sum(counts["byRule"].values()) == 4
    assert counts["judged"] == 12


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "toolforge-admission-policy",
                              "namespace": "toolforge-admission"},
                 "data": {"policy.yaml": EXAMPLE_POLICY.read_text()}}
    api = FakeApi([*cluster(), configmap])
    monkeypatch.setattr("webhooks.inventory.KubernetesApi.from_environment",
                        classmethod(lambda cls, context=None: api))
    return api


def test_audit_command_reads_the_policy_in_force_and_exits_1(
        fake_cluster: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--now", "2027-01-15"]) == EXIT_DENIED
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["TOOL", "NAMESPACE", "KIND", "NAME", "OWNS", "REASON", "MESSAGE"]
    assert lines[2].split()[:7] == ["mytool", "tool-mytool", "Deployment", "web", "1",
                                    "ReplicaSet,", "2"]
    assert "against the ConfigMap toolforge-admission/toolforge-admission-policy" in captured.err
    assert "4 would be refused, of 2 tools" in captured.err


def test_audit_command_with_a_proposed_policy_and_json(
        fake_cluster: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proposed = yaml.safe_load(EXAMPLE_POLICY.read_text())
    proposed["registries"]["allowed"].append("docker.io/library")
    proposed["builds"]["builders"].append("tools-harbor.wmcloud.org/toolforge/old:1")
    path = tmp_path / "proposed.yaml"
    path.write_text(yaml.safe_dump(proposed))
    assert main(["audit", "--policy", str(path), "-o", "json"]) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert (document["kind"], document["findings"], document["judged"]) == (
        "AuditReport", [], 12)
    assert document["policy"]["source"] == str(path)


def test_audit_command_publishes_and_exits_0_when_told(
        fake_cluster: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--publish", "--exit-zero"]) == EXIT_OK
    assert ("configmaps", "toolforge-admission", SUMMARY_CONFIGMAP) in fake_cluster.written
    assert ("policyreports", "tool-other", REPORT_NAME) in fake_cluster.written
    assert "PolicyReports: 3 written, 0 stale deleted" in capsys.readouterr().err


def test_audit_command_without_a_policy_exits_2(fake_cluster: FakeApi,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake_cluster.objects = [o for o in fake_cluster.objects if o["kind"] != "ConfigMap"]
    assert main(["audit"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.splitlines() == [
        "error: the ConfigMap toolforge-admission/toolforge-admission-policy does not exist: "
        "give a policy with --policy FILE"]


# -- the metric ----------------------------------------------------------------------------------


def metrics_text(tmp_path: Path, summary_file: Path) -> str:
    from webhooks.app import EXTENSION, create_app

    app = create_app({"POLICY_FILE": str(EXAMPLE_POLICY), "POLICY_RELOAD_SECONDS": 0,
                      "TESTING": True, "AUDIT_SUMMARY_FILE": str(summary_file)})
    try:
        response = app.test_client().get("/metrics")
        assert response.status_code == 200
        return response.get_data(as_text=True)
    finally:
        app.extensions[EXTENSION].source.stop()


def test_the_webhook_exports_the_summary_the_audit_publishes(policy: Policy,
                                                              tmp_path: Path) -> None:
    api = FakeApi(cluster())
    result = audit(api, policy, now=NOW)
    publish_summary(api, "toolforge-admission", summary(result, NOW, policy.digest))
    configmap = api.written[("configmaps", "toolforge-admission", SUMMARY_CONFIGMAP)]
    # The kubelet writes the ConfigMap's key as a file in the webhook pods' volume.
    path = tmp_path / SUMMARY_KEY
    path.write_text(configmap["data"][SUMMARY_KEY])
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics_text(tmp_path, path).splitlines()
               if line.startswith("toolforge_admission_audit_")}
    assert samples == {
        'toolforge_admission_audit_findings{rule="BuilderNotAllowed"}': 1.0,
        'toolforge_admission_audit_findings{rule="ImageNotAllowed"}': 3.0,
        "toolforge_admission_audit_judged_objects": 12.0,
        "toolforge_admission_audit_tools_with_findings": 2.0,
        "toolforge_admission_audit_last_run_timestamp_seconds": NOW.timestamp(),
        "toolforge_admission_audit_run_duration_seconds": round(result.seconds, 3),
    }


@pytest.mark.parametrize("content", [None, b"", b"{not json", b'{"byRule": 3}', b"[]"])
def test_no_summary_or_a_broken_one_exports_nothing(tmp_path: Path,
                                                    content: bytes | None) -> None:
    path = tmp_path / SUMMARY_KEY
    if content is not None:
        path.write_bytes(content)
    text = metrics_text(tmp_path, path)
    assert "toolforge_admission_audit_" not in text
    assert "toolforge_admission_policy_valid" in text
