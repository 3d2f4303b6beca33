"""PipelineRuns: identity from trusted data, every content rule in both Tekton shapes, UPDATEs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from policies.decision import Finding
from policies.identity import User
from policies.model import Policy, parse_policy
from policies.pipelinerun import (
    APP_IMAGE_NOT_ALLOWED,
    BUILDER_NOT_ALLOWED,
    FIELD_NOT_ALLOWED,
    NOT_A_TOOL,
    PARAM_INVALID,
    PARAM_MISSING,
    PARAM_NOT_ALLOWED,
    PIPELINE_NOT_ALLOWED,
    RUN_IMAGE_NOT_ALLOWED,
    SERVICE_ACCOUNT_NOT_ALLOWED,
    SPEC_CHANGED,
    SPEC_INVALID,
    TIMEOUT_NOT_ALLOWED,
    TOO_MANY_RUNS,
    TOOL_LABEL_CHANGED,
    TOOL_LABEL_WRONG,
    WORKSPACE_NOT_ALLOWED,
    WRONG_NAMESPACE,
    check_changed_run,
    check_new_run,
    too_many_runs,
    tool_of_requester,
)
from tests.pipelineruns import BUILDER, HARBOR, POLICY_YAML, RUN, make_run

POLICY: Policy = parse_policy(POLICY_YAML)
BUILDS = POLICY.builds
TOOL_USER = User("mytool", ("toolforge", "system:authenticated"))
SYSTEM_USER = User("system:serviceaccount:image-build:builds-api", ("system:serviceaccounts",))
SHAPES = ("v1", "v1beta1")
ROOT = Path(__file__).resolve().parents[3]
SHIPPED_POLICIES = ("policies/example-policy.yaml", "manifests/base/policy.yaml",
                    "manifests/overlays/toolforge/policy.yaml", "tests/e2e/policy.yaml")
"""The policies the project ships, each tested for what it must refuse."""


def reasons(run: dict[str, Any], tool: str = "mytool") -> list[str]:
    return [f.reason for f in check_new_run(tool, run, BUILDS)]


def messages(run: dict[str, Any], tool: str = "mytool") -> str:
    return "; ".join(f.message for f in check_new_run(tool, run, BUILDS))


# --- Identity -------------------------------------------------------------------------------

@pytest.mark.parametrize(("namespace", "user", "app_tool", "tool", "reason"), [
    pytest.param("image-build", TOOL_USER, "mytool", "mytool", None, id="build-ns-tool-account"),
    pytest.param("image-build", TOOL_USER, "other", "mytool", None,
                 id="build-ns-tool-is-the-requester-not-app-image"),
    pytest.param("image-build", User("mytool", ("system:authenticated",)), "mytool", None,
                 NOT_A_TOOL, id="build-ns-human-named-like-a-tool-is-not-the-tool"),
    pytest.param("image-build", User("Not A Tool", ("toolforge",)), "mytool", None, NOT_A_TOOL,
                 id="build-ns-username-not-a-tool-name"),
    pytest.param("image-build", User("admin", ("system:masters",)), "mytool", None, NOT_A_TOOL,
                 id="build-ns-cluster-admin-is-not-a-tool"),
    pytest.param("image-build", SYSTEM_USER, "other", "other", None,
                 id="build-ns-system-user-acts-for-app-image-project"),
    pytest.param("tool-mytool", TOOL_USER, "mytool", None, WRONG_NAMESPACE,
                 id="tool-ns-own-account"),
    pytest.param("tool-mytool", User("other", ("toolforge",)), "mytool", None, WRONG_NAMESPACE,
                 id="tool-ns-other-tool-account"),
    pytest.param("tool-mytool", SYSTEM_USER, "mytool", None, WRONG_NAMESPACE,
                 id="tool-ns-system-user"),
    pytest.param("default", TOOL_USER, "mytool", None, WRONG_NAMESPACE,
                 id="other-namespace-refused"),
])
def test_the_tool_comes_from_trusted_data_only(
        namespace: str, user: User, app_tool: str, tool: str | None, reason: str | None) -> None:
    run = make_run(params={"APP_IMAGE": f"{HARBOR}/tool-{app_tool}/x:1"})
    run["metadata"]["labels"]["toolforge.org/tool"] = "someone-else"  # labels never decide
    identity = tool_of_requester(POLICY, namespace, user, run)
    assert identity.tool == tool
    assert (identity.finding.reason if identity.finding else None) == reason


@pytest.mark.parametrize("app_image", [
    pytest.param(None, id="missing"),
    pytest.param("not an image", id="unparsable"),
    pytest.param(f"{HARBOR}/library/x:1", id="not-a-tool-project"),
    pytest.param(f"{HARBOR}/tool-a--b/x:1", id="unnormalised-double-separator"),
])
def test_a_system_user_without_a_tool_project_in_app_image_is_refused(
        app_image: str | None) -> None:
    identity = tool_of_requester(POLICY, "image-build", SYSTEM_USER,
                                 make_run(params={"APP_IMAGE": app_image}))
    assert identity.tool is None
    assert identity.finding is not None
    assert identity.finding.reason == NOT_A_TOOL
    assert "system user" in identity.finding.message


def test_a_run_in_a_tools_own_namespace_is_refused_saying_where_builds_run() -> None:
    identity = tool_of_requester(POLICY, "tool-mytool", TOOL_USER, make_run())
    assert identity.finding is not None
    assert identity.finding.message == (
        "PipelineRuns may only be created in the build namespace image-build, where the registry "
        "credentials of their build pods are kept from the tool's code; not in tool-mytool. "
        "Start builds there (toolforge build start does)")


def test_a_system_user_pushing_to_the_raw_name_of_a_double_dash_tool_is_told_its_project() -> None:
    run = make_run(params={"APP_IMAGE": f"{HARBOR}/tool-a--b/tool-a--b:latest"})
    identity = tool_of_requester(POLICY, "image-build", SYSTEM_USER, run)
    assert identity.finding is not None
    assert identity.finding.message.endswith(
        "is not a tool's project (tool-{tool}); the tool a--b's Harbor project is "
        "tool-a-char.sep-b")


def test_a_human_named_like_a_tool_is_told_which_group_is_missing() -> None:
    identity = tool_of_requester(POLICY, "image-build", User("mytool", ()), make_run())
    assert identity.finding is not None
    assert "not in any of the groups toolforge" in identity.finding.message


# --- Content, in both shapes -----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_a_well_formed_run_has_no_findings(shape: str) -> None:
    assert reasons(make_run(shape)) == []


def test_the_captured_toolforge_run_shape_passes() -> None:
    run = make_run("v1", params={"ENV_VARS": None}, timeouts=None)
    del run["spec"]["timeouts"]
    assert reasons(run) == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("label", "reason"), [
    pytest.param(None, TOOL_LABEL_WRONG, id="missing"),
    pytest.param("other", TOOL_LABEL_WRONG, id="another-tool"),
])
def test_the_tool_label_must_name_the_derived_tool(shape: str, label: str | None,
                                                   reason: str) -> None:
    run = make_run(shape)
    if label is None:
        del run["metadata"]["labels"]
    else:
        run["metadata"]["labels"]["toolforge.org/tool"] = label
    assert reasons(run) == [reason]
    assert "set metadata.labels toolforge.org/tool=mytool" in messages(run)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("app_image", "why"), [
    pytest.param(f"{HARBOR}/tool-other/x:1", "own Harbor project", id="other-tools-project"),
    pytest.param(f"{HARBOR}/tool-mytool:1", "own Harbor project", id="no-repository"),
    pytest.param(f"{HARBOR}/tool-mytoolx/x", "own Harbor project", id="project-prefix-lookalike"),
    pytest.param(f"{HARBOR}.evil.com/tool-mytool/x", "allowed Harbor host", id="host-lookalike"),
    pytest.param(f"evil.com/{HARBOR}/tool-mytool/x", "allowed Harbor host",
                 id="host-in-path"),
    pytest.param(f"{HARBOR}:5000/tool-mytool/x", "allowed Harbor host", id="host-with-port"),
    pytest.param("tool-mytool/x", "allowed Harbor host", id="docker-hub"),
    pytest.param(f"https://{HARBOR}/tool-mytool/x", "not an image reference", id="url-scheme"),
    pytest.param(f"{HARBOR}/Tool-MyTool/x", "not an image reference", id="upper-case"),
    pytest.param(["x"], "must be a string", id="array-value"),
])
def test_app_image_must_be_in_the_tools_own_harbor_project(shape: str, app_image: object,
                                                           why: str) -> None:
    run = make_run(shape, params={"APP_IMAGE": app_image})
    assert any(r in (APP_IMAGE_NOT_ALLOWED, PARAM_INVALID) for r in reasons(run))
    assert why in messages(run)


def test_app_image_uses_the_normalised_harbor_project_for_odd_tool_names() -> None:
    run = make_run(tool="my--tool",
                   params={"APP_IMAGE": f"{HARBOR}/tool-my-char.sep-tool/app:latest"})
    assert reasons(run, "my--tool") == []
    raw = make_run(tool="my--tool", params={"APP_IMAGE": f"{HARBOR}/tool-my--tool/app"})
    assert reasons(raw, "my--tool") == [APP_IMAGE_NOT_ALLOWED]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("builder", "allowed"), [
    pytest.param(BUILDER, True, id="exact"),
    pytest.param(f"{HARBOR.upper()}/toolforge/heroku-builder:22", True, id="host-case"),
    pytest.param(f"{BUILDER}-evil", False, id="tag-suffix"),
    pytest.param(f"{HARBOR}/toolforge/heroku-builder", False, id="implicit-latest"),
    pytest.param(f"evil.com/{BUILDER}", False, id="prefix"),
    pytest.param("heroku-builder:22", False, id="docker-hub"),
    pytest.param("::", False, id="unparsable"),
])
def test_builder_image_must_be_an_approved_builder(shape: str, builder: str,
                                                   allowed: bool) -> None:
    found = reasons(make_run(shape, params={"BUILDER_IMAGE": builder}))
    assert found == ([] if allowed else [BUILDER_NOT_ALLOWED])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("run_image", "allowed"), [
    pytest.param(RUN, True, id="approved"),
    pytest.param(f"{HARBOR.upper()}/toolforge/heroku-run:22", True, id="approved-host-case"),
    # Empty, the exporter would read the run image from /layers, which the build steps write.
    pytest.param("", False, id="empty"),
    pytest.param(f"{HARBOR}/tool-mytool/base:1", True, id="own-project"),
    pytest.param(f"{HARBOR}/tool-victim/private:latest", False, id="another-tools-project"),
    pytest.param(f"{HARBOR}/toolforge/heroku-run", False, id="approved-without-tag"),
    pytest.param(f"{HARBOR}/toolforge/other:22", False, id="shared-project-not-approved"),
    pytest.param(f"{HARBOR}/tool-mytool", False, id="project-without-repository"),
    pytest.param("evil.example/tool-mytool/base:1", False, id="own-project-name-elsewhere"),
    pytest.param("docker.io/library/ubuntu:22.04", False, id="docker-hub"),
    pytest.param("::", False, id="unparsable"),
])
def test_run_image_must_be_approved_or_the_tools_own(shape: str, run_image: str,
                                                     allowed: bool) -> None:
    run = make_run(shape, params={"RUN_IMAGE": run_image})
    assert reasons(run) == ([] if allowed else [RUN_IMAGE_NOT_ALLOWED])
    if not allowed:
        assert f"an approved run image ({RUN}) or an image in <harbor host>/tool-mytool/" \
               in messages(run)


def test_an_empty_run_image_is_refused_saying_where_the_build_would_take_one() -> None:
    found = check_new_run("mytool", make_run(params={"RUN_IMAGE": ""}), BUILDS)
    assert found == (Finding(RUN_IMAGE_NOT_ALLOWED, (
        "RUN_IMAGE is empty, so the build would take its run image from files the build steps "
        f"can write; use an approved run image ({RUN}) or an image in <harbor host>/tool-mytool/"
        f"<repository>[:tag], harbor host one of {HARBOR}")),)


@pytest.mark.parametrize("path", SHIPPED_POLICIES)
def test_the_shipped_policies_require_an_approved_run_image(path: str) -> None:
    builds = parse_policy((ROOT / path).read_text()).builds
    run = make_run(params={"APP_IMAGE": "tools-harbor.wmcloud.org/tool-mytool/app:latest",
                           "BUILDER_IMAGE": "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"})
    run["metadata"]["labels"] = {builds.tool_label: "mytool"}
    run["spec"]["taskRunTemplate"] = {"serviceAccountName": builds.service_account}
    assert [f.message for f in check_new_run("mytool", run, builds)] == [
        "parameter RUN_IMAGE is required"]
    approved = str(builds.run_images[0])
    run["spec"]["params"].append({"name": "RUN_IMAGE", "value": approved})
    assert check_new_run("mytool", run, builds) == ()
    run["spec"]["params"][-1]["value"] = "tools-harbor.wmcloud.org/tool-victim/private:1"
    assert [f.reason for f in check_new_run("mytool", run, builds)] == [RUN_IMAGE_NOT_ALLOWED]


def test_a_double_dash_tools_own_run_image_is_in_its_harbor_project() -> None:
    mine = f"{HARBOR}/tool-my-char.sep-tool/base:1"
    run = make_run(tool="my--tool", params={
        "APP_IMAGE": f"{HARBOR}/tool-my-char.sep-tool/app:latest", "RUN_IMAGE": mine})
    assert reasons(run, "my--tool") == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("params", "reason", "text"), [
    pytest.param({"GROUP_ID": "0"}, PARAM_NOT_ALLOWED,
                 'Pipeline parameter "GROUP_ID" cannot be used', id="unknown-name"),
    pytest.param({"SOURCE_URL": None}, PARAM_MISSING, "SOURCE_URL is required",
                 id="required-missing"),
    pytest.param({"BUILDER_IMAGE": None}, PARAM_MISSING, "BUILDER_IMAGE is required",
                 id="builder-missing"),
    pytest.param({"SOURCE_URL": ["a"]}, PARAM_INVALID, "SOURCE_URL must be a string",
                 id="string-given-array"),
    pytest.param({"SOURCE_URL": {"a": "b"}}, PARAM_INVALID, "SOURCE_URL must be a string",
                 id="string-given-object"),
    pytest.param({"ENV_VARS": "A=1"}, PARAM_INVALID, "ENV_VARS must be an array",
                 id="array-given-string"),
    pytest.param({"ENV_VARS": ["A=1", 2]}, PARAM_INVALID, "ENV_VARS[1] must be a string",
                 id="array-item-not-string"),
    pytest.param({"ENV_VARS": ["NOEQUALS"]}, PARAM_INVALID, "ENV_VARS[0] must be NAME=value",
                 id="env-without-equals"),
    pytest.param({"ENV_VARS": ["1BAD=x"]}, PARAM_INVALID, "ENV_VARS[0] must be NAME=value",
                 id="env-bad-name"),
    pytest.param({"ENV_VARS": ["A-B=x"]}, PARAM_INVALID, "ENV_VARS[0] must be NAME=value",
                 id="env-dash-in-name"),
    pytest.param({"SOURCE_SUBPATH": "../../etc"}, PARAM_INVALID, "without ..",
                 id="subpath-climbs-out"),
    pytest.param({"SOURCE_SUBPATH": "/etc"}, PARAM_INVALID, "without ..", id="subpath-absolute"),
])
def test_params_are_exactly_the_policys_with_their_types(
        shape: str, params: dict[str, Any], reason: str, text: str) -> None:
    run = make_run(shape, params=params)
    assert reasons(run) == [reason]
    assert text in messages(run)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("params", "allowed", "text"), [
    pytest.param({"USER_ID": "1000"}, True, "", id="pattern-matches"),
    pytest.param({"USER_ID": "0"}, False,
                 'parameter USER_ID "0" does not match the pattern "[1-9][0-9]{0,8}"', id="root"),
    pytest.param({"USER_ID": "00"}, False, "does not match", id="root-spelled-twice"),
    pytest.param({"USER_ID": "1000\n"}, False, "does not match", id="anchored-at-the-end"),
    pytest.param({"USER_ID": "x1000"}, False, "does not match", id="anchored-at-the-start"),
    pytest.param({"USER_ID": "10000000000"}, False, "does not match", id="too-many-digits"),
    pytest.param({"LANGUAGE": "node"}, True, "", id="one-of-the-values"),
    pytest.param({"LANGUAGE": "Node"}, False,
                 'parameter LANGUAGE "Node" is not one of "python", "node"', id="not-a-value"),
    pytest.param({"FLAGS": ["--quiet", "--fast"]}, True, "", id="array-items-match"),
    pytest.param({"FLAGS": ["--quiet", "-x"]}, False,
                 'parameter FLAGS[1] "-x" does not match the pattern "--[a-z]+"',
                 id="array-item-does-not-match"),
])
def test_a_param_value_must_match_its_pattern_or_values(
        shape: str, params: dict[str, Any], allowed: bool, text: str) -> None:
    run = make_run(shape, params=params)
    assert reasons(run) == ([] if allowed else [PARAM_INVALID])
    assert text in messages(run)


@pytest.mark.parametrize("path", SHIPPED_POLICIES)
@pytest.mark.parametrize("param", ["USER_ID", "GROUP_ID"])
@pytest.mark.parametrize(("value", "allowed"), [
    pytest.param("1000", True, id="an-ordinary-id"),
    pytest.param("999999999", True, id="nine-digits"),
    pytest.param("0", False, id="root"),
    # setresuid(2) takes 32 bits: -1 (4294967295) leaves the id unchanged, and larger values
    # wrap around, 2**32 and 2**33 to root.
    pytest.param("4294967295", False, id="minus-one-leaves-root-unchanged"),
    pytest.param("4294967296", False, id="2-to-the-32-wraps-to-root"),
    pytest.param("8589934592", False, id="2-to-the-33-wraps-to-root"),
])
def test_the_shipped_policies_allow_no_build_id_that_is_or_becomes_root(
        path: str, param: str, value: str, allowed: bool) -> None:
    builds = parse_policy((ROOT / path).read_text()).builds
    # The run is for another install (its images are refused too): only the ids are looked at.
    found = [f for f in check_new_run("mytool", make_run(params={param: value}), builds)
             if f.reason == PARAM_INVALID]
    assert found == ([] if allowed else [Finding(PARAM_INVALID, (
        f'parameter {param} "{value}" does not match the pattern "[1-9][0-9]{{0,8}}"'))])


@pytest.mark.timeout(60)
def test_a_pattern_that_would_backtrack_forever_is_matched_in_linear_time() -> None:
    # `(a+)+b` against many a's and no b: exponential for a backtracking engine, linear in RE2.
    run = make_run(params={"SLOW": "a" * 200_000})
    assert reasons(run) == [PARAM_INVALID]
    assert reasons(make_run(params={"SLOW": "a" * 200_000 + "b"})) == []


def test_a_relative_subpath_is_allowed() -> None:
    assert reasons(make_run(params={"SOURCE_SUBPATH": "services/web"})) == []


def test_a_param_given_twice_is_refused() -> None:
    run = make_run()
    run["spec"]["params"].append({"name": "SOURCE_URL", "value": "https://evil.example/x"})
    assert reasons(run) == [PARAM_INVALID]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("spec", "reason"), [
    pytest.param({"pipelineRef": {"name": "evil"}}, PIPELINE_NOT_ALLOWED, id="unapproved-name"),
    pytest.param({"pipelineRef": {"name": "buildpacks", "resolver": "git"}}, PIPELINE_NOT_ALLOWED,
                 id="resolver"),
    pytest.param({"pipelineRef": {"name": "buildpacks", "bundle": "x/y:1"}},
                 PIPELINE_NOT_ALLOWED, id="bundle"),
    pytest.param({"pipelineRef": {"name": "buildpacks",
                                  "params": [{"name": "url", "value": "x"}]}},
                 PIPELINE_NOT_ALLOWED, id="ref-params"),
    pytest.param({"pipelineRef": None}, PIPELINE_NOT_ALLOWED, id="no-ref"),
    pytest.param({"pipelineSpec": {"tasks": [{"name": "t"}]}}, FIELD_NOT_ALLOWED,
                 id="inline-pipeline-spec"),
    pytest.param({"taskRunSpecs": [{"pipelineTaskName": "build",
                                    "serviceAccountName": "admin"}]}, FIELD_NOT_ALLOWED,
                 id="task-run-specs-for-another-task"),
    pytest.param({"podTemplate": {"hostNetwork": True}}, FIELD_NOT_ALLOWED,
                 id="v1beta1-pod-template"),
    pytest.param({"taskRunTemplate": {"podTemplate": {"hostNetwork": True}}}, FIELD_NOT_ALLOWED,
                 id="v1-pod-template"),
    pytest.param({"managedBy": "example.com/other"}, FIELD_NOT_ALLOWED, id="managed-by"),
    pytest.param({"resources": [{"name": "r"}]}, FIELD_NOT_ALLOWED, id="pipeline-resources"),
    pytest.param({"somethingNew": 1}, FIELD_NOT_ALLOWED, id="unknown-field"),
    pytest.param({"taskRunTemplate": {"serviceAccountName": "admin"}},
                 SERVICE_ACCOUNT_NOT_ALLOWED, id="v1-service-account"),
    pytest.param({"serviceAccountName": "admin"}, SERVICE_ACCOUNT_NOT_ALLOWED,
                 id="v1beta1-service-account"),
])
def test_the_run_may_only_reference_an_approved_pipeline_without_overrides(
        shape: str, spec: dict[str, Any], reason: str) -> None:
    assert reason in reasons(make_run(shape, **spec))


@pytest.mark.parametrize(("key", "shape"), [
    pytest.param("serviceAccountName", "v1", id="v1"),
    pytest.param("taskServiceAccountName", "v1beta1", id="v1beta1"),
])
@pytest.mark.parametrize(("entries", "reason", "text"), [
    pytest.param([{"pipelineTaskName": "build-from-git", "SA": "buildpacks-sa"}], None, "",
                 id="the-builds-apis-entry"),
    pytest.param([{"pipelineTaskName": "build-from-git", "SA": "buildpacks-sa"},
                  {"pipelineTaskName": "lint", "SA": "buildpacks-sa"}], None, "",
                 id="two-listed-tasks"),
    pytest.param([{"pipelineTaskName": "build-from-git"}], None, "", id="task-name-only"),
    pytest.param([{"pipelineTaskName": "build-from-git", "SA": "admin"}],
                 SERVICE_ACCOUNT_NOT_ALLOWED, '"admin" is not allowed; leave it out or use '
                 "buildpacks-sa", id="another-service-account"),
    pytest.param([{"pipelineTaskName": "fetch", "SA": "buildpacks-sa"}], FIELD_NOT_ALLOWED,
                 'spec.taskRunSpecs[0].pipelineTaskName "fetch" is not a task of the pipeline '
                 '"buildpacks" that a run may give a taskRunSpecs entry (tasks: '
                 "build-from-git, lint)", id="task-not-listed"),
    pytest.param([{"SA": "buildpacks-sa"}], FIELD_NOT_ALLOWED, "pipelineTaskName unset",
                 id="no-task-name"),
    pytest.param([{"pipelineTaskName": "build-from-git"}, {"pipelineTaskName": "build-from-git"}],
                 SPEC_INVALID, "the task build-from-git has more than one entry", id="twice"),
    pytest.param([{"pipelineTaskName": "build-from-git", "podTemplate": {"hostNetwork": True}}],
                 FIELD_NOT_ALLOWED, "spec.taskRunSpecs[0].podTemplate: a pod template override",
                 id="v1-pod-template"),
    pytest.param([{"pipelineTaskName": "build-from-git", "taskPodTemplate": {
        "volumes": [{"name": "s", "secret": {"secretName": "basic-user-pass"}}]}}],
        FIELD_NOT_ALLOWED, "taskPodTemplate: a pod template override", id="v1beta1-pod-template"),
    pytest.param([{"pipelineTaskName": "build-from-git", "stepSpecs": [
        {"name": "export", "computeResources": {}}]}], FIELD_NOT_ALLOWED, "step overrides",
        id="step-specs"),
    pytest.param([{"pipelineTaskName": "build-from-git", "stepOverrides": [{"name": "x"}]}],
                 FIELD_NOT_ALLOWED, "step overrides", id="step-overrides"),
    pytest.param([{"pipelineTaskName": "build-from-git", "sidecarSpecs": [{"name": "x"}]}],
                 FIELD_NOT_ALLOWED, "sidecar overrides", id="sidecar-specs"),
    pytest.param([{"pipelineTaskName": "build-from-git", "sidecarOverrides": [{"name": "x"}]}],
                 FIELD_NOT_ALLOWED, "sidecar overrides", id="sidecar-overrides"),
    pytest.param([{"pipelineTaskName": "build-from-git",
                   "computeResources": {"limits": {"cpu": "64"}}}], FIELD_NOT_ALLOWED,
                 "compute resources", id="compute-resources"),
    pytest.param([{"pipelineTaskName": "build-from-git", "metadata": {
        "labels": {"app.kubernetes.io/managed-by": "someone-else"}}}], FIELD_NOT_ALLOWED,
        "spec.taskRunSpecs[0].metadata: labels and annotations", id="metadata"),
    pytest.param([{"pipelineTaskName": "build-from-git", "timeout": "0s"}], FIELD_NOT_ALLOWED,
                 "a per-task timeout is not allowed", id="task-timeout"),
    pytest.param([{"pipelineTaskName": "build-from-git", "somethingNew": 1}], FIELD_NOT_ALLOWED,
                 "only pipelineTaskName and serviceAccountName may be set", id="unknown-key"),
    pytest.param(["build-from-git"], SPEC_INVALID, "spec.taskRunSpecs[0] must be an object",
                 id="entry-not-an-object"),
    pytest.param({"build-from-git": {}}, SPEC_INVALID, "spec.taskRunSpecs must be a list",
                 id="not-a-list"),
])
def test_a_task_run_spec_may_only_name_the_build_service_account_for_a_listed_task(
        key: str, shape: str, entries: object, reason: str | None, text: str) -> None:
    if isinstance(entries, list):
        entries = [{(key if k == "SA" else k): v for k, v in e.items()}
                   if isinstance(e, dict) else e for e in entries]
    run = make_run(shape, taskRunSpecs=entries)
    assert reasons(run) == ([] if reason is None else [reason])
    assert text in messages(run)


def test_a_pipeline_that_lists_no_tasks_takes_no_task_run_specs() -> None:
    run = make_run(pipelineRef={"name": "plain"}, taskRunSpecs=[
        {"pipelineTaskName": "build-from-git", "serviceAccountName": "buildpacks-sa"}])
    assert reasons(run) == [FIELD_NOT_ALLOWED]
    assert 'of the pipeline "plain" that a run may give a taskRunSpecs entry (tasks: none)' \
        in messages(run)


@pytest.mark.parametrize("spec", [
    pytest.param({"taskRunTemplate": {"serviceAccountName": "default"}}, id="v1"),
    pytest.param({"serviceAccountName": "default"}, id="v1beta1"),
])
def test_tektons_default_service_account_is_what_naming_none_gives(spec: dict[str, Any]) -> None:
    # Tekton's defaulting webhook writes it into a run that names none, before this rule sees it.
    run = make_run(**{"taskRunTemplate": None, **spec})
    assert reasons(run) == []


@pytest.mark.parametrize(("old_spec", "new_spec", "allowed"), [
    pytest.param({}, {"taskRunTemplate": {"serviceAccountName": "default"}}, True,
                 id="controller-writes-the-default-back"),
    pytest.param({}, {"serviceAccountName": "default"}, True, id="v1beta1-default-written-back"),
    pytest.param({}, {"taskRunTemplate": {}}, True, id="go-writes-an-empty-struct-back"),
    pytest.param({}, {"taskRunSpecs": []}, True, id="empty-list"),
    pytest.param({"taskRunTemplate": {"serviceAccountName": "buildpacks-sa"}},
                 {"taskRunTemplate": {"serviceAccountName": "default"}}, False,
                 id="named-account-replaced"),
    pytest.param({}, {"taskRunTemplate": {"serviceAccountName": "buildpacks-sa"}}, False,
                 id="account-added-later"),
    pytest.param({}, {"taskRunTemplate": {"serviceAccountName": "default",
                                          "podTemplate": {"hostNetwork": True}}}, False,
                 id="default-with-a-pod-template"),
])
def test_an_update_that_only_adds_tektons_default_service_account_is_no_spec_change(
        old_spec: dict[str, Any], new_spec: dict[str, Any], allowed: bool) -> None:
    old = make_run(taskRunTemplate=None, serviceAccountName=None)
    old["spec"].update(old_spec)
    new = copy.deepcopy(old)
    new["spec"].update(new_spec)
    found = [f.reason for f in check_changed_run(old, new, BUILDS)]
    assert found == ([] if allowed else [SPEC_CHANGED])


@pytest.mark.parametrize("shape", SHAPES)
def test_the_builds_service_account_or_none_is_allowed(shape: str) -> None:
    assert reasons(make_run(shape, taskRunTemplate=None, serviceAccountName=None)) == []


WORKSPACES_ALLOWED = BUILDS.model_copy(update={"workspaces": parse_policy("""
builds:
  workspaces:
    persistentVolumeClaims: [shared-cache]
    volumeClaimTemplates: true
    configMaps: [ca-bundle]
    secrets: [pip-config]
""").builds.workspaces})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("workspace", "by_default", "when_allowed", "text"), [
    pytest.param({"name": "w", "emptyDir": {}}, True, True, "", id="empty-dir"),
    pytest.param({"name": "w", "emptyDir": {"medium": "Memory"}}, True, True, "",
                 id="empty-dir-in-memory"),
    pytest.param({"name": "w", "persistentVolumeClaim": {"claimName": "shared-cache"}}, False,
                 True, 'the claim "shared-cache" is not one a run may mount', id="pvc"),
    pytest.param({"name": "w", "persistentVolumeClaim": {"claimName": "other-tools-data"}},
                 False, False, 'the claim "other-tools-data"', id="pvc-not-listed"),
    pytest.param({"name": "w", "volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        "subPath": "a"}, False, True, "a volumeClaimTemplate is not allowed", id="claim-template"),
    pytest.param({"name": "w", "volumeClaimTemplate": {"spec": {
        "dataSource": {"kind": "PersistentVolumeClaim", "name": "victim"}}}}, False, False,
        "", id="claim-template-cloning-a-claim"),
    pytest.param({"name": "w", "volumeClaimTemplate": {"spec": {"dataSourceRef": {
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}},
        False, False, "", id="claim-template-from-a-snapshot"),
    pytest.param({"name": "w", "volumeClaimTemplate": {"spec": {"volumeName": "pv-1"}}}, False,
                 False, "", id="claim-template-bound-to-a-volume"),
    pytest.param({"name": "w", "volumeClaimTemplate": {"spec": {
        "selector": {"matchLabels": {"tool": "victim"}}}}}, False, False, "",
        id="claim-template-selecting-volumes"),
    pytest.param({"name": "w", "configMap": {"name": "ca-bundle"}}, False, True,
                 'the configMap "ca-bundle" is not one a run may mount', id="config-map"),
    pytest.param({"name": "w", "configMap": {"name": "toolforge-admission-policy"}}, False,
                 False, "", id="config-map-not-listed"),
    pytest.param({"name": "w", "secret": {"secretName": "pip-config"}}, False, True,
                 'the secret "pip-config" is not one a run may mount', id="secret"),
    pytest.param({"name": "w", "secret": {"secretName": "basic-user-pass"}}, False, False,
                 'the secret "basic-user-pass"', id="registry-secret"),
    pytest.param({"name": "w", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "harbor", "path": "t"}}]}}, False, False,
        "projected volumes are never allowed (one can carry a token", id="projected"),
    pytest.param({"name": "w", "csi": {"driver": "x"}}, False, False,
                 "csi volumes are never allowed", id="csi"),
    pytest.param({"name": "w", "emptyDir": {}, "secret": {"secretName": "pip-config"}}, False,
                 False, "names 2 volumes (emptyDir, secret); use one", id="two-volumes"),
    pytest.param({"name": "w", "hostPath": {"path": "/"}}, False, False,
                 "hostPath is not allowed", id="not-a-workspace-kind"),
    pytest.param({"name": "w"}, False, False, "has no volume", id="no-volume"),
    pytest.param({"name": "w", "emptyDir": None}, False, False, "has no volume",
                 id="empty-dir-null"),
    pytest.param({"name": "w", "emptyDir": {}, "subPath": "../x"}, False, False, "without ..",
                 id="subpath-escapes"),
    pytest.param({"name": "w", "persistentVolumeClaim": "c"}, False, False,
                 "persistentVolumeClaim must be an object", id="malformed-claim"),
])
def test_workspaces_are_scratch_unless_the_policy_names_the_volume(
        shape: str, workspace: dict[str, Any], by_default: bool, when_allowed: bool,
        text: str) -> None:
    run = make_run(shape, workspaces=[workspace])
    for builds, allowed in ((BUILDS, by_default), (WORKSPACES_ALLOWED, when_allowed)):
        found = check_new_run("mytool", run, builds)
        assert [f.reason for f in found] == ([] if allowed else [WORKSPACE_NOT_ALLOWED]), builds
    if not by_default:
        assert text in messages(run)


@pytest.mark.parametrize(("spec", "allowed"), [
    pytest.param({"timeouts": {"pipeline": "1h"}}, True, id="v1-at-limit"),
    pytest.param({"timeouts": {"pipeline": "30m", "tasks": "20m", "finally": "10m"}}, True,
                 id="v1-all-three"),
    pytest.param({"timeouts": {"pipeline": "1h1s"}}, False, id="v1-pipeline-too-long"),
    pytest.param({"timeouts": {"tasks": "2h"}}, False, id="v1-tasks-too-long"),
    pytest.param({"timeouts": {"finally": "2h"}}, False, id="v1-finally-too-long"),
    pytest.param({"timeouts": {"pipeline": "0"}}, False, id="v1-zero-is-no-timeout"),
    pytest.param({"timeouts": {"pipeline": "0s"}}, False, id="v1-zero-seconds"),
    pytest.param({"timeouts": {"pipeline": "soon"}}, False, id="v1-unparsable"),
    pytest.param({"timeouts": {"pipeline": 3600}}, False, id="v1-number"),
    pytest.param({"timeouts": {"other": "1m"}}, False, id="v1-unknown-key"),
    pytest.param({"timeout": "1h"}, True, id="v1beta1-at-limit"),
    pytest.param({"timeout": "90m"}, False, id="v1beta1-too-long"),
    pytest.param({"timeout": "0"}, False, id="v1beta1-zero"),
    pytest.param({"timeouts": {"pipeline": "-1h"}}, False, id="v1-negative"),
    pytest.param({"timeouts": {"pipeline": "1h0m0.000000001s"}}, False,
                 id="v1-a-nanosecond-over"),
    pytest.param({"timeouts": {"pipeline": "59m59.999999999s"}}, True, id="v1-just-under"),
    pytest.param({"timeouts": {"pipeline": "30m", "tasks": ""}}, False, id="v1-empty"),
])
def test_timeouts_are_bounded_and_never_zero(spec: dict[str, Any], allowed: bool) -> None:
    run = make_run("v1", timeouts=None)
    run["spec"].update(spec)
    found = reasons(run)
    assert found == [] if allowed else found and set(found) <= {TIMEOUT_NOT_ALLOWED,
                                                                FIELD_NOT_ALLOWED}


@pytest.mark.parametrize("place", [
    pytest.param(("timeouts", "pipeline"), id="v1-pipeline"),
    pytest.param(("timeouts", "tasks"), id="v1-tasks"),
    pytest.param(("timeouts", "finally"), id="v1-finally"),
    pytest.param(("timeout",), id="v1beta1-timeout"),
])
@pytest.mark.parametrize("value", [
    "0", "-0", "+0", "0s", "0.5ns", ".5ns", "0.0000001us", "0.9ns", "0.0000000000001h",
    "0.0000001\u00b5s", "0.0000001\u03bcs", "0h0m0s", "9223372036854775808ns9223372036854775808ns",
])
def test_a_timeout_go_reads_as_zero_is_refused_as_no_timeout(place: tuple[str, ...],
                                                             value: str) -> None:
    run = make_run("v1", timeouts=None)
    if place == ("timeout",):
        run["spec"]["timeout"] = value
    else:
        run["spec"]["timeouts"] = {place[1]: value}
    found = check_new_run("mytool", run, BUILDS)
    assert [f.reason for f in found] == [TIMEOUT_NOT_ALLOWED]
    assert f"spec.{'.'.join(place)}" in found[0].message
    assert "is 0 as Tekton reads it, which means no timeout at all" in found[0].message


@pytest.mark.parametrize("value", ["1ns", "0.000000001s", "1\u03bcs", "1\u00b5s", "+1m"])
def test_the_shortest_timeouts_go_reads_as_nonzero_are_allowed(value: str) -> None:
    run = make_run("v1", timeouts={"pipeline": value})
    assert reasons(run) == []


def test_every_finding_is_reported_at_once() -> None:
    run = make_run("v1beta1", params={"APP_IMAGE": f"{HARBOR}/tool-other/x", "GROUP_ID": "0"},
                   pipelineSpec={"tasks": []}, timeout="0", serviceAccountName="admin")
    del run["metadata"]["labels"]
    found = set(reasons(run))
    assert found >= {TOOL_LABEL_WRONG, FIELD_NOT_ALLOWED, SERVICE_ACCOUNT_NOT_ALLOWED,
                     TIMEOUT_NOT_ALLOWED, PARAM_NOT_ALLOWED, APP_IMAGE_NOT_ALLOWED}


@pytest.mark.parametrize("spec", [
    pytest.param("not a mapping", id="spec-string"),
    pytest.param(None, id="spec-null"),
])
def test_a_malformed_spec_is_refused_without_crashing(spec: object) -> None:
    run = make_run()
    run["spec"] = spec
    assert SPEC_INVALID in reasons(run)


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("params", "x", id="params-not-list"),
    pytest.param("workspaces", {"a": 1}, id="workspaces-not-list"),
    pytest.param("timeouts", "1h", id="timeouts-not-mapping"),
    pytest.param("taskRunTemplate", "x", id="template-not-mapping"),
])
def test_malformed_fields_are_refused_without_crashing(field: str, value: object) -> None:
    run = make_run()
    run["spec"][field] = value
    assert SPEC_INVALID in reasons(run)


# --- UPDATE ---------------------------------------------------------------------------------

def updated(run: dict[str, Any], **spec: Any) -> dict[str, Any]:
    new = copy.deepcopy(run)
    new["spec"].update(spec)
    return new


@pytest.mark.parametrize("shape", SHAPES)
def test_metadata_and_status_changes_always_pass(shape: str) -> None:
    old = make_run(shape)
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = ["chains.tekton.dev/pipelinerun"]
    new["metadata"]["labels"]["tekton.dev/pipeline"] = "buildpacks"
    new["status"] = {"conditions": [{"type": "Succeeded", "status": "Unknown"}]}
    assert check_changed_run(old, new, BUILDS) == ()


def test_old_runs_with_removed_builders_can_still_be_updated() -> None:
    old = make_run(params={"BUILDER_IMAGE": "retired.example/builder:1"})
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = {"x": "y"}
    assert check_changed_run(old, new, BUILDS) == ()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("old_status", "new_status", "allowed"), [
    pytest.param(None, "Cancelled", True, id="cancel"),
    pytest.param(None, "CancelledRunFinally", True, id="cancel-run-finally"),
    pytest.param(None, "StoppedRunFinally", True, id="stop-run-finally"),
    pytest.param("Cancelled", "CancelledRunFinally", True, id="cancel-to-cancel-finally"),
    pytest.param("PipelineRunPending", None, True, id="release-pending"),
    pytest.param("PipelineRunPending", "Cancelled", True, id="cancel-pending"),
    pytest.param(None, "PipelineRunPending", False, id="set-pending"),
    pytest.param("Cancelled", None, False, id="uncancel"),
    pytest.param(None, "Whatever", False, id="unknown-status"),
])
def test_spec_status_may_only_stop_a_run_or_release_a_pending_one(
        shape: str, old_status: str | None, new_status: str | None, allowed: bool) -> None:
    old = make_run(shape, status=old_status)
    new = updated(old, status=new_status)
    found = [f.reason for f in check_changed_run(old, new, BUILDS)]
    assert found == ([] if allowed else [SPEC_CHANGED])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("change", [
    pytest.param({"params": [{"name": "APP_IMAGE", "value": f"{HARBOR}/tool-other/x"}]},
                 id="params"),
    pytest.param({"pipelineRef": {"name": "evil"}}, id="pipeline"),
    pytest.param({"pipelineSpec": {"tasks": []}}, id="add-inline-spec"),
])
def test_other_spec_changes_are_refused(shape: str, change: dict[str, Any]) -> None:
    old = make_run(shape)
    found = check_changed_run(old, updated(old, **change), BUILDS)
    assert [f.reason for f in found] == [SPEC_CHANGED]
    assert next(iter(change)) in found[0].message


def test_a_cancel_together_with_another_spec_change_is_refused() -> None:
    old = make_run()
    new = updated(old, status="Cancelled", pipelineRef={"name": "evil"})
    assert [f.reason for f in check_changed_run(old, new, BUILDS)] == [SPEC_CHANGED]


@pytest.mark.parametrize("new_label", [
    pytest.param("other", id="changed"),
    pytest.param(None, id="removed"),
])
def test_the_tool_label_cannot_change(new_label: str | None) -> None:
    old = make_run()
    new = copy.deepcopy(old)
    if new_label is None:
        del new["metadata"]["labels"]["toolforge.org/tool"]
    else:
        new["metadata"]["labels"]["toolforge.org/tool"] = new_label
    assert [f.reason for f in check_changed_run(old, new, BUILDS)] == [TOOL_LABEL_CHANGED]


def test_the_tool_label_cannot_be_added_later() -> None:
    old = make_run()
    del old["metadata"]["labels"]
    new = make_run()
    assert [f.reason for f in check_changed_run(old, new, BUILDS)] == [TOOL_LABEL_CHANGED]


# --- Slot messages --------------------------------------------------------------------------

def test_a_full_slot_names_the_active_runs_and_how_to_cancel_one() -> None:
    finding = too_many_runs("mytool", 1, ["image-build/mytool-run-1"])
    assert finding.reason == TOO_MANY_RUNS
    assert "image-build/mytool-run-1" in finding.message
    assert ("kubectl patch pipelinerun mytool-run-1 -n image-build --type merge -p "
            """'{"spec":{"status":"Cancelled"}}'""") in finding.message


def test_a_tool_with_limit_zero_is_told_it_may_not_build() -> None:
    assert "may not run builds" in too_many_runs("mytool", 0, []).message
