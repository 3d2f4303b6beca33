"""Orphaned builds: who may delete a run so that its TaskRuns and pods live on, and how."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.decision import Decision
from policies.identity import User
from policies.model import parse_policy
from policies.orphans import ORPHANING_NOT_ALLOWED
from policies.pipelinerun import PIPELINERUNS, RUN_NOT_OWNED
from policies.rule import NO_DELETE_OPTIONS, DeleteOptions, Operation
from tests.builders import judged, rule_review
from tests.pipelineruns import POLICY_YAML, make_run

POLICY = parse_policy(POLICY_YAML)
OWNER = User("mytool", ("toolforge", "system:authenticated"))
INTRUDER = User("other", ("toolforge", "system:authenticated"))
BUILDS_API = User("system:serviceaccount:image-build:builds-api", ("system:serviceaccounts",))
TEKTON = User("system:serviceaccount:tekton-pipelines:tekton-pipelines-controller",
              ("system:serviceaccounts",))
GARBAGE_COLLECTOR = User("system:serviceaccount:kube-system:generic-garbage-collector",
                         ("system:serviceaccounts",))
ORPHAN = DeleteOptions("Orphan")
LEGACY_ORPHAN = DeleteOptions(orphan_dependents=True)


@pytest.mark.parametrize(("options", "finalizers", "orphans"), [
    pytest.param(NO_DELETE_OPTIONS, None, False, id="default-deletes-dependents"),
    pytest.param(ORPHAN, None, True, id="propagation-orphan"),
    pytest.param(DeleteOptions("Background"), None, False, id="background"),
    pytest.param(DeleteOptions("Foreground"), None, False, id="foreground"),
    pytest.param(LEGACY_ORPHAN, None, True, id="legacy-orphan"),
    pytest.param(DeleteOptions(orphan_dependents=False), ["orphan"], False,
                 id="legacy-false-overrides-the-finalizer"),
    pytest.param(NO_DELETE_OPTIONS, ["orphan"], True, id="the-finalizer-when-nothing-is-said"),
    pytest.param(DeleteOptions("Background"), ["orphan"], False,
                 id="an-explicit-policy-overrides-the-finalizer"),
    pytest.param(NO_DELETE_OPTIONS, ["foregroundDeletion", "orphan"], False,
                 id="the-first-gc-finalizer-wins"),
    pytest.param(NO_DELETE_OPTIONS, ["chains.tekton.dev/pipelinerun", "orphan"], True,
                 id="other-finalizers-say-nothing"),
    pytest.param(NO_DELETE_OPTIONS, "orphan", False, id="finalizers-not-a-list"),
])
def test_whether_a_delete_orphans_is_decided_as_the_api_server_decides_it(
        options: DeleteOptions, finalizers: object, orphans: bool) -> None:
    assert options.orphans(finalizers) is orphans


def run_with(finalizers: list[str] | None = None) -> dict[str, Any]:
    run = make_run()
    if finalizers is not None:
        run["metadata"]["finalizers"] = finalizers
    return run


def verdict(operation: Operation, user: User, *, old: dict[str, Any] | None = None,
            new: dict[str, Any] | None = None,
            options: DeleteOptions = NO_DELETE_OPTIONS) -> Decision:
    review = rule_review(new, kind="PipelineRun", operation=operation, namespace="image-build",
                         user=user, old=old, name="mytool-buildpacks-pipelinerun-abcde",
                         delete_options=options)
    return judged((PIPELINERUNS,), review, POLICY)


@pytest.mark.parametrize("options", [ORPHAN, LEGACY_ORPHAN])
def test_a_tool_may_not_orphan_the_taskruns_of_its_own_run(options: DeleteOptions) -> None:
    decision = verdict("DELETE", OWNER, old=run_with(), options=options)
    assert (decision.allowed, decision.reason) == (False, ORPHANING_NOT_ALLOWED)
    how = ("with propagationPolicy Orphan (kubectl delete --cascade=orphan)" if options is ORPHAN
           else "with orphanDependents: true")
    assert decision.message.startswith(
        f"deleting the PipelineRun mytool-buildpacks-pipelinerun-abcde {how} would leave its "
        "TaskRuns and build pods running with no PipelineRun to count against the tool's "
        "active-run limit; ")


def test_a_run_carrying_the_orphan_finalizer_is_deleted_only_with_an_explicit_policy() -> None:
    old = run_with(["orphan"])
    refused = verdict("DELETE", OWNER, old=old)
    assert (refused.allowed, refused.reason) == (False, ORPHANING_NOT_ALLOWED)
    assert "while it carries the orphan finalizer" in refused.message
    assert "kubectl delete sends Background" in refused.message
    assert verdict("DELETE", OWNER, old=old, options=DeleteOptions("Background")).allowed


@pytest.mark.parametrize("options", [NO_DELETE_OPTIONS, DeleteOptions("Background"),
                                     DeleteOptions("Foreground")])
def test_a_tool_may_delete_its_run_with_its_dependents(options: DeleteOptions) -> None:
    assert verdict("DELETE", OWNER, old=run_with(), options=options).allowed


@pytest.mark.parametrize("user", [BUILDS_API, TEKTON, GARBAGE_COLLECTOR])
def test_system_users_and_run_managers_may_orphan(user: User) -> None:
    assert verdict("DELETE", user, old=run_with(), options=ORPHAN).allowed
    assert verdict("DELETE", user, old=run_with(["orphan"])).allowed
    old = run_with()
    assert verdict("UPDATE", user, old=old, new=run_with(["orphan"])).allowed


def test_another_tool_is_told_both_that_the_run_is_not_its_own_and_about_orphaning() -> None:
    decision = verdict("DELETE", INTRUDER, old=run_with(), options=ORPHAN)
    assert decision.reason == RUN_NOT_OWNED
    assert "may not delete the PipelineRun" in decision.message
    assert "--cascade=orphan" in decision.message


def test_a_tool_may_not_create_a_run_with_the_orphan_finalizer() -> None:
    decision = verdict("CREATE", OWNER, new=run_with(["orphan"]))
    assert (decision.allowed, decision.reason) == (False, ORPHANING_NOT_ALLOWED)
    assert decision.message == (
        "metadata.finalizers may not contain orphan: deleting the run would leave its TaskRuns "
        "and build pods running with no PipelineRun to count against the tool's active-run "
        "limit; remove it")
    assert verdict("CREATE", OWNER, new=run_with(["example.org/keep"])).allowed


def test_the_builds_api_may_create_a_run_with_the_orphan_finalizer() -> None:
    run = run_with(["orphan"])
    assert verdict("CREATE", BUILDS_API, new=run).allowed


def test_a_tool_may_not_add_the_orphan_finalizer_but_may_keep_or_remove_it() -> None:
    old = run_with()
    added = verdict("UPDATE", OWNER, old=old, new=run_with(["orphan"]))
    assert (added.allowed, added.reason) == (False, ORPHANING_NOT_ALLOWED)
    had = run_with(["orphan"])
    relabelled = copy.deepcopy(had)
    relabelled["metadata"]["labels"]["example.org/note"] = "x"
    assert verdict("UPDATE", OWNER, old=had, new=relabelled).allowed
    assert verdict("UPDATE", OWNER, old=had, new=run_with([])).allowed

