"""POST /validate/pipelineruns: the verdict the API server gets for each operation and requester."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from policies.slots import Claim, Reservation
from tests.builders import make_review
from tests.pipelineruns import POLICY_YAML, builds_api_run, run_for
from tests.unit.webhooks.fakes import FakeCluster
from webhooks.app import EXTENSION, create_app
from webhooks.slots import LeaseSlots, SlotsUnavailableError

PATH = "/validate/pipelineruns"
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
V1BETA1 = ("tekton.dev", "v1", "PipelineRun")


class Unreachable:
    """An ActiveRuns whose API server cannot be reached."""

    def claim(self, tool: str, candidate: Reservation, *, limit: int, label: str,
              reserve: bool) -> Claim:
        raise SlotsUnavailableError("reading failed: ConnectionRefusedError: refused")


def make_app(tmp_path: Path, active_runs: object | None, policy: str = POLICY_YAML) -> Flask:
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    return create_app({"POLICY_FILE": str(path), "POLICY_RELOAD_SECONDS": 0, "TESTING": True,
                       "ACTIVE_RUNS": active_runs, "CLOCK": lambda: NOW})


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def client(tmp_path: Path, cluster: FakeCluster) -> Iterator[FlaskClient]:
    app = make_app(tmp_path, LeaseSlots(cluster, cluster))
    yield app.test_client()
    app.extensions[EXTENSION].source.stop()


def post(client: FlaskClient, obj: dict[str, Any] | None, **options: Any) -> dict[str, Any]:
    options.setdefault("namespace", "image-build")
    options.setdefault("username", "mytool")
    review = make_review(obj, resource="pipelineruns", **options)
    response = client.post(PATH, json=review)
    assert response.status_code == 200
    assert response.json is not None
    answer: dict[str, Any] = response.json["response"]
    assert answer["uid"] == review["request"]["uid"]
    assert "patch" not in answer
    return answer


@pytest.mark.parametrize("shape", ["v1", "v1beta1"])
def test_a_good_run_is_admitted_and_a_second_one_is_refused_naming_the_first(
        client: FlaskClient, cluster: FakeCluster, shape: str) -> None:
    assert post(client, run_for(uid="u1", shape=shape))["allowed"]
    cluster.add_run("mytool", "u1")
    denied = post(client, run_for(uid="u2", shape=shape))
    assert not denied["allowed"]
    assert denied["status"]["reason"] == "Forbidden"
    assert "mytool-buildpacks-pipelinerun-u1" in denied["status"]["message"] or (
        "run-u1" in denied["status"]["message"])
    assert "kubectl patch pipelinerun" in denied["status"]["message"]
    assert denied["auditAnnotations"]["reason"] == "TooManyActiveRuns"


def test_a_v1beta1_body_labelled_v1_is_checked_by_its_v1beta1_fields(
        client: FlaskClient) -> None:
    run = run_for(shape="v1beta1", serviceAccountName="admin", timeout="0")
    answer = post(client, run, kind=V1BETA1)
    assert not answer["allowed"]
    assert "spec.serviceAccountName" in answer["status"]["message"]
    assert "spec.timeout \"0\" is 0 as Tekton reads it" in answer["status"]["message"]


def test_another_tool_is_never_blocked(client: FlaskClient) -> None:
    assert post(client, run_for(uid="u1"))["allowed"]
    assert post(client, run_for(tool="othertool", uid="o1"), username="othertool")["allowed"]


def test_a_dry_run_gets_the_same_verdict_and_reserves_nothing(
        client: FlaskClient, cluster: FakeCluster) -> None:
    assert post(client, run_for(uid="u1"), dry_run=True)["allowed"]
    assert cluster.writes == 0
    assert post(client, run_for(uid="u2"))["allowed"]
    refused = post(client, run_for(uid="u3"), dry_run=True)
    assert not refused["allowed"]
    assert "at most 1" in refused["status"]["message"]


def test_a_refused_run_reserves_nothing_but_still_reports_a_full_slot(
        client: FlaskClient, cluster: FakeCluster) -> None:
    bad = run_for(uid="u1", pipelineRef={"name": "evil"})
    assert not post(client, bad)["allowed"]
    assert cluster.writes == 0
    assert post(client, run_for(uid="u2"))["allowed"]
    both = post(client, run_for(uid="u3", pipelineRef={"name": "evil"}))
    assert "not approved" in both["status"]["message"]
    assert "at most 1" in both["status"]["message"]


@pytest.mark.parametrize(("namespace", "username", "groups", "text"), [
    pytest.param("image-build", "mytool", ("system:authenticated",), "not in any of the groups",
                 id="human-with-a-tools-name"),
    pytest.param("image-build", "system:admin", ("system:masters",), "not a tool account",
                 id="cluster-admin"),
    pytest.param("tool-mytool", "mytool", ("toolforge",),
                 "may only be created in the build namespace image-build",
                 id="own-tool-namespace"),
    pytest.param("default", "mytool", ("toolforge",), "may only be created",
                 id="unrelated-namespace"),
])
def test_requesters_who_are_not_the_tool_are_refused_saying_why(
        client: FlaskClient, namespace: str, username: str, groups: tuple[str, ...],
        text: str) -> None:
    answer = post(client, run_for(), namespace=namespace, username=username, groups=groups)
    assert not answer["allowed"]
    assert text in answer["status"]["message"]


def test_a_system_user_builds_for_the_tool_of_the_app_image_project(client: FlaskClient) -> None:
    answer = post(client, run_for(tool="othertool"),
                  username="system:serviceaccount:image-build:builds-api",
                  groups=("system:serviceaccounts",))
    assert answer["allowed"]


def test_a_missing_tool_label_is_refused_with_the_label_to_set(client: FlaskClient) -> None:
    run = run_for()
    del run["metadata"]["labels"]
    answer = post(client, run)
    assert not answer["allowed"]
    assert "set metadata.labels toolforge.org/tool=mytool" in answer["status"]["message"]


@pytest.mark.parametrize("shape", ["v1", "v1beta1"])
@pytest.mark.parametrize(("change", "allowed"), [
    pytest.param({"status": "Cancelled"}, True, id="cancel"),
    pytest.param({"status": "StoppedRunFinally"}, True, id="stop"),
    pytest.param({}, True, id="metadata-only"),
    pytest.param({"pipelineRef": {"name": "evil"}}, False, id="spec-change"),
])
def test_updates_pass_unless_the_spec_changes_beyond_stopping(
        client: FlaskClient, shape: str, change: dict[str, Any], allowed: bool) -> None:
    old = run_for(shape=shape)
    new = copy.deepcopy(old)
    new["spec"].update(change)
    new["metadata"]["finalizers"] = ["x"]
    # Even a full slot or an unapproved builder never blocks an UPDATE.
    new["spec"]["params"][1]["value"] = old["spec"]["params"][1]["value"] = "retired/builder:1"
    answer = post(client, new, operation="UPDATE", old=old,
                  username="system:serviceaccount:tekton-pipelines:tekton-pipelines-controller")
    assert answer["allowed"] is allowed


TEKTON = "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller"
FINISHED = {"conditions": [{"type": "Succeeded", "status": "True"}]}


@pytest.mark.parametrize(("username", "groups", "allowed"), [
    pytest.param(TEKTON, ("system:serviceaccounts",), True, id="tekton-controller"),
    pytest.param("system:serviceaccount:image-build:builds-api", ("system:serviceaccounts",),
                 True, id="system-user"),
    pytest.param("mytool", ("toolforge",), False, id="the-runs-own-tool"),
    pytest.param("othertool", ("toolforge",), False, id="another-tool"),
])
def test_only_tekton_and_the_system_users_write_a_runs_status(
        client: FlaskClient, username: str, groups: tuple[str, ...], allowed: bool) -> None:
    # A tool that marked its own run finished would free its slot while the build goes on.
    old = run_for()
    new = copy.deepcopy(old)
    new["status"] = FINISHED
    answer = post(client, new, operation="UPDATE", old=old, sub_resource="status",
                  username=username, groups=groups)
    assert answer["allowed"] is allowed
    if not allowed:
        assert answer["auditAnnotations"]["reason"] == "RunNotOwned"
        assert "may write pipelineruns/status" in answer["status"]["message"]


def test_the_tool_label_cannot_change_on_update(client: FlaskClient) -> None:
    old = run_for()
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["toolforge.org/tool"] = "othertool"
    answer = post(client, new, operation="UPDATE", old=old)
    assert not answer["allowed"]
    assert "cannot change" in answer["status"]["message"]


def cancelled(run: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(run)
    new["spec"]["status"] = "Cancelled"
    return new


def relabelled(run: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(run)
    new["metadata"]["annotations"] = {"example.org/note": "mine now"}
    return new


def released(run: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(run)
    del new["spec"]["status"]
    return new


@pytest.mark.parametrize(("operation", "change"), [
    pytest.param("UPDATE", cancelled, id="cancel"),
    pytest.param("UPDATE", relabelled, id="annotate"),
    pytest.param("UPDATE", released, id="release-pending"),
    pytest.param("DELETE", None, id="delete"),
])
@pytest.mark.parametrize(("username", "groups", "allowed"), [
    pytest.param("mytool", ("toolforge",), True, id="owner"),
    pytest.param("othertool", ("toolforge",), False, id="another-tool"),
    pytest.param("mytool", ("system:authenticated",), False, id="person-named-like-the-owner"),
    pytest.param("system:serviceaccount:image-build:builds-api", ("system:serviceaccounts",),
                 True, id="system-user"),
    pytest.param(TEKTON, ("system:serviceaccounts",), True, id="tekton-controller"),
    pytest.param("system:serviceaccount:kube-system:namespace-controller", (), True,
                 id="namespace-controller"),
    pytest.param("admin", ("system:masters",), False, id="cluster-admin-is-no-run-manager"),
])
def test_only_the_owner_the_system_users_and_the_run_managers_change_or_delete_a_run(
        client: FlaskClient, operation: str, change: Any, username: str,
        groups: tuple[str, ...], allowed: bool) -> None:
    old = run_for(status="PipelineRunPending")
    new = change(old) if change is not None else None
    answer = post(client, new, operation=operation, old=old, username=username, groups=groups)
    assert answer["allowed"] is allowed, answer
    if not allowed:
        verb = "delete" if operation == "DELETE" else "change"
        assert answer["auditAnnotations"]["reason"] == "RunNotOwned"
        assert (f'user "{username}" may not {verb} the PipelineRun '
                "mytool-buildpacks-pipelinerun-u1: it belongs to the tool mytool, and only its "
                "tool, the system users and the run managers may") in answer["status"]["message"]


@pytest.mark.parametrize(("options", "allowed"), [
    pytest.param({"propagationPolicy": "Orphan"}, False, id="kubectl-cascade-orphan"),
    pytest.param({"orphanDependents": True}, False, id="legacy-orphan-dependents"),
    pytest.param({"propagationPolicy": "Background"}, True, id="kubectl-default"),
    pytest.param({"propagationPolicy": "Foreground"}, True, id="foreground"),
])
def test_a_tool_deleting_its_run_may_not_orphan_its_builds(
        client: FlaskClient, options: dict[str, Any], allowed: bool) -> None:
    old = run_for()
    answer = post(client, None, operation="DELETE", old=old, options=options)
    assert answer["allowed"] is allowed, answer
    if not allowed:
        assert answer["auditAnnotations"]["reason"] == "OrphaningNotAllowed"
        assert answer["status"]["message"].startswith(
            "deleting the PipelineRun mytool-buildpacks-pipelinerun-u1 with ")
    builds_api = post(client, None, operation="DELETE", old=old, options=options,
                      username="system:serviceaccount:image-build:builds-api",
                      groups=("system:serviceaccounts",))
    assert builds_api["allowed"]


def test_a_run_without_a_tool_label_belongs_to_no_tool(client: FlaskClient) -> None:
    old = run_for()
    del old["metadata"]["labels"]
    answer = post(client, None, operation="DELETE", old=old)
    assert not answer["allowed"]
    assert "it belongs to no tool (no valid toolforge.org/tool label)" in \
        answer["status"]["message"]
    assert post(client, None, operation="DELETE", old=old, username=TEKTON)["allowed"]


def test_a_legacy_run_in_a_tools_namespace_belongs_to_that_tool(client: FlaskClient) -> None:
    old = run_for(tool="othertool")  # its label says othertool; the namespace decides
    assert post(client, None, operation="DELETE", old=old, namespace="tool-mytool")["allowed"]
    refused = post(client, None, operation="DELETE", old=old, namespace="tool-mytool",
                   username="othertool")
    assert not refused["allowed"]


def test_exempt_namespaces_are_not_checked(client: FlaskClient) -> None:
    assert post(client, run_for(pipelineSpec={"tasks": []}), namespace="kube-system")["allowed"]


def test_an_unreachable_api_server_is_a_clear_denial(tmp_path: Path) -> None:
    app = make_app(tmp_path, Unreachable())
    answer = post(app.test_client(), run_for())
    app.extensions[EXTENSION].source.stop()
    assert not answer["allowed"]
    message = answer["status"]["message"]
    assert "could not check how many PipelineRuns the tool mytool has running, so this run " \
           "was not created: try again in a minute" in message
    assert message.endswith("(cause: reading failed: ConnectionRefusedError: refused)")


def test_without_a_cluster_the_slot_check_is_skipped_with_a_warning(tmp_path: Path) -> None:
    app = make_app(tmp_path, None)
    answer = post(app.test_client(), run_for())
    app.extensions[EXTENSION].source.stop()
    assert answer["allowed"]
    assert any("was not checked" in w for w in answer["warnings"])


def test_warn_mode_admits_with_every_finding_as_a_warning(tmp_path: Path) -> None:
    app = make_app(tmp_path, None, POLICY_YAML.replace("  maxTimeout: 1h",
                                                       "  maxTimeout: 1h\n  mode: warn"))
    answer = post(app.test_client(), run_for(pipelineRef={"name": "evil"}, timeout="0"))
    app.extensions[EXTENSION].source.stop()
    assert answer["allowed"]
    assert len(answer["warnings"]) >= 2


def test_a_wrong_active_runs_object_fails_closed(tmp_path: Path) -> None:
    app = make_app(tmp_path, object())
    answer = post(app.test_client(), run_for())
    app.extensions[EXTENSION].source.stop()
    assert not answer["allowed"]
    assert answer["status"]["message"].startswith("validate-pipelineruns could not evaluate")


# --- Toolforge's builds API through the toolforge overlay's policy -------------------------------

OVERLAY_POLICY = (Path(__file__).resolve().parents[3] / "manifests" / "overlays" / "toolforge"
                  / "policy.yaml")
BUILDS_API = "system:serviceaccount:image-build:builds-api"


@pytest.mark.parametrize("shape", ["v1", "v1beta1"])
def test_the_builds_apis_run_passes_the_toolforge_overlay_and_takes_the_tools_slot(
        tmp_path: Path, cluster: FakeCluster, shape: str) -> None:
    app = make_app(tmp_path, LeaseSlots(cluster, cluster), policy=OVERLAY_POLICY.read_text())
    client = app.test_client()
    try:
        first = builds_api_run(
            "mytool", shape=shape, name="mytool-buildpacks-pipelinerun-abcde")
        admitted = post(client, first, username=BUILDS_API,
                        groups=("system:serviceaccounts", "system:authenticated"))
        assert admitted["allowed"], admitted
        second = builds_api_run(
            "mytool", shape=shape, name="mytool-buildpacks-pipelinerun-fghij")
        refused = post(client, second, username=BUILDS_API,
                       groups=("system:serviceaccounts", "system:authenticated"))
        assert not refused["allowed"]
        assert refused["auditAnnotations"]["reason"] == "TooManyActiveRuns"
        assert "image-build/mytool-buildpacks-pipelinerun-abcde" in refused["status"]["message"]
        # Another tool's run is its own business.
        other = builds_api_run(
            "other", shape=shape, name="other-buildpacks-pipelinerun-abcde")
        assert post(client, other, username=BUILDS_API)["allowed"]
    finally:
        app.extensions[EXTENSION].source.stop()


def test_the_builds_apis_run_for_another_tools_label_is_refused(tmp_path: Path,
                                                                cluster: FakeCluster) -> None:
    app = make_app(tmp_path, LeaseSlots(cluster, cluster), policy=OVERLAY_POLICY.read_text())
    try:
        run = builds_api_run(
            "mytool", shape="v1", name="mytool-buildpacks-pipelinerun-abcde")
        run["metadata"]["labels"]["user"] = "other"
        refused = post(app.test_client(), run, username=BUILDS_API)
        assert not refused["allowed"]
        assert "set metadata.labels user=mytool" in refused["status"]["message"]
    finally:
        app.extensions[EXTENSION].source.stop()
