"""The endpoints: which rules of `policies` each runs, and the cluster those rules may ask.

An endpoint is a path, the kinds it accepts and its rules (`policies.rule.Rule`: each declares
the operations and namespaces it judges). `answer` gathers what the rules need (the policy in
force, the time), calls `policies.rule.judge`, puts the questions a rule asks to the cluster
(`Cluster`: active-run slots, the PipelineRun a TaskRun or pod belongs to) and returns the
decision and, for a mutation, the JSON patch; `webhooks.review.build_response` writes the reply.
It decides nothing itself but to refuse what it cannot judge: a kind the endpoint does not know,
a rule that breaks.

Both the HTTP service and the offline `review` command go through `ENDPOINTS`, so an admin who
evaluates a manifest offline gets exactly the verdict the API server would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from policies.buildruns import BUILD_DEFINITIONS, BUILD_POD_ACCESS, TASKRUNS
from policies.configmap import POLICY_EDITS
from policies.credentials import BUILD_POD_CREDENTIALS, BUILD_PODS
from policies.decision import Decision, deny, escape
from policies.owners import OwnerRef
from policies.pipelinerun import PIPELINERUNS
from policies.questions import (
    Answer,
    FoundRun,
    Question,
    RunLookup,
    SlotClaim,
    Unavailable,
)
from policies.registry import IMAGES
from policies.rule import WITHOUT_POLICY, Ask, Facts, Rule, judge
from policies.slots import Claim, Reservation
from webhooks.patches import make_patch
from webhooks.review import AdmissionRequest, Patch
from webhooks.runs import RunsUnavailableError
from webhooks.slots import SlotsUnavailableError

logger = logging.getLogger(__name__)
RULE_FAILED = "RuleFailed"
UNSUPPORTED_KIND = "UnsupportedKind"


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

    def pipelinerun_of_pod(self, namespace: str, pod: Mapping[str, Any]) -> FoundRun: ...


@dataclass(frozen=True)
class Cluster:
    """What the rules' questions are put to; None where there is no cluster (offline `review`,
    `test`, `audit`): the rule is then answered None, skips what it cannot know and says so."""

    active_runs: ActiveRuns | None = None
    build_runs: BuildRunReader | None = None

    def answer(self, question: Question, request: AdmissionRequest) -> Answer:
        """The cluster's answer, or `Unavailable` (logged) when it cannot give one in time."""
        if isinstance(question, SlotClaim):
            if self.active_runs is None:
                return None
            try:
                return self.active_runs.claim(question.tool, question.candidate,
                                              limit=question.limit, label=question.label,
                                              reserve=question.reserve)
            except SlotsUnavailableError as error:
                logger.warning("active runs unavailable", extra={"fields": {
                    "uid": request.uid, "tool": question.tool, "error": str(error)}})
                return Unavailable(str(error))
        if self.build_runs is None:
            return None
        try:
            if isinstance(question, RunLookup):
                return self.build_runs.pipelinerun(question.namespace, question.owner)
            return self.build_runs.pipelinerun_of_pod(question.namespace, question.pod)
        except RunsUnavailableError as error:
            logger.warning("build runs unavailable", extra={"fields": {
                "uid": request.uid, "kind": request.kind, "error": str(error)}})
            return Unavailable(str(error))


OFFLINE = Cluster()


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    mutating: bool
    rules: tuple[Rule, ...]
    """Run in order on the requests each judges; their decisions combined."""
    kinds: tuple[tuple[str, str], ...] = ()
    """(API group, kind) of the objects the rules understand; any other is refused unseen."""

    def accepts(self, group: str, kind: str) -> bool:
        return (group, kind) in self.kinds


POD = ("", "Pod")
WORKLOADS = (("", "PodTemplate"), ("", "ReplicationController"), ("apps", "Deployment"),
             ("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("apps", "DaemonSet"),
             ("batch", "Job"), ("batch", "CronJob"))
"""Kinds that hold a pod template (`policies.registry.POD_SPEC_PATHS`)."""

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("mutate-build-pods", "/mutate/build-pods", True, (BUILD_POD_CREDENTIALS,), (POD,)),
    Endpoint("validate-pipelineruns", "/validate/pipelineruns", False, (PIPELINERUNS,),
             (("tekton.dev", "PipelineRun"),)),
    # Images everywhere but the exempt namespaces; in the build namespace, the build-pod rules.
    Endpoint("validate-pods", "/validate/pods", False, (IMAGES, BUILD_PODS), (POD, *WORKLOADS)),
    Endpoint("validate-policy", "/validate/policy", False, (POLICY_EDITS,),
             (("", "ConfigMap"),)),
    # TaskRuns and CustomRuns, and the Tasks, Pipelines and StepActions builds run.
    Endpoint("validate-taskruns", "/validate/taskruns", False, (TASKRUNS, BUILD_DEFINITIONS),
             (("tekton.dev", "TaskRun"), ("tekton.dev", "CustomRun"), ("tekton.dev", "Task"),
              ("tekton.dev", "Pipeline"), ("tekton.dev", "StepAction"))),
    # CONNECT reviews carry the options kind of the subresource (pods/exec, attach, portforward,
    # proxy).
    Endpoint("validate-build-pod-access", "/validate/build-pod-access", False,
             (BUILD_POD_ACCESS,), (("", "PodExecOptions"), ("", "PodAttachOptions"),
                                   ("", "PodPortForwardOptions"), ("", "PodProxyOptions"))),
)
ENDPOINTS_BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}


def wrong_kind(endpoint: Endpoint, request: AdmissionRequest) -> str:
    """`validate-pipelineruns expected a PipelineRun, got a Pod (v1)`."""
    def named(group: str, kind: str) -> str:
        return f"{kind} ({group})" if group else kind

    expected = [named(*kind) for kind in endpoint.kinds]
    got = request.group_version_kind
    # A forged review (or a hand-written one, offline) may name any kind: escaped, as a name.
    kind = escape(got.kind)
    version = escape(f"{got.group}/{got.version}" if got.group else got.version, 300)
    return (f"{endpoint.name} expected {_article(expected[0]) if len(expected) == 1 else 'one of'} "
            f"{', '.join(expected)}, got {_article(kind)} {kind} ({version}): the "
            "webhook configuration sends it to the wrong endpoint; the platform admins must fix it")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def decision_for(endpoint: Endpoint, request: AdmissionRequest, facts: Facts | None,
           cluster: Cluster) -> Decision:
    """The endpoint's decision on a request; `facts` None: no valid policy is loaded.

    Raises whatever a rule raises (`answer` turns that into a refusal).
    """
    if facts is None:
        return WITHOUT_POLICY
    if not endpoint.accepts(request.group_version_kind.group, request.kind):
        # A webhook configuration that sends other objects here: a rule that does not know
        # them would find nothing wrong, so refuse (fail closed) and say what went where.
        return deny(UNSUPPORTED_KIND, wrong_kind(endpoint, request))
    verdict = judge(endpoint.rules, request, facts)
    while isinstance(verdict, Ask):
        verdict = verdict.then(cluster.answer(verdict.question, request))
    return verdict


def answer(endpoint: Endpoint, request: AdmissionRequest, facts: Facts | None,
           cluster: Cluster = OFFLINE) -> tuple[Decision, Patch | None]:
    """The endpoint's decision on a request, and for an admitted mutation its JSON patch."""
    try:
        decision = decision_for(endpoint, request, facts, cluster)
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
    return decision, patch
