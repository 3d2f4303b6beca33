"""Who may touch a run, and where runs may be, through the real API server.

Two fresh tools share the build namespace with RBAC that lets each of them do anything to every
PipelineRun there (`ControlPlane.grant`: verbs `*` on pipelineruns, namespace-wide, as Toolforge's
old `tool-tekton-access` Role did), and one of them may also write `pipelineruns/status`. The
suite alone keeps each tool to its own runs: cancelling, releasing, relabelling, annotating or
deleting another tool's run is refused, while its own tool, the system users (the builds API)
and Tekton's controller keep working. Not even its own tool may orphan a run's TaskRuns (delete
options, the `orphan` finalizer), which would free its active-run slot while the build runs on,
nor give it labels or annotations the policy does not list (Tekton copies them onto the pods).
PipelineRuns are refused outside the build namespace, a tool's own namespace included.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import BUILD_NAMESPACE, ControlPlane, Suite, wait_for
from tests.e2e.objects import delete_runs, pipelinerun, unique

DENIED = 'admission webhook "pipelineruns.toolforge-admission.toolforge.org" denied the request'
CANCEL = json.dumps({"spec": {"status": "Cancelled"}})
FINISHED = json.dumps({"status": {"conditions": [
    {"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "forged"}]}})


def account(cp: ControlPlane, tool: str) -> pathlib.Path:
    cp.grant(tool, [BUILD_NAMESPACE])
    return cp.user_kubeconfig(tool, ["toolforge"])


def allow_status_writes(cp: ControlPlane, tool: str) -> None:
    """RBAC for the tool to patch pipelineruns/status, which no real tool role grants."""
    cp.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "e2e-status-writer", "namespace": BUILD_NAMESPACE},
         "rules": [{"apiGroups": ["tekton.dev"], "resources": ["pipelineruns/status"],
                    "verbs": ["get", "patch", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"e2e-status-{tool}", "namespace": BUILD_NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "e2e-status-writer"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": tool}]},
    ])
    wait_for(f"RBAC to let {tool} patch pipelineruns/status", lambda: cp.kubectl(
        "auth", "can-i", "patch", "pipelineruns.tekton.dev", "--subresource=status",
        "-n", BUILD_NAMESPACE, f"--as={tool}", check=False).stdout.strip() == "yes", 30)


def stored(cp: ControlPlane, name: str) -> dict[str, Any]:
    run: dict[str, Any] = cp.get_json("-n", BUILD_NAMESPACE, "pipelinerun", name)
    return run


@pytest.fixture
def two_tools(control_plane: ControlPlane) -> Any:
    """(owner, its kubeconfig, intruder, its kubeconfig): fresh tools, cleaned up after."""
    owner, intruder = f"o{uuid.uuid4().hex[:8]}", f"i{uuid.uuid4().hex[:8]}"
    accounts = (account(control_plane, owner), account(control_plane, intruder))
    yield owner, accounts[0], intruder, accounts[1]
    delete_runs(control_plane, owner)
    delete_runs(control_plane, intruder)


def test_another_tool_cannot_cancel_release_relabel_or_delete_a_run(
        control_plane: ControlPlane, live_suite: Suite, two_tools: Any) -> None:
    owner, owner_account, intruder, intruder_account = two_tools
    run = pipelinerun(unique(f"{owner}-buildpacks-pipelinerun"), owner)
    run["spec"]["status"] = "PipelineRunPending"  # held, so that only we change it
    name = run["metadata"]["name"]
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(run), user=owner_account)
    before = stored(control_plane, name)

    attempts = {
        "cancel": ("patch", "pipelinerun", name, "--type=merge", "-p", CANCEL),
        "release": ("patch", "pipelinerun", name, "--type=json",
                    "-p", '[{"op": "remove", "path": "/spec/status"}]'),
        "relabel": ("label", "pipelinerun", name, "--overwrite", "extra=mine"),
        "annotate": ("annotate", "pipelinerun", name, "note=mine"),
        "delete": ("delete", "pipelinerun", name, "--wait=false"),
    }
    for what, args in attempts.items():
        result = control_plane.kubectl("-n", BUILD_NAMESPACE, *args, user=intruder_account,
                                       check=False)
        assert result.returncode != 0, (what, result.stdout)
        assert DENIED in result.stderr, (what, result.stderr)
        verb = "delete" if what == "delete" else "change"
        assert f'user "{intruder}" may not {verb} the PipelineRun {name}: it belongs to the ' \
               f"tool {owner}" in result.stderr, (what, result.stderr)
    entries = live_suite.reviews(endpoint="validate-pipelineruns", name=name, user=intruder)
    assert {e["operation"] for e in entries} == {"UPDATE", "DELETE"}, entries
    assert {(e["decision"], e["reason"]) for e in entries} == {("denied", "RunNotOwned")}
    after = stored(control_plane, name)
    assert after["spec"] == before["spec"]
    assert after["metadata"].get("labels", {}).get("extra") is None
    assert "note" not in (after["metadata"].get("annotations") or {})

    # Its own tool may do all of it, but for labels and annotations the policy does not list,
    # which Tekton would copy onto the build's pods.
    for what in ("relabel", "annotate"):
        result = control_plane.kubectl("-n", BUILD_NAMESPACE, *attempts[what],
                                       user=owner_account, check=False)
        assert result.returncode != 0, (what, result.stdout)
        assert "a tool may not set this on a PipelineRun, since Tekton copies a run's" \
            in result.stderr, (what, result.stderr)
    for args in (attempts["release"], attempts["cancel"]):
        result = control_plane.kubectl("-n", BUILD_NAMESPACE, *args, user=owner_account,
                                       check=False)
        assert result.returncode == 0, (args, result.stderr)
    assert stored(control_plane, name)["spec"]["status"] == "Cancelled"
    result = control_plane.kubectl("-n", BUILD_NAMESPACE, *attempts["delete"],
                                   user=owner_account, check=False)
    assert result.returncode == 0, result.stderr


def test_delete_all_by_another_tool_deletes_none_of_the_owners_runs(
        control_plane: ControlPlane, live_suite: Suite, two_tools: Any) -> None:
    owner, owner_account, _, intruder_account = two_tools
    name = unique(f"{owner}-buildpacks-pipelinerun")
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(name, owner)),
                          user=owner_account)
    result = control_plane.kubectl("-n", BUILD_NAMESPACE, "delete", "pipelineruns", "--all",
                                   "--wait=false", user=intruder_account, check=False)
    assert result.returncode != 0
    assert DENIED in result.stderr, result.stderr
    assert stored(control_plane, name)["metadata"]["name"] == name
    assert "deletionTimestamp" not in stored(control_plane, name)["metadata"]


def taskruns_of(cp: ControlPlane, run: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.get_json("-n", BUILD_NAMESPACE, "taskruns", "-l",
                                              f"tekton.dev/pipelineRun={run}")["items"]
    return items


def test_a_tool_cannot_orphan_its_builds_to_escape_the_active_run_limit(
        control_plane: ControlPlane, live_suite: Suite, two_tools: Any) -> None:
    # The red-team repro: delete the run with --cascade=orphan, its TaskRun (and pod) would run
    # on uncounted, and the next run would be admitted beside it.
    from kubernetes import client, config

    owner, owner_account, _, _ = two_tools
    name = unique(f"{owner}-buildpacks-pipelinerun")
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(name, owner)),
                          user=owner_account)
    (taskrun,) = wait_for(f"the TaskRun of {name}", lambda: taskruns_of(control_plane, name), 60)
    api = client.CustomObjectsApi(config.new_client_from_config(str(owner_account)))
    run_api = ("tekton.dev", "v1", BUILD_NAMESPACE, "pipelineruns")

    refusals = []
    result = control_plane.kubectl("-n", BUILD_NAMESPACE, "delete", "pipelinerun", name,
                                   "--cascade=orphan", "--wait=false", user=owner_account,
                                   check=False)
    assert result.returncode != 0
    refusals.append(result.stderr)
    # A DELETE with a body, in the legacy spelling and the current one.
    for body in (client.V1DeleteOptions(orphan_dependents=True),
                 client.V1DeleteOptions(propagation_policy="Orphan")):
        with pytest.raises(client.ApiException) as caught:
            api.delete_namespaced_custom_object(*run_api, name, body=body)
        assert caught.value.status == 403
        refusals.append(json.loads(caught.value.body or "{}")["message"])
    # Collections are reviewed object by object: kubectl's (one DELETE per run it lists) and the
    # API's own deletecollection.
    result = control_plane.kubectl("-n", BUILD_NAMESPACE, "delete", "pipelineruns", "-l",
                                   f"toolforge.org/tool={owner}", "--cascade=orphan",
                                   "--wait=false", user=owner_account, check=False)
    assert result.returncode != 0
    refusals.append(result.stderr)
    with pytest.raises(client.ApiException) as caught:
        api.delete_collection_namespaced_custom_object(
            *run_api, label_selector=f"toolforge.org/tool={owner}", propagation_policy="Orphan")
    assert caught.value.status == 403
    refusals.append(json.loads(caught.value.body or "{}")["message"])
    for text in refusals:
        assert DENIED in text, text
        assert f"deleting the PipelineRun {name} with " in text, text
        assert ("would leave its TaskRuns and build pods running with no PipelineRun to count "
                "against the tool's active-run limit") in text, text
    entries = live_suite.reviews(endpoint="validate-pipelineruns", operation="DELETE",
                                 user=owner)
    assert len(entries) == len(refusals)
    assert {(e["decision"], e["reason"]) for e in entries} == {("denied", "OrphaningNotAllowed")}
    assert "deletionTimestamp" not in stored(control_plane, name)["metadata"]
    assert taskruns_of(control_plane, name)[0]["metadata"]["ownerReferences"] == \
        taskrun["metadata"]["ownerReferences"]

    # The second route: the orphan finalizer, added later or set at creation.
    result = control_plane.kubectl(
        "-n", BUILD_NAMESPACE, "patch", "pipelinerun", name, "--type=merge",
        "-p", json.dumps({"metadata": {"finalizers": ["orphan"]}}), user=owner_account,
        check=False)
    assert result.returncode != 0
    assert "metadata.finalizers may not contain orphan" in result.stderr, result.stderr
    with_finalizer = pipelinerun(unique(f"{owner}-buildpacks-pipelinerun"), owner)
    with_finalizer["metadata"]["finalizers"] = ["orphan"]
    result = control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(with_finalizer),
                                   user=owner_account, check=False)
    assert result.returncode != 0
    assert "metadata.finalizers may not contain orphan" in result.stderr, result.stderr
    assert stored(control_plane, name)["metadata"].get("finalizers") is None

    # Deleted as kubectl does by default, the run takes its TaskRun with it.
    control_plane.kubectl("-n", BUILD_NAMESPACE, "delete", "pipelinerun", name, "--wait=false",
                          user=owner_account)
    wait_for(f"the garbage collector to delete the TaskRun of {name}",
             lambda: not taskruns_of(control_plane, name), 60)


APPARMOR = "container.apparmor.security.beta.kubernetes.io/step-build"


def test_a_run_may_not_carry_annotations_that_would_unconfine_its_build_pod(
        control_plane: ControlPlane, live_suite: Suite, two_tools: Any) -> None:
    # The red-team repro: Tekton copies the run's annotations onto the build pod, where this one
    # gave the step running the tool's code an unconfined AppArmor profile.
    owner, owner_account, _, _ = two_tools
    run = pipelinerun(unique(f"{owner}-buildpacks-pipelinerun"), owner)
    name = run["metadata"]["name"]
    run["metadata"]["annotations"] = {APPARMOR: "unconfined"}
    result = control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(run),
                                   user=owner_account, check=False)
    assert result.returncode != 0
    assert DENIED in result.stderr, result.stderr
    assert f'metadata.annotations "{APPARMOR}": a tool may not set this on a PipelineRun' \
        in result.stderr, result.stderr
    entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=name, user=owner)
    assert (entry["decision"], entry["reason"]) == ("denied", "MetadataNotAllowed")

    # kubectl apply works: its last-applied annotation is allowed, and what Tekton's controller
    # then writes onto the run (its labels) goes back unchanged with the next apply.
    del run["metadata"]["annotations"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(run), user=owner_account)
    wait_for(f"Tekton to label {name}", lambda: "tekton.dev/pipeline" in stored(
        control_plane, name)["metadata"].get("labels", {}), 60)
    run["spec"]["status"] = "Cancelled"
    result = control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(run),
                                   user=owner_account, check=False)
    assert result.returncode == 0, result.stderr
    assert stored(control_plane, name)["spec"]["status"] == "Cancelled"

    # Nor may the annotation be added later.
    result = control_plane.kubectl("-n", BUILD_NAMESPACE, "annotate", "pipelinerun", name,
                                   f"{APPARMOR}=unconfined", user=owner_account, check=False)
    assert result.returncode != 0
    assert f'metadata.annotations "{APPARMOR}"' in result.stderr, result.stderr
    assert APPARMOR not in stored(control_plane, name)["metadata"].get("annotations", {})


def test_only_tekton_writes_a_runs_status_not_even_its_own_tool(
        control_plane: ControlPlane, live_suite: Suite, two_tools: Any) -> None:
    owner, owner_account, _, _ = two_tools
    allow_status_writes(control_plane, owner)
    name = unique(f"{owner}-buildpacks-pipelinerun")
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(name, owner)),
                          user=owner_account)
    # Tekton's controller writes the status through the same webhook (pipelineruns/status).
    wait_for(f"Tekton to write the status of {name}", lambda: stored(control_plane, name).get(
        "status", {}).get("conditions"), 60)
    tekton = live_suite.wait_review(endpoint="validate-pipelineruns", name=name,
                                    operation="UPDATE", sub_resource="status")
    assert tekton["decision"] == "allowed", tekton

    result = control_plane.kubectl("-n", BUILD_NAMESPACE, "patch", "pipelinerun", name,
                                   "--subresource=status", "--type=merge", "-p", FINISHED,
                                   user=owner_account, check=False)
    assert result.returncode != 0
    assert DENIED in result.stderr, result.stderr
    assert "only the system users and the run managers (Tekton's controller) may write " \
           "pipelineruns/status" in result.stderr
    conditions = stored(control_plane, name)["status"]["conditions"]
    assert all(c.get("message") != "forged" for c in conditions), conditions


def test_a_run_in_a_tools_own_namespace_is_refused(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    # tool_kubeconfig's RBAC lets mytool create PipelineRuns in tool-mytool.
    name = unique("mytool-buildpacks-pipelinerun")
    run = pipelinerun(name, "mytool", namespace="tool-mytool")
    result = control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(run), user=mytool,
                                   check=False)
    assert result.returncode != 0
    assert DENIED in result.stderr, result.stderr
    assert ("PipelineRuns may only be created in the build namespace image-build, where the "
            "registry credentials of their build pods are kept from the tool's code; not in "
            "tool-mytool") in result.stderr
    entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=name)
    assert (entry["decision"], entry["reason"]) == ("denied", "NamespaceNotForBuilds")
    assert control_plane.get_json("-n", "tool-mytool", "pipelineruns")["items"] == []
