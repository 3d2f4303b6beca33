"""A run's labels and annotations, which Tekton copies onto its TaskRuns and build pods."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.decision import Decision
from policies.identity import User
from policies.model import parse_policy
from policies.pipelinerun import PIPELINERUNS
from policies.rule import Operation
from policies.run_metadata import METADATA_NOT_ALLOWED, metadata_refused
from tests.builders import judged, rule_review
from tests.pipelineruns import POLICY_YAML, make_run

POLICY = parse_policy(POLICY_YAML)
OWNER = User("mytool", ("toolforge", "system:authenticated"))
BUILDS_API = User("system:serviceaccount:image-build:builds-api", ("system:serviceaccounts",))
TEKTON = User("system:serviceaccount:tekton-pipelines:tekton-pipelines-controller",
              ("system:serviceaccounts",))
APPARMOR = "container.apparmor.security.beta.kubernetes.io/step-build"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def run_with(labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    run = make_run()
    run["metadata"]["labels"].update(labels or {})
    if annotations is not None:
        run["metadata"]["annotations"] = annotations
    return run


def verdict(operation: Operation, user: User, new: dict[str, Any],
            old: dict[str, Any] | None = None) -> Decision:
    review = rule_review(new, kind="PipelineRun", operation=operation, namespace="image-build",
                         user=user, old=old, name="mytool-buildpacks-pipelinerun-abcde")
    return judged((PIPELINERUNS,), review, POLICY)


def test_the_apparmor_annotation_of_the_red_team_is_refused() -> None:
    decision = verdict("CREATE", OWNER, run_with(annotations={APPARMOR: "unconfined"}))
    assert (decision.allowed, decision.reason) == (False, METADATA_NOT_ALLOWED)
    assert decision.message == (
        f'metadata.annotations "{APPARMOR}": a tool may not set this on a PipelineRun, since '
        "Tekton copies a run's annotations onto its TaskRuns and build pods; remove it, or ask "
        "the platform admins to allow the annotation (builds.runMetadata.annotations; allowed "
        f"now: {LAST_APPLIED}, example.org/note)")


@pytest.mark.parametrize(("labels", "annotations", "refused"), [
    pytest.param({}, None, None, id="only-the-tool-label"),
    pytest.param({}, {LAST_APPLIED: "{}"}, None, id="kubectl-apply"),
    pytest.param({"example.org/team": "a", "example.org/x/y": "b"}, None, None,
                 id="labels-under-an-allowed-prefix"),
    pytest.param({}, {"example.org/note": "hi"}, None, id="an-allowed-annotation"),
    pytest.param({"app": "web"}, None, ['metadata.labels "app":'], id="a-label-selectors-match"),
    pytest.param({"tekton.dev/pipelineRun": "victim-run"}, None,
                 ['metadata.labels "tekton.dev/pipelineRun":'], id="a-tekton-label"),
    pytest.param({"example.orgx/team": "a"}, None, ['metadata.labels "example.orgx/team":'],
                 id="the-prefix-is-no-substring"),
    pytest.param({}, {"example.org/note2": "x"}, ['metadata.annotations "example.org/note2":'],
                 id="an-exact-key-is-no-prefix"),
    pytest.param({"a": "1", "b": "2"}, {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"},
                 ['metadata.labels "a", "b": a tool may not set these on a PipelineRun',
                  'metadata.annotations "seccomp.security.alpha.kubernetes.io/pod": a tool may '
                  "not set this"], id="one-finding-per-kind"),
])
def test_a_tool_sets_only_the_tool_label_and_the_allowed_keys(
        labels: dict[str, str], annotations: dict[str, str] | None,
        refused: list[str] | None) -> None:
    findings = metadata_refused(None, run_with(labels, annotations), POLICY.builds)
    assert [f.reason for f in findings] == [METADATA_NOT_ALLOWED] * len(refused or ())
    for finding, start in zip(findings, refused or (), strict=True):
        assert finding.message.startswith(start)


def test_many_keys_are_named_up_to_ten() -> None:
    labels = {f"k{i:02}": "v" for i in range(25)}
    (finding,) = metadata_refused(None, run_with(labels), POLICY.builds)
    assert '"k09" and 15 more: a tool may not set these' in finding.message
    assert "k10" not in finding.message


def test_on_update_only_what_changes_is_judged() -> None:
    # A stored run carries what Tekton's controller wrote; kubectl sends it back unchanged.
    old = run_with({"tekton.dev/pipeline": "buildpacks"}, {"tekton.dev/note": "x"})
    same = copy.deepcopy(old)
    same["metadata"]["annotations"][LAST_APPLIED] = "{}"
    assert verdict("UPDATE", OWNER, same, old).allowed
    changed = copy.deepcopy(old)
    changed["metadata"]["labels"]["tekton.dev/pipeline"] = "other"
    refused = verdict("UPDATE", OWNER, changed, old)
    assert (refused.allowed, refused.reason) == (False, METADATA_NOT_ALLOWED)
    assert 'metadata.labels "tekton.dev/pipeline"' in refused.message
    added = copy.deepcopy(old)
    added["metadata"]["annotations"][APPARMOR] = "unconfined"
    assert not verdict("UPDATE", OWNER, added, old).allowed
    removed = copy.deepcopy(old)
    del removed["metadata"]["labels"]["tekton.dev/pipeline"]
    removed["metadata"]["annotations"] = {}
    assert verdict("UPDATE", OWNER, removed, old).allowed


@pytest.mark.parametrize("user", [BUILDS_API, TEKTON])
def test_the_system_users_run_managers_and_tekton_set_any_key(user: User) -> None:
    old = run_with()
    labelled = run_with({"tekton.dev/pipeline": "buildpacks"}, {APPARMOR: "runtime/default"})
    assert verdict("UPDATE", user, labelled, old).allowed
    if user is BUILDS_API:
        assert verdict("CREATE", user, labelled).allowed


def test_the_controller_is_exempt_even_when_not_a_run_manager() -> None:
    policy = parse_policy(POLICY_YAML + "  runManagers: [system:kube-controller-manager]\n")
    review = rule_review(run_with({"tekton.dev/pipeline": "buildpacks"}), kind="PipelineRun",
                         operation="UPDATE", namespace="image-build", user=TEKTON,
                         old=run_with())
    decision = judged((PIPELINERUNS,), review, policy)
    # Not a run manager here, it may not change a tool's run; but its labels are not the issue.
    assert (decision.allowed, decision.reason) == (False, "RunNotOwned")
    assert "metadata.labels" not in decision.message


def test_the_defaults_allow_the_tool_label_and_kubectl_apply() -> None:
    builds = parse_policy("{}").builds
    run = run_with(annotations={LAST_APPLIED: "{}"})
    assert metadata_refused(None, run, builds) == []
    run["metadata"]["labels"]["example.org/team"] = "a"
    assert [f.reason for f in metadata_refused(None, run, builds)] == [METADATA_NOT_ALLOWED]


@pytest.mark.parametrize("text", ['[""]', '["*"]', '["a*b"]', '[" a"]', "[1]", "a"])
def test_a_bad_key_entry_is_a_policy_problem(text: str) -> None:
    from policies.model import PolicyError

    with pytest.raises(PolicyError, match=r"builds\.runMetadata\.labels"):
        parse_policy(f"builds: {{runMetadata: {{labels: {text}}}}}")
