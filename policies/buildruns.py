"""TaskRuns, CustomRuns and pods in the build namespace come only from the Tekton controller.

A PipelineRun is where a tool's build is judged (`policies.pipelinerun`); the TaskRuns Tekton
makes for it, and the pods it makes for those, inherit that judgement only if nobody else can
make them. So in `builds.namespace`:

- a TaskRun or CustomRun may be created only by the Tekton controller (`builds.tektonController`)
  and only for a PipelineRun that exists: its controlling owner reference names that run, with
  its uid (the edge looks the run up in the cluster);
- tool accounts may not change or delete TaskRuns and CustomRuns: they follow their PipelineRun,
  which a tool cancels or deletes instead;
- pods may be created, and their spec changed, only by the Tekton controller, and nobody gets a
  shell or a port into them (`exec`, `attach`, `portforward`).

RBAC should already keep tools away from all of this (docs/security.md); these rules hold when
it does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.decision import Finding, escape, quote
from policies.identity import User
from policies.model import Policy

RUN_NOT_FROM_CONTROLLER = "RunNotFromTektonController"
RUN_WITHOUT_PIPELINERUN = "RunWithoutPipelineRun"
RUN_CHANGE_NOT_ALLOWED = "RunChangeNotAllowed"
POD_NOT_FROM_CONTROLLER = "PodNotFromTektonController"
POD_ACCESS_REFUSED = "BuildPodAccessRefused"
RUNS_UNAVAILABLE = "BuildRunsUnavailable"

TEKTON_GROUP = "tekton.dev"
PIPELINERUN = "PipelineRun"
TASKRUN = "TaskRun"
RUN_KINDS = frozenset({"TaskRun", "CustomRun"})
"""What the Tekton controller makes for a PipelineRun's tasks."""


@dataclass(frozen=True)
class OwnerRef:
    """A controlling owner reference to a Tekton object."""

    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class FoundRun:
    """What the cluster says about the PipelineRun an object belongs to."""

    run: Mapping[str, Any] | None
    problem: str = ""
    """Why there is none (no owner, not found, another uid), for the message."""


def controller_owner(obj: Mapping[str, Any] | None, kind: str) -> OwnerRef | None:
    """The object's controlling owner reference, if it is a tekton.dev object of `kind`."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    owners = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    for owner in owners if isinstance(owners, list) else ():
        if not isinstance(owner, Mapping) or owner.get("controller") is not True:
            continue
        group = str(owner.get("apiVersion", "")).partition("/")[0]
        name, uid = owner.get("name"), owner.get("uid")
        if (group == TEKTON_GROUP and owner.get("kind") == kind and isinstance(name, str)
                and name and isinstance(uid, str) and uid):
            return OwnerRef(kind=kind, name=name, uid=uid)
    return None


def matches(obj: Mapping[str, Any] | None, owner: OwnerRef) -> bool:
    """Whether a looked-up object is the one the reference names (same name, same uid)."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    return (isinstance(metadata, Mapping) and metadata.get("name") == owner.name
            and metadata.get("uid") == owner.uid)


def is_controller(user: User, policy: Policy) -> bool:
    return user.username == policy.builds.tekton_controller


def is_tool_account(user: User, policy: Policy) -> bool:
    tools = policy.tools
    return user.username not in tools.system_users and any(
        group in tools.groups for group in user.groups)


def check_new_taskrun(kind: str, user: User, run: Mapping[str, Any] | None,
                  policy: Policy) -> tuple[Finding, ...]:
    """A TaskRun or CustomRun CREATE, before its PipelineRun is looked up."""
    namespace = policy.builds.namespace
    if not is_controller(user, policy):
        return (Finding(RUN_NOT_FROM_CONTROLLER, (
            f"only the Tekton controller creates {kind}s in the build namespace {namespace}; "
            f"user {quote(user.username)} is not it ({policy.builds.tekton_controller}): create "
            "a PipelineRun and Tekton makes its TaskRuns")),)
    if controller_owner(run, PIPELINERUN) is None:
        return (Finding(RUN_WITHOUT_PIPELINERUN, (
            f"a {kind} in the build namespace {namespace} must belong to a PipelineRun (a "
            "controlling ownerReference to it); this one belongs to none")),)
    return ()


def run_not_found(kind: str, found: FoundRun) -> Finding:
    return Finding(RUN_WITHOUT_PIPELINERUN, f"a {kind} in the build namespace must belong to a "
                                            f"PipelineRun that exists: {found.problem}")


def check_run_change(kind: str, operation: str, user: User,
                     policy: Policy) -> tuple[Finding, ...]:
    """UPDATE and DELETE of TaskRuns and CustomRuns: never by a tool account."""
    if not is_tool_account(user, policy):
        return ()
    verb = "delete" if operation == "DELETE" else "change"
    return (Finding(RUN_CHANGE_NOT_ALLOWED, (
        f"tools may not {verb} {kind}s in the build namespace {policy.builds.namespace} (user "
        f"{quote(user.username)}); they follow their PipelineRun: cancel or delete that "
        "instead")),)


def check_pod_requester(operation: str, user: User, policy: Policy) -> tuple[Finding, ...]:
    """Pods of the build namespace: created, and their spec changed, by the controller only."""
    if is_controller(user, policy):
        return ()
    verb = "creates" if operation == "CREATE" else "changes"
    return (Finding(POD_NOT_FROM_CONTROLLER, (
        f"only the Tekton controller ({policy.builds.tekton_controller}) {verb} pods in the "
        f"build namespace {policy.builds.namespace}; user {quote(user.username)} may not: "
        "builds run through PipelineRuns")),)


def check_pod_access(sub_resource: str, user: User, policy: Policy) -> tuple[Finding, ...]:
    """`exec`, `attach` and `portforward` into a build pod: nobody's business but Tekton's.

    A running trusted step holds the robot account's credentials, and every step shares the
    build's workspace and layers: a shell in another tool's build pod could read the one or
    change what the other pushes.
    """
    if is_controller(user, policy):
        return ()
    return (Finding(POD_ACCESS_REFUSED, (
        f"pods in the build namespace {policy.builds.namespace} hold other tools' builds and the "
        f"registry credentials; {escape(sub_resource or 'connect', 40)} into them is refused for "
        f"user {quote(user.username)}: read a build's logs instead")),)


def param(run: Mapping[str, Any] | None, name: str) -> object:
    """A PipelineRun parameter's value (the first entry of that name), or None."""
    spec = run.get("spec") if isinstance(run, Mapping) else None
    params = spec.get("params") if isinstance(spec, Mapping) else None
    for entry in params if isinstance(params, list) else ():
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return entry.get("value")
    return None
