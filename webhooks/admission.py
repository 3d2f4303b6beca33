"""The endpoints: for each, gather what its rule needs and call the rule in `policies`.

Both the HTTP service and the offline `review` command go through `ENDPOINTS`, so an admin who
evaluates a manifest offline gets exactly the verdict the API server would.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from policies.buildruns import (
    PIPELINERUN,
    RUN_KINDS,
    RUNS_UNAVAILABLE,
    FoundRun,
    OwnerRef,
    check_new_taskrun,
    check_pod_access,
    check_run_change,
    controller_owner,
    run_not_found,
)
from policies.credentials import check_build_pod, needs_build_run, strip_build_credentials
from policies.decision import (
    MAX_MESSAGE_CHARS,
    Decision,
    Finding,
    Mode,
    allow,
    cap,
    combine,
    decide,
    deny,
    escape,
)
from policies.model import Policy, PolicyError, parse_policy
from policies.pipelinerun import (
    SLOTS_UNAVAILABLE,
    check_changed_run,
    check_new_run,
    merge_warnings,
    not_checked_warning,
    run_access_refused,
    too_many_runs,
    tool_of_requester,
)
from policies.registry import check_pod_images
from policies.slots import Claim, Reservation
from webhooks.patches import make_patch
from webhooks.review import AdmissionRequest, ReviewPayload, build_response
from webhooks.runs import RunsUnavailableError
from webhooks.slots import SlotsUnavailableError

logger = logging.getLogger(__name__)
RULE_FAILED = "RuleFailed"
UNSUPPORTED_KIND = "UnsupportedKind"

POLICY_CONFIGMAP = "toolforge-admission-policy"
POLICY_KEY = "policy.yaml"


class ActiveRuns(Protocol):
    """Holds the per-tool active-run slots in the cluster (`webhooks.slots.LeaseSlots`)."""

    def claim(self, tool: str, candidate: Reservation, *, limit: int, label: str,
              reserve: bool) -> Claim:
        """Whether `candidate` fits the tool's limit; with `reserve`, take its slot if it does.

        Raises `webhooks.slots.SlotsUnavailableError` when the cluster cannot answer in time.
        """
        ...


class BuildRunReader(Protocol):
    """Finds the PipelineRun an object belongs to in the cluster (`webhooks.runs.BuildRuns`).

    Both raise `webhooks.runs.RunsUnavailableError` when the cluster cannot answer in time.
    """

    def pipelinerun(self, namespace: str, owner: OwnerRef) -> FoundRun: ...

    def pipelinerun_of_pod(self, namespace: str, pod: dict[str, Any]) -> FoundRun: ...


@dataclass(frozen=True)
class Context:
    """What a rule may use besides the request: the policy, the time, and the cluster."""

    policy: Policy
    now: datetime.datetime
    active_runs: ActiveRuns | None = None
    """None when there is no cluster (offline `review`): the active-run check is skipped."""
    build_runs: BuildRunReader | None = None
    """None when there is no cluster: the PipelineRun a TaskRun or pod belongs to is not
    looked up, and the review says so."""


Rule = Callable[[AdmissionRequest, Context], Decision]


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    mutating: bool
    rule: Rule
    kinds: tuple[tuple[str, str], ...] = ()
    """(API group, kind) of the objects the rule understands; any other is refused unseen."""

    def accepts(self, group: str, kind: str) -> bool:
        return (group, kind) in self.kinds


def validate_pipelinerun(request: AdmissionRequest, context: Context) -> Decision:
    """PipelineRuns: own Harbor project, approved builders and pipelines, N active runs."""
    policy = context.policy
    builds = policy.builds
    if request.operation not in ("CREATE", "UPDATE", "DELETE"):
        return allow()
    if request.namespace in policy.exempt_namespaces:
        return allow()
    run = request.object or {}
    if request.operation in ("UPDATE", "DELETE"):
        # Only the run's own tool, the system users and the run managers; a subresource (status)
        # cannot change the spec, so only who writes it is judged.
        stored = request.old_object or {}
        refusal = run_access_refused(policy, request.namespace, request.user, stored,
                                     operation=request.operation,
                                     sub_resource=request.sub_resource)
        findings = [refusal] if refusal is not None else []
        if request.operation == "UPDATE" and not request.sub_resource:
            findings += check_changed_run(stored, run, builds)
        return decide(findings, builds.mode)
    identity = tool_of_requester(policy, request.namespace, request.user, run)
    if identity.tool is None:
        return decide([f for f in (identity.finding,) if f is not None], builds.mode)
    tool = identity.tool
    findings = list(check_new_run(tool, run, builds))
    slots = context.active_runs
    if slots is None:
        return merge_warnings(decide(findings, builds.mode), (not_checked_warning(tool),))
    metadata = run.get("metadata") or {}
    candidate = Reservation(uid=str(metadata.get("uid") or ""), namespace=request.namespace,
                            name=request.name or str(metadata.get("name") or ""),
                            reserved_at=context.now)
    limit = builds.max_active_runs_for(tool)
    # Reserve only for a run that will be admitted; otherwise just look, to report a full slot too.
    reserve = not request.dry_run and (not findings or builds.mode == "warn")
    try:
        claim = slots.claim(tool, candidate, limit=limit, label=builds.tool_label, reserve=reserve)
    except SlotsUnavailableError as error:
        logger.warning("active runs unavailable", extra={"fields": {
            "uid": request.uid, "tool": tool, "error": str(error)}})
        # What to do comes first (users read the start); the technical cause last, for admins.
        findings.append(Finding(SLOTS_UNAVAILABLE, (
            f"could not check how many PipelineRuns the tool {tool} has running, so this run was "
            "not created: try again in a minute, and tell the platform admins if it keeps "
            f"failing (cause: {error})")))
    else:
        if not claim.fits:
            findings.append(too_many_runs(tool, claim.limit, claim.occupants))
    return decide(findings, builds.mode)


def validate_pod(request: AdmissionRequest, context: Context) -> Decision:
    """Pods and workload templates: every image from an allowed registry; in the build
    namespace, pods only from the Tekton controller, no credential where it does not belong,
    and trusted steps that push only their PipelineRun's image."""
    registry_decision = check_pod_images(
        kind=request.kind.kind, operation=request.operation, namespace=request.namespace,
        obj=request.object, old_obj=request.old_object, policy=context.policy, now=context.now)
    if request.kind.kind != "Pod":
        return registry_decision
    policy = context.policy
    pod = request.object
    run: FoundRun | None = None
    if context.build_runs is not None and needs_build_run(pod, request.namespace,
                                                          request.operation, policy):
        assert pod is not None  # needs_build_run is False without a pod
        try:
            run = context.build_runs.pipelinerun_of_pod(request.namespace, pod)
        except RunsUnavailableError as error:
            return combine(registry_decision, _runs_unavailable(request, "pod", error,
                                                                policy.credentials.mode))
    build_decision = check_build_pod(pod, request.namespace, request.operation, request.user,
                                     policy=policy, run=run)
    return combine(registry_decision, build_decision)


def validate_taskrun(request: AdmissionRequest, context: Context) -> Decision:
    """TaskRuns and CustomRuns in the build namespace: made by the Tekton controller for a
    PipelineRun that exists; never changed or deleted by a tool."""
    policy = context.policy
    kind = request.kind.kind
    if kind not in RUN_KINDS or request.namespace != policy.builds.namespace:
        return allow()
    mode = policy.builds.mode
    if request.operation in ("UPDATE", "DELETE"):
        return decide(check_run_change(kind, request.operation, request.user, policy), mode)
    if request.operation != "CREATE":
        return allow()
    findings = check_new_taskrun(kind, request.user, request.object, policy)
    owner = controller_owner(request.object, PIPELINERUN)
    if findings or owner is None:
        return decide(findings, mode)
    if context.build_runs is None:
        return allow(warnings=(f"the PipelineRun {owner.name} of this {kind} was not looked up "
                               "(no cluster connection)",))
    try:
        found = context.build_runs.pipelinerun(request.namespace, owner)
    except RunsUnavailableError as error:
        return _runs_unavailable(request, kind, error, mode)
    return decide([] if found.run is not None else [run_not_found(kind, found)], mode)


def validate_build_pod_access(request: AdmissionRequest, context: Context) -> Decision:
    """`exec`, `attach` and `portforward` into pods of the build namespace: refused."""
    policy = context.policy
    if request.operation != "CONNECT" or request.namespace != policy.builds.namespace:
        return allow()
    return decide(check_pod_access(request.sub_resource, request.user, policy),
                  policy.credentials.mode)


def _runs_unavailable(request: AdmissionRequest, what: str, error: Exception,
                      mode: Mode) -> Decision:
    logger.warning("build runs unavailable", extra={"fields": {
        "uid": request.uid, "kind": request.kind.kind, "error": str(error)}})
    # Tekton retries a TaskRun it could not create; a refused pod fails its TaskRun for good.
    again = "Tekton tries again" if what in RUN_KINDS else "start the build again"
    return decide([Finding(RUNS_UNAVAILABLE, (
        f"could not look up the PipelineRun this {what} belongs to, so it was not created: "
        f"{again}; tell the platform admins if it keeps failing (cause: {error})"))], mode)


def mutate_build_pod(request: AdmissionRequest, context: Context) -> Decision:
    """Tekton build pods: registry credentials only in trusted steps."""
    return strip_build_credentials(request.object, request.namespace, request.operation,
                                   context.policy)


def validate_policy(request: AdmissionRequest, context: Context) -> Decision:
    """The policy ConfigMap itself: refuse an edit that would not load."""
    configmap = request.object or {}
    if request.name != POLICY_CONFIGMAP or request.operation not in ("CREATE", "UPDATE"):
        return allow()
    data = configmap.get("data") or {}
    if not isinstance(data, dict) or POLICY_KEY not in data:
        return decide([Finding("PolicyMissing", f"ConfigMap {POLICY_CONFIGMAP} must have the "
                                                f"key {POLICY_KEY}")], "enforce")
    text = data[POLICY_KEY]
    if not isinstance(text, str):
        return decide([Finding("PolicyInvalid", f"{POLICY_KEY} must be a string")], "enforce")
    try:
        parse_policy(text)
    except PolicyError as error:
        findings = [Finding("PolicyInvalid", problem) for problem in error.problems]
        decision = decide(findings, "enforce")
        # Capped again: the prefix would take a message at the cap over it.
        return Decision(allowed=False, reason=decision.reason,
                        message=cap(f"{POLICY_KEY} is not a valid policy: {decision.message}",
                                    MAX_MESSAGE_CHARS),
                        audit=decision.audit)
    return allow()


POD = ("", "Pod")
WORKLOADS = (("", "PodTemplate"), ("", "ReplicationController"), ("apps", "Deployment"),
             ("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("apps", "DaemonSet"),
             ("batch", "Job"), ("batch", "CronJob"))
"""Kinds that hold a pod template (`policies.registry.POD_SPEC_PATHS`)."""

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("mutate-build-pods", "/mutate/build-pods", True, mutate_build_pod, (POD,)),
    Endpoint("validate-pipelineruns", "/validate/pipelineruns", False, validate_pipelinerun,
             (("tekton.dev", "PipelineRun"),)),
    Endpoint("validate-pods", "/validate/pods", False, validate_pod, (POD, *WORKLOADS)),
    Endpoint("validate-policy", "/validate/policy", False, validate_policy,
             (("", "ConfigMap"),)),
    Endpoint("validate-taskruns", "/validate/taskruns", False, validate_taskrun,
             (("tekton.dev", "TaskRun"), ("tekton.dev", "CustomRun"))),
    # CONNECT reviews carry the options kind of the subresource (pods/exec, attach, portforward).
    Endpoint("validate-build-pod-access", "/validate/build-pod-access", False,
             validate_build_pod_access, (("", "PodExecOptions"), ("", "PodAttachOptions"),
                                         ("", "PodPortForwardOptions"))),
)
ENDPOINTS_BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}


def wrong_kind(endpoint: Endpoint, request: AdmissionRequest) -> str:
    """`validate-pipelineruns expected a PipelineRun, got a Pod (v1)`."""
    def named(group: str, kind: str) -> str:
        return f"{kind} ({group})" if group else kind

    expected = [named(*kind) for kind in endpoint.kinds]
    got = request.kind
    # A forged review (or a hand-written one, offline) may name any kind: escaped, as a name.
    kind = escape(got.kind)
    version = escape(f"{got.group}/{got.version}" if got.group else got.version, 300)
    return (f"{endpoint.name} expected {_article(expected[0]) if len(expected) == 1 else 'one of'} "
            f"{', '.join(expected)}, got {_article(kind)} {kind} ({version}): the "
            "webhook configuration sends it to the wrong endpoint; the platform admins must fix it")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def answer(endpoint: Endpoint, request: AdmissionRequest, context: Context,
           ) -> tuple[Decision, ReviewPayload]:
    """Run an endpoint's rule and build the AdmissionReview the API server gets back."""
    try:
        if not endpoint.accepts(request.kind.group, request.kind.kind):
            # A webhook configuration that sends other objects here: a rule that does not know
            # them would find nothing wrong, so refuse (fail closed) and say what went where.
            decision = deny(UNSUPPORTED_KIND, wrong_kind(endpoint, request))
        else:
            decision = endpoint.rule(request, context)
    except Exception:
        # A rule that breaks on an unforeseen object must not turn into an HTTP 500 (which the
        # API server reports as its own internal error): refuse, so the failure stays closed and
        # the user sees whom to ask.
        logger.exception("rule failed", extra={"fields": {"uid": request.uid,
                                                          "endpoint": endpoint.name}})
        decision = deny(RULE_FAILED, f"{endpoint.name} could not evaluate this object; the "
                                     f"platform admins can find the cause under uid {request.uid}")
    patch = None
    if endpoint.mutating and decision.allowed and decision.patched is not None:
        patch = make_patch(request.object, decision.patched)
    return decision, build_response(request.uid, decision, patch)
