"""What a rule may ask the cluster in the middle of deciding, and what it hears back.

A rule stays pure: instead of calling the cluster it returns an `Ask` (`policies.rule`) holding
one of these questions and what to do with the answer. The edge (`webhooks.admission`) puts the
question to the cluster and hands the answer back:

    SlotClaim      does the run fit in its tool's active-run slots (and, with `reserve`, take one)
                   -> `policies.slots.Claim`
    RunLookup      the PipelineRun an owner reference names -> `FoundRun`
    PodRunLookup   the PipelineRun a pod belongs to, through its TaskRun -> `FoundRun`

An answer may also be `Unavailable` (the cluster did not answer in time: the rule fails closed
with a message that says what happens next) or None (there is no cluster: the offline `review`,
`test` and `audit`; the rule skips what it cannot know and says so in a warning).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.owners import OwnerRef
from policies.slots import Claim, Reservation


@dataclass(frozen=True)
class SlotClaim:
    """Whether `candidate` fits its tool's limit; with `reserve`, take its slot if it does."""

    tool: str
    candidate: Reservation
    limit: int
    label: str
    """The label that names a run's tool, to list the tool's runs by."""
    reserve: bool


@dataclass(frozen=True)
class RunLookup:
    """The PipelineRun `owner` refers to, if it exists with that uid."""

    namespace: str
    owner: OwnerRef


@dataclass(frozen=True)
class PodRunLookup:
    """The PipelineRun of the TaskRun that owns `pod`."""

    namespace: str
    pod: Mapping[str, Any]


@dataclass(frozen=True)
class FoundRun:
    """What the cluster says about the PipelineRun an object belongs to."""

    run: Mapping[str, Any] | None
    problem: str = ""
    """Why there is none (no owner, not found, another uid), for the message."""


@dataclass(frozen=True)
class Unavailable:
    """The cluster could not answer in time."""

    cause: str
    """The technical cause, for the end of the message (admins read it; users read the start)."""


Question = SlotClaim | RunLookup | PodRunLookup
Answer = Claim | FoundRun | Unavailable | None
