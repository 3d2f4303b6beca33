"""TaskRuns, CustomRuns and pods in the build namespace come only from the Tekton controller.

A PipelineRun is where a tool's build is judged (`policies.pipelinerun`); the TaskRuns Tekton
makes for it, and the pods it makes for those, inherit that judgement only if nobody else can
make them. So in `builds.namespace`:

- a TaskRun or CustomRun may be created only by the Tekton controller (`builds.tektonController`)
  and only for a PipelineRun that exists: its controlling owner reference names that run, with
  its uid (the edge looks the run up in the cluster);
- only the Tekton controller, `builds.runManagers` and `tools.systemUsers` may change or delete
  TaskRuns and CustomRuns, their status included: anyone else (a tool, a tool namespace's
  ServiceAccount, the build ServiceAccount whose token a build step may hold) follows the
  PipelineRun, which its tool cancels or deletes instead;
- pods may be created, and their spec changed, only by the Tekton controller, and nobody gets a
  shell, a port or a proxied connection into them (`exec`, `attach`, `portforward`, `proxy`);
- Tasks, Pipelines and StepActions (what every tool's build runs) are never created, changed or
  deleted by an identity a tenant can act as: a tool account, a ServiceAccount of a tool's
  namespace, a ServiceAccount of the build namespace (the build ServiceAccount's token may reach
  build steps). Anyone else is left to RBAC: the platform admins' tooling writes them.

`TASKRUNS`, `BUILD_DEFINITIONS` and `BUILD_POD_ACCESS` are the rules (`policies.rule`); the pod
rules are in `policies.credentials`, which also judges what a build pod may do with the
credentials.

RBAC should already keep tools away from all of this (docs/security.md); these rules hold when
it does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.decision import Decision, Finding, Mode, allow, decide, escape, quote
from policies.identity import User
from policies.model import Policy
from policies.owners import PIPELINERUN, controller_owner
from policies.questions import Answer, FoundRun, RunLookup, Unavailable
from policies.rule import Ask, Facts, Review, Rule, Verdict

RUN_NOT_FROM_CONTROLLER = "RunNotFromTektonController"
RUN_WITHOUT_PIPELINERUN = "RunWithoutPipelineRun"
RUN_CHANGE_NOT_ALLOWED = "RunChangeNotAllowed"
POD_NOT_FROM_CONTROLLER = "PodNotFromTektonController"
POD_ACCESS_REFUSED = "BuildPodAccessRefused"
DEFINITION_CHANGE_REFUSED = "BuildDefinitionChangeRefused"
RUNS_UNAVAILABLE = "BuildRunsUnavailable"

RUN_KINDS = frozenset({"TaskRun", "CustomRun"})
"""What the Tekton controller makes for a PipelineRun's tasks."""
DEFINITION_KINDS = frozenset({"Task", "Pipeline", "StepAction"})
"""What an approved pipeline (`builds.pipelines`) runs, by name, in the build namespace."""
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def is_controller(user: User, policy: Policy) -> bool:
    return user.username == policy.builds.tekton_controller


def may_change_runs(user: User, policy: Policy) -> bool:
    """The Tekton controller, the run managers and the system users: who may update or delete
    TaskRuns and CustomRuns (and write their status)."""
    username = user.username
    return (username == policy.builds.tekton_controller or username in policy.builds.run_managers
            or username in policy.tools.system_users)


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


def check_run_change(kind: str, operation: str, user: User, policy: Policy, *,
                     sub_resource: str = "") -> tuple[Finding, ...]:
    """UPDATE (status included) and DELETE of TaskRuns and CustomRuns: only by the Tekton
    controller, the run managers and the system users.

    An allow-list: a denial of tool accounts alone would let any other identity with RBAC for
    it (a tool namespace's ServiceAccount, the build ServiceAccount, whose token a build step
    may hold) cancel or delete another tool's build, or mark it finished.
    """
    if may_change_runs(user, policy):
        return ()
    if operation == "DELETE":
        what = f"delete {kind}s"
    elif sub_resource:
        what = f"write {kind.lower()}s/{escape(sub_resource, 40)}"
    else:
        what = f"change {kind}s"
    return (Finding(RUN_CHANGE_NOT_ALLOWED, (
        f"only the Tekton controller, the run managers and the system users may {what} in the "
        f"build namespace {policy.builds.namespace}; user {quote(user.username)} may not: a "
        f"{kind} follows its PipelineRun, so cancel or delete that instead")),)


def check_pod_requester(operation: str, user: User, policy: Policy) -> tuple[Finding, ...]:
    """Pods of the build namespace: created, and their spec changed, by the controller only."""
    if is_controller(user, policy):
        return ()
    verb = "creates" if operation == "CREATE" else "changes"
    return (Finding(POD_NOT_FROM_CONTROLLER, (
        f"only the Tekton controller ({policy.builds.tekton_controller}) {verb} pods in the "
        f"build namespace {policy.builds.namespace}; user {quote(user.username)} may not: "
        "builds run through PipelineRuns")),)


def check_taskrun(review: Review, facts: Facts) -> Verdict:
    """TaskRuns and CustomRuns in the build namespace: made by the Tekton controller for a
    PipelineRun that exists; changed or deleted only by it, the run managers and the system
    users."""
    policy = facts.policy
    kind = review.kind
    mode = policy.builds.mode
    if review.operation in ("UPDATE", "DELETE"):
        return decide(check_run_change(kind, review.operation, review.user, policy,
                                       sub_resource=review.sub_resource), mode)
    findings = check_new_taskrun(kind, review.user, review.object, policy)
    owner = controller_owner(review.object, PIPELINERUN)
    if findings or owner is None:
        return decide(findings, mode)

    def with_run(answer: Answer) -> Decision:
        if answer is None:
            return allow(warnings=(f"the PipelineRun {owner.name} of this {kind} was not looked "
                                   "up (no cluster connection)",))
        if isinstance(answer, Unavailable):
            return runs_unavailable(kind, answer.cause, mode)
        if not isinstance(answer, FoundRun):
            raise TypeError(f"RunLookup answered with a {type(answer).__name__}")
        return decide([] if answer.run is not None else [run_not_found(kind, answer)], mode)

    return Ask(RunLookup(namespace=review.namespace, owner=owner), with_run)


TASKRUNS = Rule(check_taskrun, operations=frozenset({"CREATE", "UPDATE", "DELETE"}),
                kinds=RUN_KINDS, build_namespace=True)


def tenant_identity(user: User, policy: Policy) -> str | None:
    """Why `user` is an identity a tenant can act as (None when it is not one we know of).

    A tool account; a ServiceAccount of a tool's namespace (any pod there runs with one); a
    ServiceAccount of the build namespace (the build ServiceAccount's token may reach the tool's
    build steps) other than a system user (the builds API may live there).
    """
    tools = policy.tools
    username = user.username
    if username in tools.system_users:
        return None
    if any(group in tools.groups for group in user.groups):
        return "a tool account"
    if username.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace = username[len(SERVICE_ACCOUNT_PREFIX):].partition(":")[0]
        if namespace == policy.builds.namespace:
            return "a ServiceAccount of the build namespace"
        if tools.namespace_pattern.tool_of(namespace) is not None:
            return "a ServiceAccount of a tool's namespace"
    return None


def check_definition_change(review: Review, facts: Facts) -> Decision:
    """Tasks, Pipelines and StepActions in the build namespace: not written by a tenant.

    No other rule sees them, yet the approved pipeline runs them by name: a tool that could edit
    the `buildpacks` pipeline or its task would change every tool's build (a step of its
    choosing, the export step's arguments, the image a trusted step runs).
    """
    policy = facts.policy
    why = tenant_identity(review.user, policy)
    if why is None:
        return allow()
    verb = {"CREATE": "create", "UPDATE": "change", "DELETE": "delete"}[review.operation]
    return decide([Finding(DEFINITION_CHANGE_REFUSED, (
        f"{review.kind}s in the build namespace {policy.builds.namespace} define what every "
        f"tool's build runs; user {quote(review.user.username)} ({why}) may not {verb} them: "
        "the platform admins manage them"))], policy.builds.mode)


BUILD_DEFINITIONS = Rule(check_definition_change,
                         operations=frozenset({"CREATE", "UPDATE", "DELETE"}),
                         kinds=DEFINITION_KINDS, build_namespace=True)


def runs_unavailable(what: str, cause: str, mode: Mode) -> Decision:
    """The decision on a TaskRun, CustomRun or pod whose PipelineRun the cluster could not
    look up in time."""
    # Tekton retries a TaskRun it could not create; a refused pod fails its TaskRun for good.
    again = "Tekton tries again" if what in RUN_KINDS else "start the build again"
    return decide([Finding(RUNS_UNAVAILABLE, (
        f"could not look up the PipelineRun this {what} belongs to, so it was not created: "
        f"{again}; tell the platform admins if it keeps failing (cause: {cause})"))], mode)


def check_pod_access(sub_resource: str, user: User, policy: Policy) -> tuple[Finding, ...]:
    """`exec`, `attach`, `portforward` and `proxy` into a build pod: nobody's business but
    Tekton's.

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


def check_build_pod_access(review: Review, facts: Facts) -> Decision:
    """`exec`, `attach`, `portforward` and `proxy` into pods of the build namespace: refused."""
    policy = facts.policy
    return decide(check_pod_access(review.sub_resource, review.user, policy),
                  policy.credentials.mode)


BUILD_POD_ACCESS = Rule(check_build_pod_access, operations=frozenset({"CONNECT"}),
                        build_namespace=True)


def param(run: Mapping[str, Any] | None, name: str) -> object:
    """A PipelineRun parameter's value (the first entry of that name), or None."""
    spec = run.get("spec") if isinstance(run, dict) else None
    params = spec.get("params") if isinstance(spec, dict) else None
    for entry in params if isinstance(params, list) else ():
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get("value")
    return None
