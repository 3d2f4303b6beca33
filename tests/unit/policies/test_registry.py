"""Every new or changed image of a pod or workload template comes from an allowed prefix."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from policies.decision import MAX_MESSAGE_CHARS, Decision
from policies.model import Policy, parse_policy
from policies.registry import (
    IMAGE_INVALID,
    IMAGE_NOT_ALLOWED,
    IMAGES,
    allow_list,
    images_to_judge,
)
from policies.rule import Operation
from tests.builders import judged, rule_review

NOW = datetime.datetime(2027, 6, 29, 12, 0, tzinfo=datetime.UTC)
HARBOR = "tools-harbor.wmcloud.org"
OWN = f"{HARBOR}/tool-mytool/app:1"

POLICY = f"""
tools:
  namespacePattern: "tool-{{tool}}"
exemptNamespaces: [kube-system]
registries:
  allowed:
    - {HARBOR}/tool-{{tool}}
    - {HARBOR}/toolforge
    - docker-registry.svc.toolforge.org
  exceptions:
    tool-byoc:
      - prefix: quay.io/example-org
        expires: 2027-06-30
      - prefix: ghcr.io/forever
    tool-mytool:
      - prefix: "{{tool}}.registry.example"
"""


def make_policy(text: str = POLICY, **registries: object) -> Policy:
    policy = parse_policy(text)
    if registries:
        section = policy.registries.model_copy(update=registries)
        policy = policy.model_copy(update={"registries": section})
    return policy


def make_pod(*images: str, init: tuple[str, ...] = (), ephemeral: tuple[str, ...] = (),
             ) -> dict[str, Any]:
    """A Pod whose containers are named c0, c1, …, i0, …, e0, …."""
    spec: dict[str, Any] = {"containers": [{"name": f"c{n}", "image": image}
                                           for n, image in enumerate(images)]}
    if init:
        spec["initContainers"] = [{"name": f"i{n}", "image": i} for n, i in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [{"name": f"e{n}", "image": i}
                                       for n, i in enumerate(ephemeral)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def check(obj: dict[str, Any] | None, *, kind: str = "Pod", operation: Operation = "CREATE",
          namespace: str = "tool-mytool", old: dict[str, Any] | None = None,
          policy: Policy | None = None, now: datetime.datetime = NOW) -> Decision:
    review = rule_review(obj, kind=kind, operation=operation, namespace=namespace, old=old)
    return judged((IMAGES,), review, policy or make_policy(), now)


@pytest.mark.parametrize(("namespace", "image", "allowed"), [
    pytest.param("tool-mytool", OWN, True, id="own-harbor-project"),
    pytest.param("tool-mytool", f"{HARBOR}/toolforge/base:1", True, id="shared-project"),
    pytest.param("tool-mytool", "docker-registry.svc.toolforge.org/python:3.11", True,
                 id="whole-registry-host"),
    pytest.param("tool-mytool", f"{HARBOR.upper()}/tool-mytool/app", True, id="host-case-folds"),
    pytest.param("tool-mytool", f"{HARBOR}/tool-other/app:1", False, id="other-tools-project"),
    pytest.param("tool-mytool", f"{HARBOR}/tool-mytoolx/app:1", False, id="project-lookalike"),
    pytest.param("tool-mytool", f"{HARBOR}.evil.com/tool-mytool/app", False,
                 id="lookalike-host-longer"),
    pytest.param("tool-mytool", f"{HARBOR}x/tool-mytool/app", False, id="lookalike-host-suffix"),
    pytest.param("tool-mytool", f"{HARBOR}:5000/tool-mytool/app", False, id="other-port"),
    pytest.param("tool-mytool", "nginx", False, id="docker-hub-library"),
    pytest.param("tool-mytool", "docker-registry.svc.toolforge.org.evil/x", False,
                 id="host-entry-lookalike"),
    pytest.param("tool-mytool", "mytool.registry.example/app", True,
                 id="tool-placeholder-in-host-of-an-exception"),
    pytest.param("tool-other", "mytool.registry.example/app", False,
                 id="exceptions-are-per-namespace"),
    pytest.param("tool-byoc", "quay.io/example-org/app:2", True, id="exception-before-expiry"),
    pytest.param("tool-byoc", "quay.io/example-orgx/app:2", False, id="exception-lookalike"),
    pytest.param("tool-byoc", "ghcr.io/forever/app", True, id="exception-without-expiry"),
    pytest.param("tool-byoc", f"{HARBOR}/tool-byoc/app", True, id="exception-adds-to-allowed"),
    pytest.param("kube-system", "nginx", True, id="exempt-namespace-is-never-checked"),
    pytest.param("webapps", f"{HARBOR}/toolforge/base:1", True,
                 id="non-tool-namespace-gets-fixed-entries"),
    pytest.param("webapps", f"{HARBOR}/tool-webapps/app", False,
                 id="non-tool-namespace-gets-no-tool-entries"),
    pytest.param("webapps", f"{HARBOR}/tool-/app", False,
                 id="non-tool-namespace-has-no-empty-tool"),
])
def test_images_are_judged_by_the_namespaces_allow_list(namespace: str, image: str,
                                                        allowed: bool) -> None:
    assert check(make_pod(image), namespace=namespace).allowed is allowed


@pytest.mark.parametrize(("now", "allowed"), [
    pytest.param(datetime.datetime(2027, 6, 29, 23, 59, 59, tzinfo=datetime.UTC), True,
                 id="last-second-before-expiry"),
    pytest.param(datetime.datetime(2027, 6, 30, 0, 0, tzinfo=datetime.UTC), False,
                 id="expiry-day-itself"),
    pytest.param(datetime.datetime(2028, 1, 1, tzinfo=datetime.UTC), False, id="after-expiry"),
    pytest.param(datetime.datetime(2027, 6, 30, 1, 0,
                                   tzinfo=datetime.timezone(datetime.timedelta(hours=2))), True,
                 id="expiry-is-judged-in-utc"),
    pytest.param(datetime.datetime(2027, 6, 30, 0, 0), False, id="naive-now-is-utc"),
])
def test_an_exception_applies_until_its_expiry_date_in_utc(now: datetime.datetime,
                                                           allowed: bool) -> None:
    pod = make_pod("quay.io/example-org/app:2")
    assert check(pod, namespace="tool-byoc", now=now).allowed is allowed


def test_an_expired_exception_is_named_in_the_denial() -> None:
    decision = check(make_pod("quay.io/example-org/app:2"), namespace="tool-byoc",
                     now=datetime.datetime(2027, 7, 1, tzinfo=datetime.UTC))
    assert "the exception for quay.io/example-org ended on 2027-06-30" in decision.message


@pytest.mark.parametrize("pod", [
    pytest.param(make_pod(OWN, init=("nginx",)), id="init-container"),
    pytest.param(make_pod(OWN, ephemeral=("busybox:1.36",)), id="ephemeral-container"),
    pytest.param(make_pod(OWN, "nginx"), id="second-container"),
])
def test_every_container_list_is_checked(pod: dict[str, Any]) -> None:
    decision = check(pod)
    assert not decision.allowed
    assert decision.reason == IMAGE_NOT_ALLOWED


def test_the_denial_lists_every_offending_container_and_the_allowed_prefixes() -> None:
    pod = make_pod(OWN, "nginx:1.25", init=("quay.io/x/y",), ephemeral=("busybox",))
    decision = check(pod)
    assert not decision.allowed
    assert decision.message.startswith('3 images are not allowed in namespace '
                                       '"tool-mytool": ')
    assert ('container "c1" image "nginx:1.25" (docker.io/library/nginx) is not under an allowed '
            'prefix') in decision.message
    assert 'initContainer "i0" image "quay.io/x/y" (quay.io/x/y)' in decision.message
    assert 'ephemeralContainer "e0" image "busybox" (docker.io/library/busybox)' in \
        decision.message
    assert '"c0"' not in decision.message
    assert decision.message.endswith(
        f"Use images under one of: {HARBOR}/tool-mytool, {HARBOR}/toolforge, "
        "docker-registry.svc.toolforge.org, mytool.registry.example; or ask the platform admins "
        "for an exception.")
    assert ("findings", "3") in decision.audit


def test_an_unparsable_image_is_an_offending_container_with_the_reason() -> None:
    decision = check(make_pod(f"{HARBOR}/tool-mytool/App"))
    assert not decision.allowed
    assert decision.reason == IMAGE_INVALID
    assert (f'container "c0" image "{HARBOR}/tool-mytool/App" is not a valid image reference '
            "(repository names must be lower case)") in decision.message


@pytest.mark.parametrize("entry", [
    pytest.param({"name": "c0"}, id="missing-image"),
    pytest.param({"name": "c0", "image": 5}, id="image-not-a-string"),
    pytest.param({"name": "c0", "image": ""}, id="empty-image"),
    pytest.param("not-a-container", id="entry-not-a-mapping"),
])
def test_a_container_without_a_usable_image_is_refused(entry: object) -> None:
    pod = {"spec": {"containers": [entry]}}
    decision = check(pod)
    assert not decision.allowed
    assert decision.reason == IMAGE_INVALID


def test_tenant_text_is_quoted_and_escaped_in_the_message() -> None:
    pod = {"spec": {"containers": [{"name": 'a"\nb', "image": "x\ny"}]}}
    message = check(pod).message
    assert "\n" not in message
    assert 'container "a\\"\\nb" image "x\\ny"' in message


def test_a_huge_pod_gives_a_capped_message() -> None:
    decision = check(make_pod(*[f"quay.io/{'x' * 200}/{n}" for n in range(50)]))
    assert not decision.allowed
    assert len(decision.message) <= MAX_MESSAGE_CHARS


def test_a_namespace_with_no_allowed_prefix_says_to_ask_for_an_exception() -> None:
    policy = make_policy(allowed=(f"{HARBOR}/tool-{{tool}}",))
    decision = check(make_pod(OWN), namespace="webapps", policy=policy)
    assert "No registry is allowed in this namespace" in decision.message


def test_warn_mode_admits_with_one_warning_per_container_and_the_allowed_prefixes() -> None:
    policy = make_policy(mode="warn")
    decision = check(make_pod(OWN, "nginx", init=("Bad/Ref",)), policy=policy)
    assert decision.allowed
    assert decision.reason == IMAGE_NOT_ALLOWED
    assert len(decision.warnings) == 3
    assert decision.warnings[0].startswith('container "c1" image "nginx"')
    assert decision.warnings[1].startswith('initContainer "i0" image "Bad/Ref"')
    assert decision.warnings[2].startswith(f"Use images under one of: {HARBOR}/tool-mytool")
    assert ("mode", "warn") in decision.audit


def test_a_tool_name_that_makes_an_invalid_prefix_drops_that_entry() -> None:
    # `a-_b` is a valid tool name, but "-_" is not a separator in a repository path.
    prefixes = allow_list(make_policy(), "tool-a-_b", NOW.date()).prefixes
    assert [str(p) for p in prefixes] == [f"{HARBOR}/toolforge", "docker-registry.svc.toolforge.org"]


def test_a_new_policy_object_is_not_answered_from_the_old_ones_cache() -> None:
    first = make_policy()
    assert check(make_pod("quay.io/x/y"), policy=first).allowed is False
    second = make_policy(allowed=("quay.io/x",))
    assert check(make_pod("quay.io/x/y"), policy=second).allowed is True
    assert check(make_pod("quay.io/x/y"), policy=first).allowed is False


def test_a_copy_with_other_registries_does_not_keep_the_originals_allow_lists() -> None:
    first = make_policy()
    assert check(make_pod("quay.io/x/y"), policy=first).allowed is False
    section = first.registries.model_copy(update={"allowed": ("quay.io/x",)})
    second = first.model_copy(update={"registries": section})
    assert check(make_pod("quay.io/x/y"), policy=second).allowed is True
    assert check(make_pod("quay.io/x/y"), policy=first).allowed is False


# -- workloads ----------------------------------------------------------------------------------

def _template(image: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "app", "image": image}],
                     "initContainers": [{"name": "init", "image": OWN}]}}


def make_workload(kind: str, image: str) -> dict[str, Any]:
    if kind == "CronJob":
        spec: dict[str, Any] = {"schedule": "* * * * *",
                                "jobTemplate": {"spec": {"template": _template(image)}}}
        return {"kind": kind, "spec": spec}
    if kind == "PodTemplate":
        return {"kind": kind, "template": _template(image)}
    return {"kind": kind, "spec": {"replicas": 1, "template": _template(image)}}


WORKLOADS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob",
             "ReplicationController", "PodTemplate")


@pytest.mark.parametrize("kind", WORKLOADS)
def test_workload_templates_are_checked(kind: str) -> None:
    denied = check(make_workload(kind, "nginx"), kind=kind)
    assert not denied.allowed
    assert 'container "app" image "nginx"' in denied.message
    assert check(make_workload(kind, OWN), kind=kind).allowed


@pytest.mark.parametrize(("kind", "obj", "operation"), [
    pytest.param("Scale", {"spec": {"replicas": 3}}, "UPDATE", id="scale-subresource"),
    pytest.param("Eviction", {"metadata": {"name": "p"}}, "CREATE", id="eviction"),
    pytest.param("Pod", make_pod("nginx"), "DELETE", id="delete"),
    pytest.param("Pod", make_pod("nginx"), "CONNECT", id="connect"),
    pytest.param("Pod", None, "CREATE", id="no-object"),
    pytest.param("Deployment", {"spec": {"template": "broken"}}, "CREATE",
                 id="template-not-a-mapping"),
])
def test_requests_without_a_pod_spec_to_judge_are_admitted(kind: str, obj: dict[str, Any] | None,
                                                          operation: Operation) -> None:
    assert check(obj, kind=kind, operation=operation).allowed


# -- UPDATE: only new or changed images ----------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "allowed"), [
    pytest.param(make_pod("nginx"), make_pod("nginx"), True,
                 id="unchanged-disallowed-image-passes-after-policy-shrink"),
    pytest.param(make_pod("Bad/Ref"), make_pod("Bad/Ref"), True,
                 id="unchanged-unparsable-image-passes"),
    pytest.param(make_pod(OWN), make_pod("nginx"), False, id="set-image-to-disallowed"),
    pytest.param(make_pod("nginx"), make_pod(OWN), True, id="set-image-to-allowed"),
    pytest.param(make_pod("nginx"), make_pod("nginx", ephemeral=("busybox:1.36",)), False,
                 id="debug-adds-disallowed-ephemeral-container"),
    pytest.param(make_pod("nginx"), make_pod("nginx", ephemeral=(OWN,)), True,
                 id="debug-adds-allowed-ephemeral-container"),
    pytest.param(make_pod("nginx", init=(OWN,)), make_pod(OWN, init=("nginx",)), False,
                 id="image-moved-to-another-list-is-new-there"),
    pytest.param(None, make_pod("nginx"), False, id="update-without-old-object-judges-all"),
])
def test_an_update_judges_only_new_or_changed_images(old: dict[str, Any] | None,
                                                     new: dict[str, Any], allowed: bool) -> None:
    assert check(new, operation="UPDATE", old=old).allowed is allowed


def test_a_relabel_after_the_policy_shrank_passes() -> None:
    old = make_pod("docker-registry.svc.toolforge.org/python:3.11")
    new = {**old, "metadata": {"name": "p", "labels": {"team": "blue"}}}
    shrunk = make_policy(allowed=(f"{HARBOR}/tool-{{tool}}",))
    assert check(new, operation="UPDATE", old=old, policy=shrunk).allowed
    assert not check(new, operation="CREATE", policy=shrunk).allowed


def test_an_update_names_only_the_changed_container() -> None:
    old = make_pod("nginx", "redis")
    new = make_pod("nginx", "redis:7")
    decision = check(new, operation="UPDATE", old=old)
    assert 'container "c1" image "redis:7"' in decision.message
    assert '"c0"' not in decision.message
    assert decision.message.startswith("1 image is not allowed")


def test_on_create_the_old_object_is_ignored() -> None:
    assert not check(make_pod("nginx"), operation="CREATE", old=make_pod("nginx")).allowed


def test_images_to_judge_match_containers_by_list_and_name() -> None:
    old = make_pod("a.example/x", "a.example/y")
    new = make_pod("a.example/x", "a.example/z", init=("a.example/x",))
    judged = images_to_judge("Pod", new, old)
    assert [(c.list_kind, c.name, c.image) for c in judged] == [
        ("container", "c1", "a.example/z"), ("initContainer", "i0", "a.example/x")]


def with_image_volume(pod: dict[str, Any], reference: object, name: str = "data",
                      ) -> dict[str, Any]:
    spec = {**pod["spec"], "volumes": [{"name": "scratch", "emptyDir": {}},
                                       {"name": name, "image": {"reference": reference,
                                                                "pullPolicy": "IfNotPresent"}}]}
    return {**pod, "spec": spec}


@pytest.mark.parametrize(("reference", "allowed"), [
    pytest.param(f"{HARBOR}/tool-mytool/models:3", True, id="own-project"),
    pytest.param("quay.io/someone/models:3", False, id="other-registry"),
    pytest.param(None, False, id="missing-reference"),
])
def test_image_volumes_are_judged_like_containers(reference: object, allowed: bool) -> None:
    decision = check(with_image_volume(make_pod(OWN), reference))
    assert decision.allowed is allowed
    if not allowed:
        assert 'volume "data" image ' in decision.message


def test_the_denial_names_the_image_volume() -> None:
    decision = check(with_image_volume(make_pod(OWN), "quay.io/someone/models:3"))
    assert decision.reason == IMAGE_NOT_ALLOWED
    assert decision.message.startswith(
        '1 image is not allowed in namespace "tool-mytool": volume "data" image '
        '"quay.io/someone/models:3" (quay.io/someone/models) is not under an allowed prefix')


def test_an_update_judges_a_changed_image_volume() -> None:
    old = with_image_volume(make_pod(OWN), f"{HARBOR}/tool-mytool/models:3")
    assert check(with_image_volume(make_pod(OWN), f"{HARBOR}/tool-mytool/models:3"),
                 operation="UPDATE", old=old).allowed
    assert not check(with_image_volume(make_pod(OWN), "quay.io/someone/models:3"),
                     operation="UPDATE", old=old).allowed


def test_workload_templates_image_volumes_are_checked() -> None:
    pod = with_image_volume(make_pod(OWN), "quay.io/someone/models:3")
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": pod["spec"]}}}
    assert not check(deployment, kind="Deployment").allowed


@pytest.mark.parametrize(("tool", "project"), [
    pytest.param("mytool", "tool-mytool", id="plain"),
    pytest.param("a--b", "tool-a-char.sep-b", id="double-dash"),
    pytest.param("a-_b", "tool-a-char.sep_b", id="dash-underscore"),
])
def test_harbor_project_entries_expand_to_the_project_the_tool_pushes_to(tool: str,
                                                                          project: str) -> None:
    policy = make_policy(allowed=(f"{HARBOR}/{{harborProject}}",))
    namespace = f"tool-{tool}"
    built = f"{HARBOR}/{project}/app:latest"  # where the builds API pushes the tool's image
    assert check(make_pod(built), namespace=namespace, policy=policy).allowed
    prefixes = [str(p) for p in allow_list(policy, namespace, NOW.date()).prefixes]
    assert prefixes[0] == f"{HARBOR}/{project}"
    other = check(make_pod(f"{HARBOR}/tool-other/app:1"), namespace=namespace, policy=policy)
    assert not other.allowed


def test_the_raw_tool_name_entry_misses_the_project_a_double_dash_tool_pushes_to() -> None:
    # Why the example policy uses {harborProject}: `tool-{tool}` names a project Harbor never has.
    policy = make_policy(allowed=(f"{HARBOR}/tool-{{tool}}",))
    pushed = f"{HARBOR}/tool-a-char.sep-b/app:latest"
    assert not check(make_pod(pushed), namespace="tool-a--b", policy=policy).allowed


def test_harbor_project_entries_apply_only_in_tool_namespaces() -> None:
    policy = make_policy(allowed=(f"{HARBOR}/{{harborProject}}", f"{HARBOR}/toolforge"))
    assert [str(p) for p in allow_list(policy, "webapps", NOW.date()).prefixes] == [
        f"{HARBOR}/toolforge"]
