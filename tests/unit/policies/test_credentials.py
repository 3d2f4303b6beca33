"""Registry credentials in Tekton build pods: stripped from every container but trusted steps."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from policies.credentials import (
    BUILD_POD_CREDENTIALS,
    CREDENTIAL_LEAK,
    CREDENTIALS_STRIPPED,
    SHARED_CREDENTIAL_HOME,
    SINGLE_PROCESS_BUILD,
    entrypoint_of,
    find_credential_leaks,
    image_matches,
    strip_build_credentials,
    strip_credential_flags,
)
from policies.images import parse_image
from policies.model import Policy, parse_policy
from policies.rule import Operation
from tests.builders import judged, rule_review

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "tekton"
PHASES_02 = "a-taskrun-phases-0.2-basic-auth"
PHASES_03 = "b-taskrun-phases-0.3-basic-auth"
PIPELINERUN_02 = "c-pipelinerun-phases-0.2-basic-auth"
DOCKERCONFIGJSON = "d-taskrun-phases-0.2-dockerconfigjson"
SCENARIOS = (PHASES_02, PHASES_03, PIPELINERUN_02, DOCKERCONFIGJSON)
TRUSTED = {
    PHASES_02: {"step-analyze", "step-restore", "step-export"},
    PHASES_03: {"step-analyze", "step-export"},
    PIPELINERUN_02: {"step-analyze", "step-restore", "step-export"},
    DOCKERCONFIGJSON: {"step-analyze", "step-restore", "step-export"},
}
CREDENTIAL_FLAG_NAMES = ("basic-docker", "docker-config", "docker-cfg", "basic-git", "ssh-git")

POLICY = """
builds:
  namespace: {namespace}
credentials:
  mode: {mode}
  trustedSteps:
    - name: analyze
      images:
        - docker.io/buildpacksio/lifecycle:0.10.2
        - tools-harbor.wmcloud.org/toolforge/heroku-builder:22
      entrypoint: /cnb/lifecycle/analyzer
    - name: restore
      images: [docker.io/buildpacksio/lifecycle:0.10.2]
      entrypoint: /cnb/lifecycle/restorer
    - name: export
      images:
        - docker.io/buildpacksio/lifecycle:0.10.2
        - tools-harbor.wmcloud.org/toolforge/heroku-builder:22
      entrypoint: /cnb/lifecycle/exporter
"""


def load_review(scenario: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (FIXTURES / scenario / "pod.create.admissionreview.json").read_text())
    return document


def load(scenario: str) -> tuple[dict[str, Any], str]:
    request = load_review(scenario)["request"]
    return request["object"], request["namespace"]


def policy_for(namespace: str, mode: str = "enforce") -> Policy:
    return parse_policy(POLICY.format(namespace=namespace, mode=mode))


def mutate(pod: dict[str, Any], namespace: str, policy: Policy | None = None) -> dict[str, Any]:
    """The pod after the returned JSON patch is applied, as the API server would store it."""
    decision = strip_build_credentials(pod, namespace, policy or policy_for(namespace))
    assert decision.allowed, decision.message
    if decision.patched is None:
        return pod
    patch = jsonpatch.make_patch(pod, decision.patched)
    result: dict[str, Any] = patch.apply(pod)
    return result


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in containers(pod)}


def flags_of(container: dict[str, Any]) -> list[str]:
    args = container.get("args") or []
    return args[: args.index("--")] if "--" in args else list(args)


def after_separator(container: dict[str, Any]) -> list[str]:
    args = container.get("args") or []
    return args[args.index("--"):] if "--" in args else []


def secret_volumes(pod: dict[str, Any]) -> set[str]:
    names = set()
    for volume in pod["spec"].get("volumes", []):
        projected = volume.get("projected", {}).get("sources", [])
        if "secret" in volume or any("secret" in source for source in projected):
            names.add(volume["name"])
    return names


def token_volumes(pod: dict[str, Any]) -> set[str]:
    """Projected volumes with a ServiceAccount token (Kubernetes' kube-api-access-*)."""
    return {volume["name"] for volume in pod["spec"].get("volumes", [])
            if any("serviceAccountToken" in source
                   for source in volume.get("projected", {}).get("sources", []))}


def home_volumes(pod: dict[str, Any], trusted: set[str]) -> set[str]:
    """The volumes trusted steps have mounted at their HOME."""
    found = set()
    for name, container in by_name(pod).items():
        if name not in trusted:
            continue
        home = next(e["value"] for e in container["env"] if e["name"] == "HOME")
        found |= {m["name"] for m in container["volumeMounts"] if m["mountPath"] == home}
    return found


def credential_channels(pod: dict[str, Any], container: dict[str, Any],
                        trusted: set[str]) -> list[str]:
    """Every way this container could read a registry credential, checked independently."""
    found = []
    secret_backed = secret_volumes(pod)
    tokens = token_volumes(pod)
    homes = home_volumes(pod, trusted)
    for mount in container.get("volumeMounts", []):
        path = mount["mountPath"]
        if path.startswith("/tekton/creds-secrets") or path in ("/tekton/creds",):
            found.append(f"mount {path}")
        if mount["name"] in secret_backed:
            found.append(f"secret volume {mount['name']}")
        if mount["name"] in homes:
            found.append(f"trusted home {mount['name']}")
        if mount["name"] in tokens:
            found.append(f"API token {mount['name']}")
    for token in flags_of(container):
        if token.lstrip("-").split("=")[0] in CREDENTIAL_FLAG_NAMES:
            found.append(f"flag {token}")
    for env in container.get("env", []):
        if "secretKeyRef" in env.get("valueFrom", {}):
            found.append(f"env {env['name']}")
    found += [f"envFrom {e}" for e in container.get("envFrom", []) if "secretRef" in e]
    return found


# --- the captured pods -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_untrusted_container_can_read_a_credential_after_the_patch(scenario: str) -> None:
    pod, namespace = load(scenario)
    patched = mutate(pod, namespace)
    trusted = TRUSTED[scenario]
    leaks = {name: credential_channels(patched, c, trusted)
             for name, c in by_name(patched).items() if name not in trusted}
    assert {name: found for name, found in leaks.items() if found} == {}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_captured_pods_do_leak_credentials_to_detect_and_build_before_the_patch(
        scenario: str) -> None:
    pod, _ = load(scenario)
    for name in ("step-detect", "step-build"):
        assert credential_channels(pod, by_name(pod)[name], TRUSTED[scenario])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_trusted_step_keeps_exactly_what_it_had(scenario: str) -> None:
    pod, namespace = load(scenario)
    patched = mutate(pod, namespace)
    before, after = by_name(pod), by_name(patched)
    for name in TRUSTED[scenario]:
        assert after[name] == before[name]
        assert credential_channels(pod, after[name], TRUSTED[scenario])  # still has its creds


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pod_volumes_stay_and_only_private_homes_are_added(scenario: str) -> None:
    pod, namespace = load(scenario)
    patched = mutate(pod, namespace)
    old = pod["spec"]["volumes"]
    assert patched["spec"]["volumes"][: len(old)] == old
    for volume in patched["spec"]["volumes"][len(old):]:
        assert volume["name"].startswith("toolforge-untrusted-home-")
        assert volume["emptyDir"] == {"medium": "Memory"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_args_after_the_separator_and_container_order_are_untouched(scenario: str) -> None:
    pod, namespace = load(scenario)
    patched = mutate(pod, namespace)
    assert [c["name"] for c in containers(patched)] == [c["name"] for c in containers(pod)]
    for before, after in zip(containers(pod), containers(patched), strict=True):
        assert after_separator(after) == after_separator(before)
        assert entrypoint_of(after.get("args") or []) == entrypoint_of(before.get("args") or [])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_second_call_on_the_patched_pod_changes_nothing(scenario: str) -> None:
    pod, namespace = load(scenario)
    patched = mutate(pod, namespace)
    again = strip_build_credentials(patched, namespace, policy_for(namespace))
    assert again.allowed
    assert again.patched is None


def test_the_input_pod_is_never_changed() -> None:
    pod, namespace = load(PHASES_02)
    original = copy.deepcopy(pod)
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert decision.patched is not None
    assert pod == original


def test_untrusted_steps_that_shared_the_trusted_home_get_a_private_one() -> None:
    pod, namespace = load(PHASES_02)
    patched = by_name(mutate(pod, namespace))
    for name, index in (("step-prepare", 0), ("step-copy-stack-toml", 1), ("step-results", 7)):
        home = [m for m in patched[name]["volumeMounts"] if m["mountPath"] == "/tekton/home"]
        assert home == [{"name": f"toolforge-untrusted-home-{index}", "mountPath": "/tekton/home"}]
    # detect and build already had their own `empty-dir` at /tekton/home: left as it was.
    for name in ("step-detect", "step-build"):
        home = [m for m in patched[name]["volumeMounts"] if m["mountPath"] == "/tekton/home"]
        assert home == [{"name": "empty-dir", "mountPath": "/tekton/home"}]


def test_the_dockerconfigjson_variant_loses_its_docker_config_flag() -> None:
    pod, namespace = load(DOCKERCONFIGJSON)
    assert "-docker-config=registry-dockerconfigjson" in flags_of(by_name(pod)["step-build"])
    patched = by_name(mutate(pod, namespace))
    assert "-docker-config=registry-dockerconfigjson" not in flags_of(patched["step-build"])
    assert "-docker-config=registry-dockerconfigjson" in flags_of(patched["step-export"])


def test_volumes_named_as_before_tekton_1_11_are_found_by_path_and_source() -> None:
    pod, namespace = load(PHASES_02)
    text = json.dumps(pod).replace("tekton-creds-57c13d6b",
                                   "tekton-internal-secret-volume-basic-user-pass-x7k2q")
    renamed = json.loads(text)
    patched = mutate(renamed, namespace)
    for name, container in by_name(patched).items():
        if name not in TRUSTED[PHASES_02]:
            assert credential_channels(patched, container, TRUSTED[PHASES_02]) == []


def test_a_secret_volume_mounted_elsewhere_is_stripped_when_a_flag_names_its_secret() -> None:
    pod, namespace = load(PHASES_02)
    pod["spec"]["volumes"].append({"name": "renamed", "projected": {"sources": [
        {"secret": {"name": "basic-user-pass"}}]}})
    detect = by_name(pod)["step-detect"]
    detect["volumeMounts"].append({"name": "renamed", "mountPath": "/opt/x"})
    patched = by_name(mutate(pod, namespace))
    assert "/opt/x" not in [m["mountPath"] for m in patched["step-detect"]["volumeMounts"]]


def test_secret_env_of_any_secret_is_stripped_but_other_env_stays() -> None:
    pod, namespace = load(PHASES_02)
    build = by_name(pod)["step-build"]
    build["env"] += [
        {"name": "REG_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "basic-user-pass",
                                                                "key": "password"}}},
        {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "unrelated", "key": "x"}}},
        {"name": "LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]
    build["envFrom"] = [{"secretRef": {"name": "basic-user-pass"}},
                        {"secretRef": {"name": "unrelated"}},
                        {"configMapRef": {"name": "settings"}}]
    patched = by_name(mutate(pod, namespace))["step-build"]
    assert [e["name"] for e in patched["env"]] == ["CNB_PLATFORM_API", "HOME", "LIMIT"]
    assert patched["envFrom"] == [{"configMapRef": {"name": "settings"}}]


def test_a_step_named_export_in_another_image_is_not_trusted() -> None:
    pod, namespace = load(PHASES_02)
    by_name(pod)["step-export"]["image"] = "docker.io/attacker/lifecycle:0.10.2"
    patched = by_name(mutate(pod, namespace))
    assert credential_channels(pod, patched["step-export"], {"step-analyze", "step-restore"}) == []


def test_a_trusted_image_with_another_entrypoint_is_not_trusted() -> None:
    pod, namespace = load(PHASES_02)
    analyze = by_name(pod)["step-analyze"]
    at = analyze["args"].index("-entrypoint")
    analyze["args"][at + 1] = "/bin/sh"
    patched = by_name(mutate(pod, namespace))
    assert not any("basic-docker" in a for a in flags_of(patched["step-analyze"]))


# --- scope -------------------------------------------------------------------------------------


def _not_owned_by_taskrun(pod: dict[str, Any]) -> None:
    pod["metadata"]["ownerReferences"][0]["kind"] = "ReplicaSet"
    pod["metadata"]["ownerReferences"][0]["apiVersion"] = "apps/v1"


def _not_managed_by_tekton(pod: dict[str, Any]) -> None:
    pod["metadata"]["labels"].pop("app.kubernetes.io/managed-by")


def _no_owner(pod: dict[str, Any]) -> None:
    pod["metadata"].pop("ownerReferences")


@pytest.mark.parametrize("tweak", [_not_owned_by_taskrun, _not_managed_by_tekton, _no_owner],
                         ids=["owned-by-replicaset", "no-managed-by-label", "no-owner"])
def test_pods_that_tekton_did_not_make_are_left_alone(tweak: Any) -> None:
    pod, namespace = load(PHASES_02)
    tweak(pod)
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert decision.allowed
    assert decision.patched is None
    assert not decision.warnings


def test_build_pods_outside_the_build_namespace_are_left_alone() -> None:
    pod, namespace = load(PHASES_02)
    decision = strip_build_credentials(pod, namespace, policy_for("elsewhere"))
    assert decision.allowed
    assert decision.patched is None


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_create_is_mutated(operation: Operation) -> None:
    pod, namespace = load(PHASES_02)
    decision = judged((BUILD_POD_CREDENTIALS,), rule_review(pod, namespace=namespace,
                                                            operation=operation),
                      policy_for(namespace))
    assert decision.allowed
    assert decision.patched is None


def test_a_request_without_an_object_is_allowed() -> None:
    decision = strip_build_credentials(None, "image-build", policy_for("image-build"))
    assert decision.allowed
    assert decision.patched is None


# --- refusals ----------------------------------------------------------------------------------


def creator_pod() -> tuple[dict[str, Any], str]:
    """The captured 0.2 pod hand-tweaked into the `buildpacks` task's single creator step."""
    pod, namespace = load(PHASES_02)
    build = copy.deepcopy(by_name(pod)["step-build"])
    build["name"] = "step-create"
    at = build["args"].index("-entrypoint")
    build["args"][at + 1] = "/cnb/lifecycle/creator"
    pod["spec"]["containers"] = [build]
    return pod, namespace


def test_the_single_step_creator_task_is_refused_with_the_task_to_use() -> None:
    pod, namespace = creator_pod()
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == SINGLE_PROCESS_BUILD
    assert "buildpacks-phases" in decision.message
    assert "step-create" in decision.message


def test_an_untrusted_step_mounting_the_trusted_home_elsewhere_is_refused() -> None:
    pod, namespace = load(PHASES_02)
    by_name(pod)["step-detect"]["volumeMounts"].append(
        {"name": "tekton-internal-home", "mountPath": "/workspace/peek"})
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == SHARED_CREDENTIAL_HOME
    assert "step-detect" in decision.message


def test_a_trusted_home_on_a_volume_that_is_not_an_emptydir_is_refused() -> None:
    pod, namespace = load(PHASES_02)
    for volume in pod["spec"]["volumes"]:
        if volume["name"] == "tekton-internal-home":
            volume.pop("emptyDir")
            volume["persistentVolumeClaim"] = {"claimName": "shared"}
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == SHARED_CREDENTIAL_HOME


def test_a_docker_config_of_trusted_steps_counts_as_their_home() -> None:
    pod, namespace = load(PHASES_02)
    pod["spec"]["volumes"].append({"name": "dockercfg", "emptyDir": {}})
    for name in ("step-export", "step-build"):
        container = by_name(pod)[name]
        container["env"].append({"name": "DOCKER_CONFIG", "value": "/docker"})
        container["volumeMounts"].append({"name": "dockercfg", "mountPath": "/docker"})
    patched = by_name(mutate(pod, namespace))
    mount = next(m for m in patched["step-build"]["volumeMounts"] if m["mountPath"] == "/docker")
    assert mount["name"] == "toolforge-untrusted-home-5"


def test_a_preexisting_volume_with_the_private_home_name_is_not_reused() -> None:
    pod, namespace = load(PHASES_02)
    pod["spec"]["volumes"].append({"name": "toolforge-untrusted-home-0",
                                   "secret": {"secretName": "other"}})
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == SHARED_CREDENTIAL_HOME


# --- warn mode ---------------------------------------------------------------------------------


def test_warn_mode_admits_unchanged_and_lists_what_would_be_stripped() -> None:
    pod, namespace = load(PHASES_02)
    decision = strip_build_credentials(pod, namespace, policy_for(namespace, "warn"))
    assert decision.allowed
    assert decision.patched is None
    assert decision.reason == CREDENTIALS_STRIPPED
    assert any(w.startswith("registry credentials would be removed from step-detect")
               for w in decision.warnings)
    assert not any("step-export" in w for w in decision.warnings)


def test_warn_mode_admits_the_creator_task_with_a_warning() -> None:
    pod, namespace = creator_pod()
    decision = strip_build_credentials(pod, namespace, policy_for(namespace, "warn"))
    assert decision.allowed
    assert decision.patched is None
    assert any("buildpacks-phases" in w for w in decision.warnings)


# --- the validator's view ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_validator_refuses_an_unpatched_pod_and_admits_the_patched_one(scenario: str) -> None:
    pod, namespace = load(scenario)
    policy = policy_for(namespace)
    refused = find_credential_leaks(pod, namespace, policy)
    assert not refused.allowed
    assert refused.reason == CREDENTIAL_LEAK
    assert "step-detect" in refused.message
    assert find_credential_leaks(mutate(pod, namespace), namespace, policy).allowed


def test_the_validator_only_warns_in_warn_mode() -> None:
    pod, namespace = load(PHASES_02)
    decision = find_credential_leaks(pod, namespace, policy_for(namespace, "warn"))
    assert decision.allowed
    assert decision.warnings


def test_the_validator_also_refuses_credentials_in_pods_that_escape_the_mutations_scope() -> None:
    pod, namespace = load(PHASES_02)
    _no_owner(pod)
    pod["metadata"]["labels"].pop("app.kubernetes.io/managed-by")
    assert not strip_build_credentials(pod, namespace, policy_for(namespace)).patched
    assert not find_credential_leaks(pod, namespace, policy_for(namespace)).allowed


def test_the_validator_ignores_pods_outside_the_build_namespace() -> None:
    pod, namespace = load(PHASES_02)
    assert find_credential_leaks(pod, "tool-mytool", policy_for(namespace)).allowed


# --- the pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "kept", "removed"), [
    (["-a", "x", "-basic-docker=s=https://h", "--", "y"], ["-a", "x", "--", "y"],
     ["-basic-docker=s=https://h"]),
    (["--docker-config=s", "--"], ["--"], ["--docker-config=s"]),
    (["-docker-cfg", "s", "-entrypoint", "/x", "--"], ["-entrypoint", "/x", "--"],
     ["-docker-cfg s"]),
    (["-basic-git=g=https://git", "-ssh-git=k=git.example", "--"], ["--"],
     ["-basic-git=g=https://git", "-ssh-git=k=git.example"]),
    (["-entrypoint", "/x", "--", "-basic-docker=s=h"], ["-entrypoint", "/x", "--",
                                                       "-basic-docker=s=h"], []),
    (["-basic-dockerx=s", "--"], ["-basic-dockerx=s", "--"], []),
    (["-basic-docker"], [], ["-basic-docker"]),
], ids=["single-token", "double-dash", "two-token", "git-flags", "after-separator-untouched",
        "longer-name-is-not-a-credential-flag", "dangling-flag"])
def test_credential_flags_are_removed_only_before_the_separator(
        args: list[str], kept: list[str], removed: list[str]) -> None:
    assert strip_credential_flags(args) == (kept, removed)


@pytest.mark.parametrize(("allowed", "image", "matches"), [
    ("lifecycle:0.10.2", "buildpacksio/lifecycle:0.10.2", False),
    ("buildpacksio/lifecycle:0.10.2", "docker.io/buildpacksio/lifecycle:0.10.2@sha256:" + "a" * 64,
     True),
    ("buildpacksio/lifecycle:0.10.2", "index.docker.io/buildpacksio/lifecycle:0.10.2", True),
    ("buildpacksio/lifecycle:0.10.2", "buildpacksio/lifecycle:0.10.3", False),
    ("buildpacksio/lifecycle:0.10.2", "buildpacksio/lifecycle@sha256:" + "a" * 64, False),
    ("buildpacksio/lifecycle@sha256:" + "a" * 64, "buildpacksio/lifecycle:0.10.2@sha256:" + "a" * 64,
     True),
    ("buildpacksio/lifecycle@sha256:" + "a" * 64, "buildpacksio/lifecycle:0.10.2@sha256:" + "b" * 64,
     False),
    ("buildpacksio/lifecycle@sha256:" + "a" * 64, "buildpacksio/lifecycle:0.10.2", False),
    ("buildpacksio/lifecycle:0.10.2@sha256:" + "a" * 64,
     "buildpacksio/lifecycle:0.10.1@sha256:" + "a" * 64, False),
    ("buildpacksio/lifecycle", "buildpacksio/lifecycle", True),
], ids=["other-repository", "tag-matches-tag-and-digest", "hub-alias", "other-tag",
        "digest-without-tag-does-not-match-a-tag", "digest-matches", "other-digest",
        "policy-digest-needs-pod-digest", "tag-and-digest-must-both-agree", "implicit-latest"])
def test_images_of_trusted_steps_compare_after_normalisation(
        allowed: str, image: str, matches: bool) -> None:
    assert image_matches(parse_image(allowed), parse_image(image)) is matches


@pytest.mark.parametrize(("args", "entrypoint"), [
    (["-entrypoint", "/cnb/lifecycle/analyzer", "--", "-entrypoint", "/x"],
     "/cnb/lifecycle/analyzer"),
    (["-entrypoint=/a", "--entrypoint", "/b", "--"], "/b"),
    (["--", "-entrypoint", "/x"], None),
], ids=["two-token", "last-wins", "after-separator-ignored"])
def test_the_recorded_entrypoint_is_read_before_the_separator(
        args: list[str], entrypoint: str | None) -> None:
    assert entrypoint_of(args) == entrypoint


def test_init_containers_and_sidecars_lose_credential_mounts_too() -> None:
    pod, namespace = load(PHASES_02)
    mount = {"name": "tekton-creds-57c13d6b", "mountPath": "/tekton/creds-secrets/basic-user-pass"}
    pod["spec"]["initContainers"][0]["volumeMounts"].append(dict(mount))
    pod["spec"]["containers"].append({"name": "sidecar-proxy", "image": "example/proxy:1",
                                      "volumeMounts": [dict(mount)]})
    patched = mutate(pod, namespace)
    assert mount not in patched["spec"]["initContainers"][0]["volumeMounts"]
    assert by_name(patched)["sidecar-proxy"]["volumeMounts"] == []


# --- what a trusted step is --------------------------------------------------------------------


def _swap_entrypoint_args(container: dict[str, Any], flags: list[str]) -> None:
    """Replace the entrypoint's `-entrypoint <x>` with `flags`, keeping everything else."""
    args = container["args"]
    at = args.index("-entrypoint")
    container["args"] = [*args[:at], *flags, *args[at + 2:]]


@pytest.mark.parametrize("flags", [
    ["-entrypoint", "/bin/sh", "x", "-entrypoint", "/cnb/lifecycle/exporter"],
    ["-entrypoint", "/cnb/lifecycle/exporter", "x", "-entrypoint", "/bin/sh"],
    ["-entrypoint", "/bin/sh", "-results", "-entrypoint", "/cnb/lifecycle/exporter"],
    ["-entrypoint", "/cnb/lifecycle/exporter", "cp", "/tekton/creds-secrets/basic-user-pass/"
     "password", "/workspace/source/leak"],
], ids=["twice-around-a-non-flag", "twice-around-a-non-flag-reversed",
        "second-swallowed-as-a-value", "leftover-subcommand"])
def test_a_step_is_judged_by_what_go_makes_of_its_entrypoint_flags(flags: list[str]) -> None:
    pod, namespace = load(PHASES_02)
    _swap_entrypoint_args(by_name(pod)["step-export"], flags)
    patched = mutate(pod, namespace)
    assert credential_channels(patched, by_name(patched)["step-export"], set()) == []


def _with_command(container: dict[str, Any]) -> None:
    container["command"] = ["/bin/bash", "-c", "cat $HOME/.docker/config.json"]


def _with_hook(container: dict[str, Any]) -> None:
    container["lifecycle"] = {"postStart": {"exec": {"command": ["cat", "/tekton/creds"]}}}


def _with_probe(container: dict[str, Any]) -> None:
    container["readinessProbe"] = {"exec": {"command": ["cat", "/tekton/home/.docker"]}}


def _home_from_env_from(container: dict[str, Any]) -> None:
    container["env"] = [e for e in container["env"] if e["name"] != "HOME"]
    container["envFrom"] = [{"configMapRef": {"name": "homes"}}]


def _env_from_beside_home(container: dict[str, Any]) -> None:
    container["envFrom"] = [{"configMapRef": {"name": "homes"}}]


def _home_from_value_from(container: dict[str, Any]) -> None:
    for env in container["env"]:
        if env["name"] == "HOME":
            env.pop("value")
            env["valueFrom"] = {"configMapKeyRef": {"name": "homes", "key": "home"}}


def _home_expanded(container: dict[str, Any]) -> None:
    container["env"].insert(0, {"name": "SHARED", "value": "/workspace/source"})
    for env in container["env"]:
        if env["name"] == "HOME":
            env["value"] = "$(SHARED)"


def _no_home(container: dict[str, Any]) -> None:
    container["env"] = [e for e in container["env"] if e["name"] != "HOME"]


@pytest.mark.parametrize("tweak", [_with_command, _with_hook, _with_probe, _home_from_env_from,
                                   _env_from_beside_home, _home_from_value_from, _no_home],
                         ids=["own-command", "lifecycle-hook", "exec-probe",
                              "home-from-envfrom", "envfrom-beside-home", "home-from-valuefrom",
                              "no-home"])
def test_a_step_that_could_run_other_code_or_move_the_credentials_is_not_trusted(
        tweak: Any) -> None:
    pod, namespace = load(PHASES_02)
    tweak(by_name(pod)["step-export"])
    patched = mutate(pod, namespace)
    assert credential_channels(patched, by_name(patched)["step-export"], set()) == []
    assert credential_channels(patched, by_name(patched)["step-analyze"], {"step-analyze"})


def test_a_step_whose_home_is_expanded_from_another_variable_is_not_trusted() -> None:
    """The kubelet expands `$(SHARED)`: the entrypoint would copy the credentials there. Not
    trusted, the step keeps the trusted steps' home volume mounted beside its own HOME, which
    no private mount can fix: refused."""
    pod, namespace = load(PHASES_02)
    _home_expanded(by_name(pod)["step-export"])
    decision = strip_build_credentials(pod, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == SHARED_CREDENTIAL_HOME
    assert decision.message.startswith("container step-export mounts volume tekton-internal-home")


# --- the backstop's channels -------------------------------------------------------------------


def test_another_steps_creds_volume_mounted_at_another_path_is_stripped() -> None:
    pod, namespace = load(PHASES_02)
    export = by_name(pod)["step-export"]
    creds = next(m["name"] for m in export["volumeMounts"] if m["mountPath"] == "/tekton/creds")
    by_name(pod)["step-build"]["volumeMounts"].append({"name": creds, "mountPath": "/peek"})
    patched = by_name(mutate(pod, namespace))
    assert "/peek" not in [m["mountPath"] for m in patched["step-build"]["volumeMounts"]]
    assert by_name(pod)["step-export"] == patched["step-export"]
    # The validator's view of a pod the mutation did not reach:
    stored = mutate(load(PHASES_02)[0], namespace)
    by_name(stored)["step-build"]["volumeMounts"].append({"name": creds, "mountPath": "/peek"})
    refused = find_credential_leaks(stored, namespace, policy_for(namespace))
    assert refused.message.startswith("untrusted container step-build: mount /peek can read")


@pytest.mark.parametrize("volume", [
    {"secret": {"secretName": "unrelated"}},
    {"projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "unrelated"}}]}},
], ids=["secret", "projected-secret"])
def test_any_secret_volume_in_an_untrusted_container_is_a_credential(
        volume: dict[str, Any]) -> None:
    pod, namespace = load(PHASES_02)
    pod["spec"]["volumes"].append({"name": "extra", **volume})
    patched = mutate(pod, namespace)
    by_name(patched)["step-detect"]["volumeMounts"].append({"name": "extra", "mountPath": "/opt/x"})
    refused = find_credential_leaks(patched, namespace, policy_for(namespace))
    assert not refused.allowed
    assert refused.message.startswith("untrusted container step-detect: mount /opt/x can read")
    again = by_name(mutate(patched, namespace))
    assert "/opt/x" not in [m["mountPath"] for m in again["step-detect"]["volumeMounts"]]


API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_api_token_kubernetes_mounts_stays_only_in_trusted_steps(scenario: str) -> None:
    # Tekton's pods as captured, from a ServiceAccount that automounts its token: Kubernetes
    # mounted kube-api-access-* into every container, init containers included.
    pod, namespace = load(scenario)
    (token,) = token_volumes(pod)
    assert token.startswith("kube-api-access-")
    assert all(mounts_of(c).get(API_TOKEN_PATH) == token for c in containers(pod))
    patched = mutate(pod, namespace)
    kept = {c["name"] for c in containers(patched) if API_TOKEN_PATH in mounts_of(c)}
    assert kept == TRUSTED[scenario]
    assert token in {v["name"] for v in patched["spec"]["volumes"]}  # trusted steps still use it


def mounts_of(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def test_the_mutation_names_the_api_token_it_removes() -> None:
    pod, namespace = load(PIPELINERUN_02)
    policy = policy_for(namespace, mode="warn")
    decision = strip_build_credentials(pod, namespace, policy)
    build = next(w for w in decision.warnings if "from step-build: " in w)
    assert f"mount {API_TOKEN_PATH} (Kubernetes API token)" in build
    assert "mount /tekton/creds-secrets/basic-user-pass," in build  # not called a token


def test_a_pod_without_the_api_token_is_stripped_as_before() -> None:
    """A build ServiceAccount with `automountServiceAccountToken: false` (the recommended
    setup): no token volume, and the rest of the patch is the same."""
    pod, namespace = load(PIPELINERUN_02)
    (token,) = token_volumes(pod)
    without = copy.deepcopy(pod)
    without["spec"]["volumes"] = [v for v in without["spec"]["volumes"] if v["name"] != token]
    for container in containers(without):
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != token]
    patched, patched_without = mutate(pod, namespace), mutate(without, namespace)
    for container in containers(patched):
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != token]
    patched["spec"]["volumes"] = [v for v in patched["spec"]["volumes"] if v["name"] != token]
    assert patched_without == patched
    assert find_credential_leaks(patched_without, namespace, policy_for(namespace)).allowed


@pytest.mark.parametrize("sources", [
    [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}],
    [{"serviceAccountToken": {"path": "t", "audience": "vault"}},
     {"configMap": {"name": "kube-root-ca.crt"}}],
], ids=["token-only", "token-for-another-audience"])
def test_a_service_account_token_volume_is_a_credential_of_untrusted_containers(
        sources: list[dict[str, Any]]) -> None:
    pod, namespace = load(PHASES_02)
    patched = mutate(pod, namespace)
    patched["spec"]["volumes"].append({"name": "my-token", "projected": {"sources": sources}})
    by_name(patched)["step-build"]["volumeMounts"].append(
        {"name": "my-token", "mountPath": "/opt/token", "readOnly": True})
    refused = find_credential_leaks(patched, namespace, policy_for(namespace))
    assert not refused.allowed
    assert refused.reason == CREDENTIAL_LEAK
    assert refused.message.startswith("untrusted container step-build: mount /opt/token "
                                      "(Kubernetes API token) can read registry credentials")
    again = by_name(mutate(patched, namespace))
    assert "/opt/token" not in mounts_of(again["step-build"])
    # A projected volume without a token source is no credential.
    harmless = copy.deepcopy(pod)
    harmless["spec"]["volumes"].append({"name": "ca", "projected": {"sources": [
        {"configMap": {"name": "kube-root-ca.crt"}}, {"downwardAPI": {"items": []}}]}})
    by_name(harmless)["step-build"]["volumeMounts"].append({"name": "ca", "mountPath": "/ca"})
    assert "/ca" in mounts_of(by_name(mutate(harmless, namespace))["step-build"])


def test_a_pod_tekton_did_not_make_trusts_no_step() -> None:
    """A plain pod shaped like a build pod, whose export step would be trusted in Tekton's."""
    pod, namespace = load(PHASES_02)
    patched = mutate(pod, namespace)
    _no_owner(patched)
    decision = find_credential_leaks(patched, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == CREDENTIAL_LEAK
    for name in TRUSTED[PHASES_02]:
        assert f"untrusted container {name}:" in decision.message
    assert "only Tekton's build pods may carry Secrets" in decision.message


# --- UPDATE: the validator judges the pod as it would be stored -------------------------------


@pytest.mark.parametrize("mount", [
    {"name": "tekton-creds-57c13d6b", "mountPath": "/s"},
    {"name": "tekton-creds-init-home-6", "mountPath": "/c"},
], ids=["registry-secret", "export-creds-volume"])
def test_an_ephemeral_container_mounting_a_secret_or_a_creds_volume_is_refused(
        mount: dict[str, str]) -> None:
    pod, namespace = load(PHASES_02)
    updated = mutate(pod, namespace)
    updated["spec"]["ephemeralContainers"] = [{
        "name": "debugger", "image": "docker.io/library/busybox:1",
        "targetContainerName": "step-export", "volumeMounts": [mount]}]
    decision = find_credential_leaks(updated, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.reason == CREDENTIAL_LEAK
    assert decision.message.startswith(
        f"untrusted container debugger: mount {mount['mountPath']} can read")


def test_a_trusted_steps_image_changed_afterwards_leaves_it_untrusted_and_refused() -> None:
    pod, namespace = load(PHASES_02)
    updated = mutate(pod, namespace)
    by_name(updated)["step-export"]["image"] = "docker.io/attacker/lifecycle:0.10.2"
    decision = find_credential_leaks(updated, namespace, policy_for(namespace))
    assert not decision.allowed
    assert decision.message.startswith("untrusted container step-export: mount /tekton/creds")
