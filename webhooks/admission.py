"""The endpoints: for each, gather what its rule needs and call the rule in `policies`.

Both the HTTP service and the offline `review` command go through `ENDPOINTS`, so an admin who
evaluates a manifest offline gets exactly the verdict the API server would.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from policies.credentials import find_credential_leaks, strip_build_credentials
from policies.decision import (
    MAX_MESSAGE_CHARS,
    Decision,
    Finding,
    allow,
    cap,
    combine,
    decide,
    deny,
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
from webhooks.slots import SlotsUnavailableError

logger = logging.getLogger(__name__)
RULE_FAILED = "RuleFailed"

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


@dataclass(frozen=True)
class Context:
    """What a rule may use besides the request: the policy, the time, and the cluster."""

    policy: Policy
    now: datetime.datetime
    active_runs: ActiveRuns | None = None
    """None when there is no cluster (offline `review`): the active-run check is skipped."""


Rule = Callable[[AdmissionRequest, Context], Decision]


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    mutating: bool
    rule: Rule


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
    """Pods and workload templates: every image from an allowed registry."""
    registry_decision = check_pod_images(
        kind=request.kind.kind, operation=request.operation, namespace=request.namespace,
        obj=request.object, old_obj=request.old_object, policy=context.policy, now=context.now)
    leaks_decision = (find_credential_leaks(request.object, request.namespace, context.policy)
                      if request.kind.kind == "Pod" and request.operation == "CREATE"
                      else allow())
    return combine(registry_decision, leaks_decision)


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


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("mutate-build-pods", "/mutate/build-pods", True, mutate_build_pod),
    Endpoint("validate-pipelineruns", "/validate/pipelineruns", False, validate_pipelinerun),
    Endpoint("validate-pods", "/validate/pods", False, validate_pod),
    Endpoint("validate-policy", "/validate/policy", False, validate_policy),
)
ENDPOINTS_BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}


def answer(endpoint: Endpoint, request: AdmissionRequest, context: Context,
           ) -> tuple[Decision, ReviewPayload]:
    """Run an endpoint's rule and build the AdmissionReview the API server gets back."""
    try:
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
