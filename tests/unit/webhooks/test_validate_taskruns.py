"""`POST /validate/taskruns` and the build-namespace side of `/validate/pods`, with the runs they
belong to looked up in a cluster held in memory (tests/buildruns.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from flask import Flask
from flask.testing import FlaskClient

from policies.owners import OwnerRef, controller_owner
from tests.builders import EXAMPLE_POLICY, make_review
from tests.buildruns import (
    CONTROLLER,
    MemoryCluster,
    captured_pod,
    captured_review,
    new_taskrun,
    objects_of,
    owner_reference,
)
from webhooks.app import EXTENSION, create_app
from webhooks.runs import BuildRuns, KubernetesTektonObjects, RunsUnavailableError

NAMESPACE = "image-build"
CONTROLLER_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:tekton-pipelines",
                     "system:authenticated")
GC = "system:serviceaccount:kube-system:generic-garbage-collector"
RUN, TASKRUN = objects_of(captured_pod())


@pytest.fixture
def cluster() -> MemoryCluster:
    return MemoryCluster(RUN, TASKRUN)


def make_app(tmp_path: Path, build_runs: object | None) -> Flask:
    path = tmp_path / "policy.yaml"
    path.write_bytes(EXAMPLE_POLICY.read_bytes())
    return create_app({"POLICY_FILE": str(path), "POLICY_RELOAD_SECONDS": 0, "TESTING": True,
                       "BUILD_RUNS": build_runs})


@pytest.fixture
def client(tmp_path: Path, cluster: MemoryCluster) -> Iterator[FlaskClient]:
    app = make_app(tmp_path, BuildRuns(cluster))
    yield app.test_client()
    app.extensions[EXTENSION].source.stop()


def post(client: FlaskClient, path: str, review: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=review)
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["response"]["uid"] == review["request"]["uid"]
    result: dict[str, Any] = response.json["response"]
    return result


def taskrun_review(obj: dict[str, Any] | None = None, *, resource: str = "taskruns",
                   username: str = CONTROLLER, groups: tuple[str, ...] = CONTROLLER_GROUPS,
                   operation: str = "CREATE", namespace: str = NAMESPACE,
                   old: dict[str, Any] | None = None) -> dict[str, Any]:
    review = make_review(obj if obj is not None else new_taskrun(RUN), resource=resource,
                         namespace=namespace, username=username, groups=groups,
                         operation=operation, old=old)
    if operation == "DELETE":
        review["request"]["object"] = None
    return review


def denial(response: dict[str, Any]) -> tuple[str, str]:
    assert response["allowed"] is False
    return response["auditAnnotations"]["reason"], response["status"]["message"]


# --- TaskRuns and CustomRuns --------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["taskruns", "customruns"])
def test_the_controller_creates_a_run_for_a_pipelinerun_that_exists(
        client: FlaskClient, cluster: MemoryCluster, resource: str) -> None:
    response = post(client, "/validate/taskruns", taskrun_review(resource=resource))
    assert response["allowed"] is True, response
    assert cluster.gets == [("pipelineruns", NAMESPACE, RUN["metadata"]["name"])]


@pytest.mark.parametrize("resource", ["taskruns", "customruns"])
def test_a_tool_may_not_create_a_run_even_for_its_own_pipelinerun(
        client: FlaskClient, cluster: MemoryCluster, resource: str) -> None:
    """The e2e harness's RBAC lets tools create TaskRuns in the build namespace; this is what
    stops a hand-made `export` step with the tool's own arguments."""
    review = taskrun_review(resource=resource, username="mytool",
                            groups=("toolforge", "system:authenticated"))
    reason, message = denial(post(client, "/validate/taskruns", review))
    kind = "TaskRun" if resource == "taskruns" else "CustomRun"
    assert reason == "RunNotFromTektonController"
    assert message == (f"only the Tekton controller creates {kind}s in the build namespace "
                       f'image-build; user "mytool" is not it ({CONTROLLER}): create a '
                       "PipelineRun and Tekton makes its TaskRuns")
    assert cluster.gets == []


def test_a_run_that_belongs_to_no_pipelinerun_is_refused(client: FlaskClient) -> None:
    taskrun = new_taskrun(RUN)
    taskrun["metadata"]["ownerReferences"][0]["controller"] = False
    reason, message = denial(post(client, "/validate/taskruns", taskrun_review(taskrun)))
    assert reason == "RunWithoutPipelineRun"
    assert "this one belongs to none" in message


@pytest.mark.parametrize("change", ["missing", "other-uid"])
def test_the_pipelinerun_must_exist_with_the_uid_the_run_names(
        client: FlaskClient, cluster: MemoryCluster, change: str) -> None:
    if change == "missing":
        cluster.objects.clear()
    else:
        cluster.objects = {key: {**obj, "metadata": {**obj["metadata"], "uid": "another"}}
                           for key, obj in cluster.objects.items()}
    reason, message = denial(post(client, "/validate/taskruns", taskrun_review()))
    assert reason == "RunWithoutPipelineRun"
    name, uid = RUN["metadata"]["name"], RUN["metadata"]["uid"]
    assert message == (f"a TaskRun in the build namespace must belong to a PipelineRun that "
                       f"exists: PipelineRun {name} (uid {uid}) does not exist")


BUILD_SA = "system:serviceaccount:image-build:buildpacks-service-account"
SA_GROUPS = ("system:serviceaccounts", "system:authenticated")
REFUSED = {
    "tool": ("other", ("toolforge", "system:authenticated")),
    # Every untrusted step of a build pod may hold this token (kube-api-access-*).
    "build-serviceaccount": (BUILD_SA, (*SA_GROUPS, "system:serviceaccounts:image-build")),
    "tool-namespace-serviceaccount": ("system:serviceaccount:tool-other:default",
                                      (*SA_GROUPS, "system:serviceaccounts:tool-other")),
    "person": ("alice", ("people", "system:authenticated")),
    # An admin not listed as a run manager deletes the PipelineRun instead.
    "admin": ("kubernetes-admin", ("system:masters", "system:authenticated")),
}
ALLOWED = {
    "controller": (CONTROLLER, CONTROLLER_GROUPS),
    "garbage-collector": (GC, SA_GROUPS),
    "namespace-controller": ("system:serviceaccount:kube-system:namespace-controller", SA_GROUPS),
    "system-user": ("system:serviceaccount:image-build:builds-api",
                    ("toolforge", "system:authenticated")),
}


def change_review(resource: str, operation: str, who: tuple[str, tuple[str, ...]],
                  sub_resource: str = "") -> dict[str, Any]:
    stored: dict[str, Any] = TASKRUN if resource == "taskruns" else CUSTOMRUN
    changed = None if operation == "DELETE" else {
        **stored, "spec": {**stored["spec"], "status": "TaskRunCancelled"}}
    review = make_review(changed, resource=resource, namespace=NAMESPACE, username=who[0],
                         groups=who[1], operation=operation, old=stored,
                         sub_resource=sub_resource)
    if operation == "DELETE":
        review["request"]["object"] = None
    return review


CUSTOMRUN: dict[str, Any] = {"apiVersion": "tekton.dev/v1beta1", "kind": "CustomRun",
             "metadata": {**TASKRUN["metadata"], "name": "mytool-wait"},
             "spec": {"customRef": {"apiVersion": "example.dev/v1", "kind": "Wait"}}}
CHANGES = [("taskruns", "UPDATE", ""), ("taskruns", "DELETE", ""), ("taskruns", "UPDATE", "status"),
           ("customruns", "UPDATE", ""), ("customruns", "DELETE", ""),
           ("customruns", "UPDATE", "status")]


@pytest.mark.parametrize("who", sorted(REFUSED))
@pytest.mark.parametrize(("resource", "operation", "sub_resource"), CHANGES)
def test_only_the_controller_the_run_managers_and_the_system_users_change_or_delete_runs(
        client: FlaskClient, who: str, resource: str, operation: str, sub_resource: str) -> None:
    username = REFUSED[who][0]
    review = change_review(resource, operation, REFUSED[who], sub_resource)
    reason, message = denial(post(client, "/validate/taskruns", review))
    assert reason == "RunChangeNotAllowed"
    kind = "TaskRun" if resource == "taskruns" else "CustomRun"
    what = (f"delete {kind}s" if operation == "DELETE" else f"write {resource}/status"
            if sub_resource else f"change {kind}s")
    assert message == (f"only the Tekton controller, the run managers and the system users may "
                       f"{what} in the build namespace image-build; user \"{username}\" may "
                       f"not: a {kind} follows its PipelineRun, so cancel or delete that instead")


@pytest.mark.parametrize("who", sorted(ALLOWED))
@pytest.mark.parametrize(("resource", "operation", "sub_resource"), CHANGES)
def test_the_controller_the_run_managers_and_the_system_users_may_change_and_delete_runs(
        client: FlaskClient, who: str, resource: str, operation: str, sub_resource: str) -> None:
    review = change_review(resource, operation, ALLOWED[who], sub_resource)
    assert post(client, "/validate/taskruns", review)["allowed"] is True


def test_a_run_manager_added_by_the_policy_may_change_runs(tmp_path: Path) -> None:
    # Another controller that writes TaskRuns (Tekton Chains, Results) is listed, not guessed.
    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE_POLICY.read_text().replace(
        "  runManagers:\n", "  runManagers:\n    - system:serviceaccount:tekton-chains:chains\n"))
    app = create_app({"POLICY_FILE": str(path), "POLICY_RELOAD_SECONDS": 0, "TESTING": True,
                      "BUILD_RUNS": None})
    try:
        chains = ("system:serviceaccount:tekton-chains:chains", SA_GROUPS)
        for resource, operation, sub_resource in CHANGES:
            review = change_review(resource, operation, chains, sub_resource)
            assert post(app.test_client(), "/validate/taskruns", review)["allowed"] is True
    finally:
        app.extensions[EXTENSION].source.stop()


# --- Tasks, Pipelines and StepActions in the build namespace -------------------------------------

DEFINITIONS = [("tasks", "v1", "Task"), ("pipelines", "v1", "Pipeline"),
               ("pipelines", "v1beta1", "Pipeline"), ("stepactions", "v1beta1", "StepAction"),
               ("stepactions", "v1alpha1", "StepAction")]
DEFINITION_CHANGES = [("CREATE", "create"), ("UPDATE", "change"), ("DELETE", "delete")]
TENANTS = {
    "tool": (("mytool", ("toolforge", "system:authenticated")), "a tool account"),
    "build-serviceaccount": (REFUSED["build-serviceaccount"],
                             "a ServiceAccount of the build namespace"),
    "tool-namespace-serviceaccount": (REFUSED["tool-namespace-serviceaccount"],
                                      "a ServiceAccount of a tool's namespace"),
}
NOT_TENANTS = {
    "admin": ("kubernetes-admin", ("system:masters", "system:authenticated")),
    "controller": (CONTROLLER, CONTROLLER_GROUPS),
    "namespace-controller": ALLOWED["namespace-controller"],
    # A system user in the tools' group and the build namespace: the builds API.
    "system-user": ALLOWED["system-user"],
    # Not a tool namespace: the pattern is tool-{tool}.
    "other-serviceaccount": ("system:serviceaccount:argocd:argocd-application-controller",
                             SA_GROUPS),
}


def definition_review(kind: tuple[str, str, str], operation: str,
                      who: tuple[str, tuple[str, ...]], *, namespace: str = NAMESPACE,
                      ) -> dict[str, Any]:
    resource, version, kind_name = kind
    stored = {"apiVersion": f"tekton.dev/{version}", "kind": kind_name,
              "metadata": {"name": "buildpacks", "namespace": namespace},
              "spec": {"steps": [{"name": "build", "image": "docker.io/library/busybox:1"}]}}
    changed = {**stored, "spec": {"steps": [{"name": "build", "image": "evil.example/x:1"}]}}
    review = make_review(None if operation == "DELETE" else changed, resource=resource,
                         namespace=namespace, username=who[0], groups=who[1],
                         operation=operation, old=None if operation == "CREATE" else stored,
                         kind=("tekton.dev", version, kind_name))
    if operation == "DELETE":
        review["request"]["object"] = None
        review["request"]["name"] = "buildpacks"
    return review


@pytest.mark.parametrize("who", sorted(TENANTS))
@pytest.mark.parametrize(("operation", "verb"), DEFINITION_CHANGES)
@pytest.mark.parametrize("kind", DEFINITIONS, ids=lambda kind: f"{kind[2]}-{kind[1]}")
def test_no_tenant_identity_writes_the_build_namespaces_tasks_pipelines_or_stepactions(
        client: FlaskClient, who: str, operation: str, verb: str,
        kind: tuple[str, str, str]) -> None:
    (username, groups), why = TENANTS[who]
    review = definition_review(kind, operation, (username, groups))
    reason, message = denial(post(client, "/validate/taskruns", review))
    assert reason == "BuildDefinitionChangeRefused"
    assert message == (
        f"{kind[2]}s in the build namespace image-build define what every tool's build runs; "
        f"user \"{username}\" ({why}) may not {verb} them: the platform admins manage them")


@pytest.mark.parametrize("who", sorted(NOT_TENANTS))
@pytest.mark.parametrize(("operation", "verb"), DEFINITION_CHANGES)
@pytest.mark.parametrize("kind", DEFINITIONS, ids=lambda kind: f"{kind[2]}-{kind[1]}")
def test_admins_controllers_and_system_users_are_left_to_rbac_for_definitions(
        client: FlaskClient, who: str, operation: str, verb: str,
        kind: tuple[str, str, str]) -> None:
    review = definition_review(kind, operation, NOT_TENANTS[who])
    assert post(client, "/validate/taskruns", review)["allowed"] is True


def test_a_tools_own_tasks_are_not_this_rules(client: FlaskClient) -> None:
    review = definition_review(DEFINITIONS[0], "UPDATE", TENANTS["tool"][0],
                               namespace="tool-mytool")
    assert post(client, "/validate/taskruns", review)["allowed"] is True


def test_runs_outside_the_build_namespace_are_not_this_rules(client: FlaskClient) -> None:
    review = taskrun_review(namespace="tool-mytool", username="mytool",
                            groups=("toolforge", "system:authenticated"))
    assert post(client, "/validate/taskruns", review)["allowed"] is True


def test_an_unreachable_cluster_refuses_the_run(tmp_path: Path) -> None:
    cluster = MemoryCluster(error=RunsUnavailableError("reading pipelineruns failed: HTTP 503"))
    app = make_app(tmp_path, BuildRuns(cluster))
    try:
        reason, message = denial(post(app.test_client(), "/validate/taskruns",
                                      taskrun_review()))
    finally:
        app.extensions[EXTENSION].source.stop()
    assert reason == "BuildRunsUnavailable"
    assert message.startswith("could not look up the PipelineRun this TaskRun belongs to, so it "
                              "was not created: Tekton tries again")
    assert message.endswith("(cause: reading pipelineruns failed: HTTP 503)")


def test_without_a_cluster_the_run_is_admitted_with_a_warning(tmp_path: Path) -> None:
    app = make_app(tmp_path, None)
    try:
        response = post(app.test_client(), "/validate/taskruns", taskrun_review())
    finally:
        app.extensions[EXTENSION].source.stop()
    assert response["allowed"] is True
    assert response["warnings"] == [f"the PipelineRun {RUN['metadata']['name']} of this TaskRun "
                                    "was not looked up (no cluster connection)"]


# --- build pods: the captured review, mutated, then validated -----------------------------------


def mutated_review(scenario: str = "c-pipelinerun-phases-0.2-basic-auth",
                   client: FlaskClient | None = None) -> dict[str, Any]:
    """The captured review, its object patched by /mutate/build-pods as the API server would."""
    review = captured_review(scenario)
    assert client is not None
    response = post(client, "/mutate/build-pods", review)
    patch = json.loads(base64.b64decode(response["patch"]))
    review["request"]["object"] = jsonpatch.apply_patch(review["request"]["object"], patch)
    return review


def test_the_captured_build_pod_of_a_pipelinerun_is_admitted(
        client: FlaskClient, cluster: MemoryCluster) -> None:
    response = post(client, "/validate/pods", mutated_review(client=client))
    assert response["allowed"] is True, response
    assert cluster.gets == [("taskruns", NAMESPACE, TASKRUN["metadata"]["name"]),
                            ("pipelineruns", NAMESPACE, RUN["metadata"]["name"])]


def test_a_build_pod_whose_export_is_not_its_runs_app_image_is_refused(
        client: FlaskClient, cluster: MemoryCluster) -> None:
    victim = "tools-harbor.wmcloud.org/tool-victim/victim:latest"
    cluster.add(objects_of(captured_pod(), app_image=victim)[0])
    reason, message = denial(post(client, "/validate/pods", mutated_review(client=client)))
    assert reason == "TrustedStepTarget"
    assert f'its PipelineRun\'s APP_IMAGE is "{victim}"' in message


def test_the_pod_of_a_taskrun_without_a_pipelinerun_is_refused(
        client: FlaskClient, cluster: MemoryCluster) -> None:
    review = mutated_review("a-taskrun-phases-0.2-basic-auth", client)
    pod = review["request"]["object"]
    owner = pod["metadata"]["ownerReferences"][0]
    cluster.add({"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                 "metadata": {"name": owner["name"], "namespace": NAMESPACE,
                              "uid": owner["uid"]}})
    review["request"]["namespace"] = NAMESPACE  # scenario a was captured in image-build
    reason, message = denial(post(client, "/validate/pods", review))
    assert reason == "BuildRunUnknown"
    assert message.endswith(f"its TaskRun {owner['name']} belongs to no PipelineRun")


def test_a_build_pod_made_by_a_tool_is_refused(client: FlaskClient) -> None:
    review = mutated_review(client=client)
    review["request"]["userInfo"] = {"username": "mytool",
                                     "groups": ["toolforge", "system:authenticated"]}
    reason, message = denial(post(client, "/validate/pods", review))
    assert reason == "PodNotFromTektonController"
    assert message.startswith(f"only the Tekton controller ({CONTROLLER}) creates pods")


def test_an_unreachable_cluster_refuses_the_build_pod(tmp_path: Path) -> None:
    cluster = MemoryCluster(error=RunsUnavailableError("reading taskruns failed: HTTP 500"))
    app = make_app(tmp_path, BuildRuns(cluster))
    try:
        client = app.test_client()
        reason, message = denial(post(client, "/validate/pods", mutated_review(client=client)))
    finally:
        app.extensions[EXTENSION].source.stop()
    assert reason == "BuildRunsUnavailable"
    assert message.startswith("could not look up the PipelineRun this pod belongs to, so it "
                              "was not created: start the build again")


# --- the lookups themselves ---------------------------------------------------------------------


def test_owner_references_are_read_only_from_controlling_tekton_owners() -> None:
    reference = owner_reference(RUN)
    assert controller_owner({"metadata": {"ownerReferences": [reference]}}, "PipelineRun") == \
        OwnerRef("PipelineRun", RUN["metadata"]["name"], RUN["metadata"]["uid"])
    for change in ({"controller": False}, {"apiVersion": "evil.dev/v1"}, {"uid": ""},
                   {"kind": "TaskRun"}, {"name": 3}):
        other = {"metadata": {"ownerReferences": ["x", {**reference, **change}]}}
        assert controller_owner(other, "PipelineRun") is None, change
    assert controller_owner({"metadata": {"ownerReferences": "x"}}, "PipelineRun") is None
    assert controller_owner(None, "PipelineRun") is None


def test_the_deadline_covers_both_lookups() -> None:
    clock = iter([0.0, 0.5, 2.0])
    runs = BuildRuns(MemoryCluster(RUN, TASKRUN), budget_seconds=1.5,
                     monotonic=lambda: next(clock))
    with pytest.raises(RunsUnavailableError, match=r"did not answer within 1\.5 s"):
        runs.pipelinerun_of_pod(NAMESPACE, captured_pod())


class FailingApi:
    def __init__(self, status: int | None) -> None:
        self.status = status

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        error = Exception("failed")
        error.status = self.status  # type: ignore[attr-defined]
        error.reason = "Service Unavailable" if self.status else OSError("reset")  # type: ignore[attr-defined]
        raise error


def test_the_kubernetes_reader_maps_404_to_none_and_other_errors_to_unavailable() -> None:
    assert KubernetesTektonObjects(FailingApi(404)).get("taskruns", "ns", "x", 1.0) is None
    with pytest.raises(RunsUnavailableError, match="reading taskruns ns/x failed: HTTP 503"):
        KubernetesTektonObjects(FailingApi(503)).get("taskruns", "ns", "x", 1.0)
    with pytest.raises(RunsUnavailableError, match="OSError: reset"):
        KubernetesTektonObjects(FailingApi(None)).get("taskruns", "ns", "x", 1.0)


# --- exec, attach, port-forward and proxy into build pods ---------------------------------------


def connect_review(sub_resource: str, *, namespace: str = NAMESPACE, username: str = "mytool",
                   groups: tuple[str, ...] = ("toolforge", "system:authenticated"),
                   ) -> dict[str, Any]:
    kind = {"exec": "PodExecOptions", "attach": "PodAttachOptions",
            "portforward": "PodPortForwardOptions", "proxy": "PodProxyOptions"}[sub_resource]
    options = {"kind": kind, "apiVersion": "v1", "container": "step-export",
               "command": ["cat", "/tekton/creds-secrets/basic-user-pass/password"]}
    return make_review(options, resource="pods", namespace=namespace, username=username,
                       groups=groups, operation="CONNECT", sub_resource=sub_resource,
                       kind=("", "v1", kind))


@pytest.mark.parametrize("sub_resource", ["exec", "attach", "portforward", "proxy"])
@pytest.mark.parametrize(("username", "groups"), [
    ("mytool", ("toolforge", "system:authenticated")),
    ("kubernetes-admin", ("system:masters", "system:authenticated")),
], ids=["tool", "admin"])
def test_nobody_gets_a_shell_or_a_port_into_a_build_pod(
        client: FlaskClient, sub_resource: str, username: str, groups: tuple[str, ...]) -> None:
    review = connect_review(sub_resource, username=username, groups=groups)
    reason, message = denial(post(client, "/validate/build-pod-access", review))
    assert reason == "BuildPodAccessRefused"
    assert message == (
        "pods in the build namespace image-build hold other tools' builds and the registry "
        f"credentials; {sub_resource} into them is refused for user \"{username}\": read a "
        "build's logs instead")


def test_exec_elsewhere_is_not_this_rules(client: FlaskClient) -> None:
    review = connect_review("exec", namespace="tool-mytool")
    assert post(client, "/validate/build-pod-access", review)["allowed"] is True
