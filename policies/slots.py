"""Active-run slots: which reservations still hold, and whether one more run fits.

A tool may have at most N active PipelineRuns. The webhook cannot count stored runs alone: a run it
has just admitted is not stored yet when the next request arrives (and several replicas answer at
once), so each admitted run first takes a *reservation* in a per-tool record that the API server
updates atomically (see `webhooks.slots`). This module is the pure part: given the reservations
and the tool's runs as listed, it says which reservations stay and whether a candidate fits.

A reservation stays while its run is listed as active, or while it is younger than a grace period:
that covers a run admitted but not yet stored, and a run refused later by another webhook (never
stored), whose slot frees itself once the grace has passed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

RESERVATION_GRACE = datetime.timedelta(seconds=30)
"""How long a reservation holds without its run being listed; more than the webhook timeout."""

SUCCEEDED = "Succeeded"


@dataclass(frozen=True)
class Reservation:
    """One slot taken by an admitted run."""

    uid: str
    """The run's metadata.uid (the validating webhook sees it on CREATE), or "" when unknown."""
    namespace: str
    name: str
    reserved_at: datetime.datetime

    @property
    def key(self) -> str:
        return self.uid or f"{self.namespace}/{self.name}"

    def holds_for(self, run: ListedRun) -> bool:
        """True when this reservation is for the listed run."""
        if self.uid and run.uid:
            return self.uid == run.uid
        return (self.namespace, self.name) == (run.namespace, run.name)


@dataclass(frozen=True)
class ListedRun:
    """A PipelineRun of the tool as the API server lists it."""

    namespace: str
    name: str
    uid: str
    active: bool

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Claim:
    """Whether a candidate run fits, who holds the slots, and what to store."""

    fits: bool
    limit: int
    occupants: tuple[str, ...]
    """`namespace/name` of every other run that holds a slot."""
    reservations: tuple[Reservation, ...]
    """The reservations to store: the ones that stay, plus the candidate's when it fits."""
    changed: bool
    """True when `reservations` differs from what was read, so it must be written back."""


def is_active(run: Mapping[str, Any]) -> bool:
    """Tekton's own test: active until the Succeeded condition is True or False."""
    status = run.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    if not isinstance(conditions, list):
        return True
    for condition in conditions:
        if isinstance(condition, dict) and condition.get("type") == SUCCEEDED:
            return condition.get("status") not in ("True", "False")
    return True


def listed_run(run: Mapping[str, Any]) -> ListedRun:
    """The parts of a listed PipelineRun that slots need."""
    metadata = run.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    return ListedRun(namespace=str(metadata.get("namespace") or ""),
                     name=str(metadata.get("name") or ""),
                     uid=str(metadata.get("uid") or ""),
                     active=is_active(run))


def kept_reservations(reservations: Iterable[Reservation], runs: Iterable[ListedRun],
                      now: datetime.datetime,
                      grace: datetime.timedelta = RESERVATION_GRACE) -> tuple[Reservation, ...]:
    """The reservations that still hold: their run is active, or they are within the grace."""
    active = [run for run in runs if run.active]
    return tuple(
        r for r in reservations
        if any(r.holds_for(run) for run in active) or now - r.reserved_at < grace
    )


def claim_slot(candidate: Reservation, reservations: Iterable[Reservation],
               runs: Iterable[ListedRun], *, limit: int, now: datetime.datetime,
               grace: datetime.timedelta = RESERVATION_GRACE) -> Claim:
    """Decide whether `candidate` fits beside the tool's active runs and live reservations."""
    read = tuple(reservations)
    listed = tuple(runs)
    kept = kept_reservations(read, listed, now, grace)
    own = next((r for r in kept if r.key == candidate.key), None)
    others = [r for r in kept if r.key != candidate.key]
    occupants = [run.ref for run in listed if run.active and not candidate.holds_for(run)]
    for reservation in others:
        ref = f"{reservation.namespace}/{reservation.name}"
        if not any(reservation.holds_for(run) for run in listed) and ref not in occupants:
            occupants.append(ref)
    # A run whose reservation is already stored (the API server called twice) keeps its slot.
    fits = own is not None or len(occupants) < limit
    stored = kept
    if fits and own is None:
        stored = (*kept, candidate)
    return Claim(fits=fits, limit=limit, occupants=tuple(sorted(occupants)),
                 reservations=stored, changed=stored != read)
