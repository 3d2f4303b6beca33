"""The shape of every rule: a `Review` and the `Facts` in, a `Decision` out (or an `Ask`).

    Review    the request as a rule sees it: operation, namespace, name, user, kind,
              sub_resource, object, old_object, dry_run, delete_options
    Facts     what the edge gathered besides: the policy in force and the time
    Decision  `policies.decision`: admitted or not, the message, warnings, audit annotations,
              and for a mutation the object as it should be stored (`patched`)
    Ask       a question for the cluster (`policies.questions`) and what to decide with the
              answer, for a rule that needs the cluster in the middle of deciding

A `Rule` is a check and the requests it judges: which operations and kinds, whether the
policy's `exemptNamespaces` are left alone, whether only the build namespace is its business.
`judge` runs an endpoint's rules on the requests they judge and admits the rest unseen, so no
check filters by itself; it combines their decisions (`policies.decision.combine`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policies.decision import Decision, combine, deny
from policies.identity import User
from policies.model import Policy
from policies.questions import Answer, Question

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]

NO_POLICY = "NoPolicy"
WITHOUT_POLICY = deny(NO_POLICY, "toolforge-admission has no valid policy loaded, so it refuses "
                                 "everything; a platform admin must fix the policy")
"""Every review's decision while no valid policy is loaded: refuse rather than guess."""


ORPHAN_FINALIZER = "orphan"
"""The finalizer that makes the garbage collector leave an object's dependents behind."""


@dataclass(frozen=True)
class DeleteOptions:
    """What a DELETE asks of the garbage collector (`request.options`, a `meta.k8s.io/v1`
    DeleteOptions); only what decides the fate of the object's dependents is kept."""

    propagation_policy: str = ""
    """`Orphan`, `Background` or `Foreground`; "" when the request gives none."""
    orphan_dependents: bool | None = None
    """The legacy spelling: true for `Orphan`, false for not; None when the request gives none."""

    def orphans(self, finalizers: object) -> bool:
        """Whether deleting an object with these `finalizers` leaves its dependents behind.

        As the API server decides it (the generic registry's `shouldOrphanDependents`): the
        legacy flag first, then the policy, then the object's own `orphan` (or
        `foregroundDeletion`) finalizer; PipelineRuns, like every custom resource, default to
        deleting their dependents.
        """
        if self.orphan_dependents is not None:
            return self.orphan_dependents
        if self.propagation_policy == "Orphan":
            return True
        if self.propagation_policy in ("Background", "Foreground"):
            return False
        for finalizer in finalizers if isinstance(finalizers, list) else ():
            if finalizer == ORPHAN_FINALIZER:
                return True
            if finalizer == "foregroundDeletion":
                return False
        return False


NO_DELETE_OPTIONS = DeleteOptions()


@dataclass(frozen=True, kw_only=True)
class Review:
    """One admission request, as a rule judges it."""

    operation: Operation
    namespace: str = ""
    name: str = ""
    user: User
    kind: str
    """The object's kind (`Pod`, `PipelineRun`); the endpoint has checked its API group."""
    sub_resource: str = ""
    object: dict[str, Any] | None = None
    """The object as it would be stored; None on DELETE. Decoded JSON: read it defensively
    (`policies.objects.mapping`)."""
    old_object: dict[str, Any] | None = None
    """The stored object on UPDATE and DELETE."""
    dry_run: bool = False
    delete_options: DeleteOptions = NO_DELETE_OPTIONS
    """On DELETE, what happens to the object's dependents; on other operations, nothing given."""


@dataclass(frozen=True)
class Facts:
    """What a rule may use besides the review."""

    policy: Policy
    now: datetime.datetime


@dataclass(frozen=True)
class Ask:
    """A question for the cluster, and the rest of the rule: what it decides with the answer."""

    question: Question
    then: Callable[[Answer], Verdict]


Verdict = Decision | Ask
Check = Callable[[Review, Facts], Verdict]


@dataclass(frozen=True)
class Rule:
    """A check and the requests it judges; an endpoint runs one or more."""

    check: Check
    operations: frozenset[Operation]
    kinds: frozenset[str] | None = None
    """None: every kind the endpoint accepts."""
    exempt_namespaces: bool = False
    """True: requests in the policy's `exemptNamespaces` are admitted unseen."""
    build_namespace: bool = False
    """True: only requests in `builds.namespace` are judged."""

    def covers(self, review: Review, policy: Policy) -> bool:
        """Whether this rule judges the request at all."""
        return (review.operation in self.operations
                and (self.kinds is None or review.kind in self.kinds)
                and not (self.exempt_namespaces and review.namespace in policy.exempt_namespaces)
                and (not self.build_namespace or review.namespace == policy.builds.namespace))


def judge(rules: Sequence[Rule], review: Review, facts: Facts) -> Verdict:
    """The verdict of an endpoint's rules on a review; requests no rule judges are admitted."""
    policy = facts.policy
    return _together([rule.check(review, facts) for rule in rules
                      if rule.covers(review, policy)])


def _together(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict from several rules' on one request: the first question first, then the
    decisions combined."""
    if len(verdicts) == 1:
        return verdicts[0]
    decisions = []
    for index, verdict in enumerate(verdicts):
        if isinstance(verdict, Ask):
            return _asking(verdicts, index, verdict)
        decisions.append(verdict)
    return combine(*decisions)


def _asking(verdicts: Sequence[Verdict], index: int, ask: Ask) -> Ask:
    def then(answer: Answer) -> Verdict:
        return _together([*verdicts[:index], ask.then(answer), *verdicts[index + 1:]])

    return Ask(ask.question, then)
