"""Pods of the build namespace as stored: who made them, and what their trusted steps push to.

The pods are the captured ones (tests/fixtures/tekton), mutated as the API server stores them;
the PipelineRun they belong to is made from the pod's own references (tests/buildruns.py).
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from policies.buildruns import POD_NOT_FROM_CONTROLLER
from policies.credentials import (
    BUILD_PODS,
    BUILD_RUN_UNKNOWN,
    CREDENTIAL_LEAK,
    TRUSTED_STEP_TARGET,
    needs_build_run,
    strip_build_credentials,
    trusted_step_findings,
)
from policies.identity import User
from policies.model import Policy, parse_policy
from policies.questions import FoundRun
from policies.rule import Operation
from tests.builders import EXAMPLE_POLICY, judged, rule_review
from tests.buildruns import (
    APP_IMAGE,
    CONTROLLER,
    PIPELINERUN_POD,
    RUN_IMAGE,
    TASKRUN_POD,
    captured_pod,
    captured_review,
    objects_of,
)

POLICY = parse_policy(EXAMPLE_POLICY.read_bytes())
NAMESPACE = "image-build"
TEKTON = User(CONTROLLER, ("system:serviceaccounts", "system:authenticated"))
TOOL = User("mytool", ("toolforge", "system:authenticated"))
VICTIM_IMAGE = "tools-harbor.wmcloud.org/tool-victim/victim:latest"


def stored(scenario: str = PIPELINERUN_POD, policy: Policy = POLICY,
           run_image: str | None = RUN_IMAGE) -> dict[str, Any]:
    """The captured pod, with the build-pod mutation applied (as the validator sees it)."""
    pod = captured_pod(scenario, run_image=run_image)
    decision = strip_build_credentials(pod, policy.builds.namespace, policy)
    assert decision.allowed
    assert decision.patched is not None
    patched: dict[str, Any] = jsonpatch.make_patch(pod, decision.patched).apply(pod)
    return patched


def found(pod: dict[str, Any], **params: Any) -> FoundRun:
    run, _ = objects_of(pod, params=params)
    return FoundRun(run)


def step(pod: dict[str, Any], name: str) -> dict[str, Any]:
    container: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    return container


def check(pod: dict[str, Any], run: FoundRun | None, *, operation: Operation = "CREATE",
          user: User = TEKTON, namespace: str = NAMESPACE) -> Any:
    """The build-pod rule's decision, the pod's PipelineRun looked up as `run` (None: no
    cluster)."""
    return judged((BUILD_PODS,), rule_review(pod, namespace=namespace, operation=operation,
                                             user=user), POLICY, answer=run)


# --- the run's own build ----------------------------------------------------------------------


def test_a_build_pod_pushing_to_its_runs_app_image_is_admitted() -> None:
    pod = stored()
    assert needs_build_run(pod, NAMESPACE, "CREATE", POLICY)
    decision = check(pod, found(pod))
    assert decision.allowed, decision.message
    assert decision.warnings == ()


@pytest.mark.parametrize("scenario", [
    "a-taskrun-phases-0.2-basic-auth", "b-taskrun-phases-0.3-basic-auth",
    "c-pipelinerun-phases-0.2-basic-auth", "d-taskrun-phases-0.2-dockerconfigjson"])
def test_every_captured_trusted_step_reads_unambiguously_and_pushes_only_app_image(
        scenario: str) -> None:
    """The real shapes, 0.3's analyze (`-tag=`, `-run-image=`, step-result `-uid=$(...)`)
    included: nothing to refuse against a run whose APP_IMAGE is the one they push."""
    policy = POLICY.model_copy(update={"builds": POLICY.builds.model_copy(
        update={"namespace": captured_review(scenario)["request"]["namespace"]})})
    pod = stored(scenario, policy)
    assert trusted_step_findings(pod, policy, found(pod)) == []
    other = FoundRun(objects_of(pod, app_image=VICTIM_IMAGE)[0])
    pushing = {f.message.split(" would use")[0] for f in
               trusted_step_findings(pod, policy, other)}
    assert pushing == {"trusted step step-analyze", "trusted step step-export"}


def test_the_export_target_must_be_the_runs_app_image() -> None:
    """The run is another tool's (or its APP_IMAGE is): the robot account must not push."""
    pod = stored()
    decision = check(pod, FoundRun(objects_of(pod, app_image=VICTIM_IMAGE)[0]))
    assert not decision.allowed
    assert decision.reason == TRUSTED_STEP_TARGET
    assert decision.message.startswith(
        f'trusted step step-analyze would use the registry credentials on image "{APP_IMAGE}"; '
        f'its PipelineRun\'s APP_IMAGE is "{VICTIM_IMAGE}"')
    assert "trusted step step-export would use the registry credentials on image" in \
        decision.message


def test_an_export_step_with_a_second_target_is_refused() -> None:
    """`exporter <image> <tag>...` pushes to every positional argument, not only the last."""
    pod = stored()
    step(pod, "step-export")["args"].insert(-1, VICTIM_IMAGE)
    decision = check(pod, found(pod))
    assert not decision.allowed
    assert decision.message == (
        f'trusted step step-export would use the registry credentials on image "{VICTIM_IMAGE}"; '
        f'its PipelineRun\'s APP_IMAGE is "{APP_IMAGE}"')


@pytest.mark.parametrize(("flag", "what"), [
    (f"-cache-image={VICTIM_IMAGE}", "a build may not write a cache image"),
    ("-insecure-registry=tools-harbor.wmcloud.org", "registries are reached over TLS only"),
    (f"-run-image={VICTIM_IMAGE}", f'its PipelineRun\'s RUN_IMAGE is "{RUN_IMAGE}"'),
    (f"-previous-image={VICTIM_IMAGE}", "its PipelineRun's APP_IMAGE is"),
    (f"-tag={VICTIM_IMAGE}", "its PipelineRun's APP_IMAGE is"),
], ids=["cache-image", "insecure-registry", "run-image", "previous-image", "tag"])
def test_every_other_image_the_export_step_names_is_checked(flag: str, what: str) -> None:
    pod = stored()
    args = step(pod, "step-export")["args"]
    args.insert(len(args) - 1, flag)  # after the task's own empty ones: the last value counts
    decision = check(pod, found(pod))
    assert not decision.allowed
    assert decision.reason == TRUSTED_STEP_TARGET
    assert what in decision.message


def test_the_run_image_of_the_run_is_allowed() -> None:
    pod = stored()
    assert f"-run-image={RUN_IMAGE}" in step(pod, "step-export")["args"]
    assert check(pod, found(pod, RUN_IMAGE=RUN_IMAGE)).allowed
    other = check(pod, found(pod, RUN_IMAGE="tools-harbor.wmcloud.org/toolforge/heroku-run:24"))
    assert not other.allowed
    unset = check(pod, found(pod, RUN_IMAGE=None))
    assert f'run image "{RUN_IMAGE}"; its PipelineRun\'s RUN_IMAGE is unset' in unset.message


# --- the run image from a file the build's steps can write ------------------------------------

STACK_FILE_REFUSED = (
    'trusted step step-export names no run image, so the lifecycle would pull the one named in '
    '"/layers/stack.toml", which is on volume layers-dir, where the build\'s other steps can '
    "write it; set the run's RUN_IMAGE (the task passes it as -run-image)")


@pytest.mark.parametrize("scenario", [
    "a-taskrun-phases-0.2-basic-auth", "c-pipelinerun-phases-0.2-basic-auth",
    "d-taskrun-phases-0.2-dockerconfigjson"])
def test_an_export_of_phases_02_without_a_run_image_is_refused(scenario: str) -> None:
    """buildpacks-phases 0.2 passes `-stack=/layers/stack.toml` and `-run-image=` when the run
    leaves RUN_IMAGE out (the captures did): lifecycle 0.10.2 then pulls the run image named in
    the stack file, which copy-stack-toml wrote and the tool's build step can rewrite, with the
    robot account, and builds the tool's image on it (another tool's private image, say)."""
    policy = POLICY.model_copy(update={"builds": POLICY.builds.model_copy(
        update={"namespace": captured_review(scenario)["request"]["namespace"]})})
    pod = stored(scenario, policy, run_image=None)
    for run in (found(pod, RUN_IMAGE=None), None):  # with the run looked up, or none
        assert [f.message for f in trusted_step_findings(pod, policy, run)] == [
            STACK_FILE_REFUSED]
    # The same pod for a run with RUN_IMAGE: the exporter never reads the stack file's run image.
    assert trusted_step_findings(stored(scenario, policy), policy, found(pod)) == []


def test_without_a_cluster_an_export_without_a_run_image_is_still_refused() -> None:
    pod = stored()
    args = step(pod, "step-export")["args"]
    args[args.index(f"-run-image={RUN_IMAGE}")] = "-run-image="
    decision = check(pod, None)
    assert (decision.allowed, decision.reason) == (False, TRUSTED_STEP_TARGET)
    assert decision.message == STACK_FILE_REFUSED


def test_the_0_3_task_reads_run_images_only_from_its_image() -> None:
    """buildpacks-phases 0.3's analyze gets `-run-image=` (the capture's run left RUN_IMAGE out)
    and no `-run`, so it reads the builder's own /cnb/run.toml; its export (platform 0.13) has no
    such flag at all (it reads analyzed.toml: docs/security.md)."""
    scenario = "b-taskrun-phases-0.3-basic-auth"
    policy = POLICY.model_copy(update={"builds": POLICY.builds.model_copy(
        update={"namespace": captured_review(scenario)["request"]["namespace"]})})
    pod = stored(scenario, policy, run_image=None)
    assert "-run-image=" in step(pod, "step-analyze")["args"]
    assert trusted_step_findings(pod, policy, None) == []
    # The same analyze told to read a run file the tool's code can write is refused.
    step(pod, "step-analyze")["args"].insert(-1, "-run=/layers/run.toml")
    assert [f.message for f in trusted_step_findings(pod, policy, None)] == [
        'trusted step step-analyze names no run image, so the lifecycle would pull the one named '
        'in "/layers/run.toml", which is on volume layers-dir, where the build\'s other steps can '
        "write it; set the run's RUN_IMAGE (the task passes it as -run-image)"]


def without_run_image() -> dict[str, Any]:
    pod = stored()
    args = step(pod, "step-export")["args"]
    args.remove(f"-run-image={RUN_IMAGE}")
    return pod


@pytest.mark.parametrize(("change", "refused"), [
    # The environment names the run image: the stack file is not read.
    (lambda c: c["env"].append({"name": "CNB_RUN_IMAGE", "value": RUN_IMAGE}), False),
    # The deprecated -image flag is a run image too.
    (lambda c: c["args"].insert(-1, f"-image={RUN_IMAGE}"), False),
    # No stack file: the lifecycle stops ("-run-image is required").
    (lambda c: c["args"].__setitem__(c["args"].index("-stack=/layers/stack.toml"), "-stack="),
     False),
    # The lifecycle image's own default file (/cnb/stack.toml), on no volume.
    (lambda c: c["args"].remove("-stack=/layers/stack.toml"), False),
    # ... unless a volume is mounted over /cnb.
    (lambda c: (c["args"].remove("-stack=/layers/stack.toml"),
                c["volumeMounts"].append({"name": "empty-dir", "mountPath": "/cnb"})), True),
    # The stack path from the environment, or one the pod does not fix.
    (lambda c: (c["args"].remove("-stack=/layers/stack.toml"),
                c["env"].append({"name": "CNB_STACK_PATH", "value": "/layers/x/stack.toml"})),
     True),
    (lambda c: c["args"].insert(-1, "-stack=stack.toml"), True),
    (lambda c: c["args"].insert(-1, "-stack=/$(steps.prepare.results.path)"), True),
    # An empty CNB_RUN_IMAGE names nothing.
    (lambda c: c["env"].append({"name": "CNB_RUN_IMAGE", "value": ""}), True),
], ids=["env-run-image", "deprecated-image-flag", "no-stack-file", "image-default",
        "volume-over-cnb", "env-stack-path", "relative-stack-path", "step-result-stack-path",
        "empty-env-run-image"])
def test_where_an_export_without_a_run_image_would_read_one(change: Any, refused: bool) -> None:
    pod = without_run_image()
    change(step(pod, "step-export"))
    findings = [f for f in trusted_step_findings(pod, POLICY, None)
                if "names no run image" in f.message]
    assert bool(findings) is refused, findings


def test_a_registry_image_from_the_environment_counts_as_the_flag() -> None:
    pod = stored()
    export = step(pod, "step-export")
    export["args"].remove("-cache-image=")
    export["env"].append({"name": "CNB_CACHE_IMAGE", "value": VICTIM_IMAGE})
    decision = check(pod, found(pod))
    assert "on cache image" in decision.message


def test_an_argument_list_the_lifecycle_could_read_two_ways_is_refused() -> None:
    """`-run-image <x>` takes the next argument only if run-image is not a boolean flag."""
    pod = stored()
    args = step(pod, "step-export")["args"]
    args[-1:] = ["-run-image", VICTIM_IMAGE, APP_IMAGE]
    decision = check(pod, found(pod))
    assert not decision.allowed
    assert "its lifecycle arguments cannot be read unambiguously" in decision.message


def test_a_pod_of_a_taskrun_without_a_pipelinerun_keeps_no_credentials() -> None:
    pod = stored(TASKRUN_POD)
    decision = check(pod, FoundRun(None, "its TaskRun x belongs to no PipelineRun"))
    assert not decision.allowed
    assert decision.reason == BUILD_RUN_UNKNOWN
    assert decision.message.startswith(
        "trusted step step-analyze keeps the registry credentials, but the pod belongs to no "
        "PipelineRun that exists: its TaskRun x belongs to no PipelineRun")


def test_without_a_cluster_the_run_is_not_compared_and_the_review_says_so() -> None:
    pod = stored()
    decision = check(pod, None)
    assert decision.allowed
    assert decision.warnings == ("the PipelineRun of this pod was not looked up (no cluster "
                                 "connection), so the images its trusted steps push to were not "
                                 "compared with the run's",)


def test_a_pod_without_trusted_steps_needs_no_run() -> None:
    pod = stored()
    pod["spec"]["containers"] = [c for c in pod["spec"]["containers"]
                                 if c["name"] in ("step-detect", "step-build")]
    assert not needs_build_run(pod, NAMESPACE, "CREATE", POLICY)
    assert check(pod, None).warnings == ()
    assert not needs_build_run(stored(), NAMESPACE, "UPDATE", POLICY)
    assert not needs_build_run(stored(), "tool-mytool", "CREATE", POLICY)


# --- who makes and changes pods -----------------------------------------------------------------


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_only_the_tekton_controller_makes_or_changes_build_pods(operation: Operation) -> None:
    pod = stored()
    decision = check(pod, found(pod), operation=operation, user=TOOL)
    assert not decision.allowed
    assert decision.reason == POD_NOT_FROM_CONTROLLER
    verb = "creates" if operation == "CREATE" else "changes"
    assert decision.message.startswith(
        f"only the Tekton controller ({CONTROLLER}) {verb} pods in the build namespace "
        'image-build; user "mytool" may not')


def test_pods_elsewhere_are_not_this_rules() -> None:
    pod = stored()
    assert check(pod, None, namespace="tool-mytool", user=TOOL).allowed
    assert check(pod, None, operation="DELETE", user=TOOL).allowed


def test_a_plain_pod_mounting_the_registry_secret_is_refused_even_from_the_controller() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "plain", "namespace": NAMESPACE},
           "spec": {"volumes": [{"name": "creds", "secret": {"secretName": "basic-user-pass"}}],
                    "containers": [{"name": "step-export", "image": "busybox",
                                    "volumeMounts": [{"name": "creds", "mountPath": "/c"}]}]}}
    decision = check(pod, None)
    assert not decision.allowed
    assert decision.reason == CREDENTIAL_LEAK
    assert decision.message.startswith("untrusted container step-export: mount /c can read")
    assert check(pod, None, user=TOOL).reason == POD_NOT_FROM_CONTROLLER


def test_the_controllers_own_update_of_a_stored_build_pod_passes() -> None:
    """Tekton swaps finished sidecars' images for its nop image: a spec change, by it."""
    pod = stored()
    step(pod, "step-results")["image"] = "ghcr.io/tektoncd/pipeline/nop:v1.15.1"
    assert check(pod, None, operation="UPDATE").allowed
