"""PipelineRuns through the real API server: the rule, the active-run slot, and how it frees.

Every run is created with kubectl as the tool (a client certificate CN=<tool>, O=toolforge), so
the requests carry the userInfo a Toolforge tool has. The test policy allows one active run per
tool (`builds.maxActiveRuns: 1`).

How slots behave (policies/slots.py), and how these tests live with it:

- A run that is listed and finished (its Succeeded condition True or False) frees its slot at
  once, even while its reservation is younger than the grace.
- A *deleted* run is indistinguishable from one admitted but not stored yet, so its reservation
  keeps holding a slot for `RESERVATION_GRACE` (30 s) after it was taken. Tests therefore use a
  fresh tool of their own (`fresh_tool`) wherever the brief names no tool; where it does (mytool,
  other), `wait_slot_free` deletes the tool's runs and waits until every reservation stored in its
  Lease is older than the grace, so leftovers of earlier tests cannot block it.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from policies.slots import RESERVATION_GRACE
from tests.e2e.cluster import BUILD_NAMESPACE, ControlPlane, Suite, wait_for
from tests.e2e.objects import delete_runs, pipelinerun, reservations, unique

DENIED = 'admission webhook "pipelineruns.toolforge-admission.toolforge.org" denied the request'
CANCEL = json.dumps({"spec": {"status": "Cancelled"}})
SUCCEEDED = json.dumps({"status": {"conditions": [
    {"type": "Succeeded", "status": "True", "reason": "Succeeded",
     "message": "marked finished by the e2e test"}]}})




def create_run(cp: ControlPlane, run: dict[str, Any], user: pathlib.Path,
               *args: str) -> Any:
    return cp.kubectl("create", *args, "-f", "-", input=yaml.safe_dump(run), user=user,
                      check=False)


def run_names(cp: ControlPlane, tool: str) -> list[str]:
    items = cp.get_json("pipelineruns", "--all-namespaces", "-l",
                        f"toolforge.org/tool={tool}")["items"]
    return sorted(item["metadata"]["name"] for item in items)


def wait_slot_free(cp: ControlPlane, tool: str) -> None:
    """Delete the tool's runs and wait out the grace of every reservation they left."""
    delete_runs(cp, tool)
    entries = reservations(cp, tool)
    if not entries:
        return
    latest = max(datetime.datetime.fromisoformat(e["at"]) for e in entries)
    free_at = latest + RESERVATION_GRACE + datetime.timedelta(seconds=1)
    pause = (free_at - datetime.datetime.now(datetime.UTC)).total_seconds()
    if pause > 0:
        time.sleep(pause)


def condition(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    run = cp.get_json("-n", BUILD_NAMESPACE, "pipelinerun", name)
    for entry in (run.get("status") or {}).get("conditions") or []:
        if entry.get("type") == "Succeeded":
            found: dict[str, Any] = entry
            return found
    return None


@pytest.fixture
def fresh_tool(control_plane: ControlPlane) -> Iterator[tuple[str, pathlib.Path]]:
    """A tool no other test uses (CN=<tool>, O=toolforge, RBAC in the build namespace)."""
    tool = f"t{uuid.uuid4().hex[:8]}"
    control_plane.grant(tool, [BUILD_NAMESPACE])
    kubeconfig = control_plane.user_kubeconfig(tool, ["toolforge"])
    yield tool, kubeconfig
    delete_runs(control_plane, tool)


def test_a_good_run_is_admitted_and_a_bad_one_is_refused_with_the_rules_message(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    wait_slot_free(control_plane, "mytool")
    try:
        good = unique("mytool-buildpacks-pipelinerun")
        result = create_run(control_plane, pipelinerun(good, "mytool"), mytool)
        assert result.returncode == 0, result.stderr
        assert f"pipelinerun.tekton.dev/{good} created" in result.stdout

        bad = unique("mytool-buildpacks-pipelinerun")
        run = pipelinerun(bad, "mytool")
        run["spec"]["params"][0]["value"] = "tools-harbor.wmcloud.org/tool-other/other:latest"
        result = create_run(control_plane, run, mytool)
        assert result.returncode != 0
        assert DENIED in result.stderr, result.stderr
        assert ('APP_IMAGE "tools-harbor.wmcloud.org/tool-other/other:latest" is not in the '
                "tool's own Harbor project") in result.stderr, result.stderr
        assert "expected <harbor host>/tool-mytool/<repository>[:tag]" in result.stderr
        entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=bad)
        assert entry["decision"] == "denied"
        assert entry["reason"] == "AppImageNotAllowed"
        assert entry["user"] == "mytool"
        assert run_names(control_plane, "mytool") == [good]
    finally:
        delete_runs(control_plane, "mytool")


def test_simultaneous_creates_for_one_tool_admit_exactly_one(
        control_plane: ControlPlane, live_suite: Suite,
        fresh_tool: tuple[str, pathlib.Path]) -> None:
    # The suite runs 2 gunicorn workers (separate processes, 2 threads each): the requests are
    # spread over both, and only the Lease's resourceVersion keeps them from both admitting one.
    assert live_suite.workers == 2
    tool, kubeconfig = fresh_tool
    names = [f"{tool}-race-{i:02d}" for i in range(20)]
    start = threading.Barrier(len(names))

    def create(name: str) -> Any:
        start.wait()
        return create_run(control_plane, pipelinerun(name, tool), kubeconfig)

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = dict(zip(names, pool.map(create, names), strict=True))

    admitted = [name for name, result in results.items() if result.returncode == 0]
    assert len(admitted) == 1, {n: r.stderr for n, r in results.items()}
    winner = admitted[0]
    assert run_names(control_plane, tool) == [winner]
    refused = {name: result.stderr for name, result in results.items() if name != winner}
    assert len(refused) == 19
    # Every one of the 19 got the suite's own refusal, naming the run that holds the slot: none
    # waited in the suite past the webhook's timeout (requests are read off the threads, so 20
    # at once on 2 x 2 threads only queue for milliseconds).
    for name, stderr in refused.items():
        assert "failed calling webhook" not in stderr, (name, stderr)
        assert DENIED in stderr, (name, stderr)
        assert f"the tool {tool} already has 1 active PipelineRun(s) and may have at most 1: " \
               f"{BUILD_NAMESPACE}/{winner};" in stderr, (name, stderr)
        assert f"kubectl patch pipelinerun {winner} -n {BUILD_NAMESPACE}" in stderr
    # The suite's own record of every refusal names the winner's slot.
    for name in refused:
        entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=name,
                                       operation="CREATE")
        assert entry["decision"] == "denied", entry
        assert entry["reason"] == "TooManyActiveRuns", entry
        assert f"{BUILD_NAMESPACE}/{winner}" in entry["detail"], entry
    assert live_suite.reviews(name=winner, operation="CREATE")[-1]["decision"] == "allowed"
    assert [r["name"] for r in reservations(control_plane, tool)] == [winner]


def test_a_run_marked_finished_through_the_status_subresource_frees_the_slot(
        control_plane: ControlPlane, live_suite: Suite,
        fresh_tool: tuple[str, pathlib.Path]) -> None:
    tool, kubeconfig = fresh_tool
    first = unique(f"{tool}-first")
    assert create_run(control_plane, pipelinerun(first, tool), kubeconfig).returncode == 0
    blocked = create_run(control_plane, pipelinerun(unique(f"{tool}-blocked"), tool), kubeconfig)
    assert blocked.returncode != 0
    assert f"{BUILD_NAMESPACE}/{first}" in blocked.stderr, blocked.stderr

    # Let the Tekton controller take the run in hand first (its status, the TaskRun), so that no
    # reconcile of the active run is in flight to write its own status over ours.
    wait_for(f"Tekton to reconcile {first}", lambda: condition(control_plane, first), 60)
    wait_for(f"the TaskRun of {first}", lambda: control_plane.get_json(
        "-n", BUILD_NAMESPACE, "taskruns", "-l", f"tekton.dev/pipelineRun={first}")["items"], 60)
    control_plane.kubectl("-n", BUILD_NAMESPACE, "patch", "pipelinerun", first,
                          "--subresource=status", "--type=merge", "-p", SUCCEEDED)
    assert (condition(control_plane, first) or {}).get("status") == "True"
    # The controller's own writes of the run (its labels, with the spec as it re-serialises it:
    # `1h` comes back as `1h0m0s`) are not taken for a spec change.
    assert live_suite.reviews(name=first, operation="UPDATE", decision="denied") == []

    # Finished and still listed: the slot is free at once, though the reservation is young.
    second = unique(f"{tool}-second")
    result = create_run(control_plane, pipelinerun(second, tool), kubeconfig)
    assert result.returncode == 0, result.stderr
    assert run_names(control_plane, tool) == sorted([first, second])
    assert (condition(control_plane, first) or {}).get("status") == "True"


def test_a_tool_may_cancel_its_run_and_the_cancelled_run_frees_the_slot(
        control_plane: ControlPlane, live_suite: Suite,
        fresh_tool: tuple[str, pathlib.Path]) -> None:
    tool, kubeconfig = fresh_tool
    name = unique(f"{tool}-cancelled")
    assert create_run(control_plane, pipelinerun(name, tool), kubeconfig).returncode == 0

    result = control_plane.kubectl("-n", BUILD_NAMESPACE, "patch", "pipelinerun", name,
                                   "--type", "merge", "-p", CANCEL, user=kubeconfig, check=False)
    assert result.returncode == 0, result.stderr
    entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=name,
                                   operation="UPDATE", user=tool)
    assert entry["decision"] == "allowed", entry
    stored = control_plane.get_json("-n", BUILD_NAMESPACE, "pipelinerun", name)
    assert stored["spec"]["status"] == "Cancelled"

    # The controller marks it finished (Succeeded=False), which frees the slot.
    wait_for(f"Tekton to mark {name} cancelled",
             lambda: (condition(control_plane, name) or {}).get("status") == "False", 60)
    after = unique(f"{tool}-after")
    result = create_run(control_plane, pipelinerun(after, tool), kubeconfig)
    assert result.returncode == 0, result.stderr


def test_a_server_dry_run_reserves_nothing(
        control_plane: ControlPlane, live_suite: Suite,
        fresh_tool: tuple[str, pathlib.Path]) -> None:
    tool, kubeconfig = fresh_tool
    dry = unique(f"{tool}-dry")
    result = create_run(control_plane, pipelinerun(dry, tool), kubeconfig, "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout
    entry = live_suite.wait_review(endpoint="validate-pipelineruns", name=dry)
    assert entry["dry_run"] is True
    assert entry["decision"] == "allowed", entry
    assert reservations(control_plane, tool) == []
    assert run_names(control_plane, tool) == []

    real = unique(f"{tool}-real")
    result = create_run(control_plane, pipelinerun(real, tool), kubeconfig)
    assert result.returncode == 0, result.stderr
    assert [r["name"] for r in reservations(control_plane, tool)] == [real]


def test_another_tool_is_not_blocked_by_mytools_active_run(
        control_plane: ControlPlane, live_suite: Suite, mytool: pathlib.Path) -> None:
    other = control_plane.tool_kubeconfig("other")
    wait_slot_free(control_plane, "mytool")
    wait_slot_free(control_plane, "other")
    try:
        mine = unique("mytool-buildpacks-pipelinerun")
        assert create_run(control_plane, pipelinerun(mine, "mytool"), mytool).returncode == 0
        blocked = create_run(control_plane, pipelinerun(unique("mytool-again"), "mytool"), mytool)
        assert blocked.returncode != 0
        assert f"{BUILD_NAMESPACE}/{mine}" in blocked.stderr, blocked.stderr

        theirs = unique("other-buildpacks-pipelinerun")
        result = create_run(control_plane, pipelinerun(theirs, "other"), other)
        assert result.returncode == 0, result.stderr
        assert run_names(control_plane, "other") == [theirs]
        assert run_names(control_plane, "mytool") == [mine]
    finally:
        delete_runs(control_plane, "mytool")
        delete_runs(control_plane, "other")
