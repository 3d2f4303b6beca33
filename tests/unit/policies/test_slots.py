"""Active-run slots: which reservations stay, who holds a slot, and whether one more run fits."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from policies.slots import (
    RESERVATION_GRACE,
    ListedRun,
    Reservation,
    claim_slot,
    is_active,
    kept_reservations,
    listed_run,
)

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
FRESH = NOW - datetime.timedelta(seconds=5)
STALE = NOW - RESERVATION_GRACE - datetime.timedelta(seconds=1)


def reservation(uid: str, at: datetime.datetime = FRESH) -> Reservation:
    return Reservation(uid=uid, namespace="image-build", name=f"run-{uid}", reserved_at=at)


def run(uid: str, *, active: bool = True) -> ListedRun:
    return ListedRun(namespace="image-build", name=f"run-{uid}", uid=uid, active=active)


def condition(status: str | None) -> dict[str, Any]:
    if status is None:
        return {}
    return {"status": {"conditions": [{"type": "Succeeded", "status": status,
                                       "reason": "Running"}]}}


@pytest.mark.parametrize(("obj", "active"), [
    pytest.param({}, True, id="no-status-yet"),
    pytest.param({"status": {}}, True, id="empty-status"),
    pytest.param({"status": {"conditions": []}}, True, id="no-conditions"),
    pytest.param(condition("Unknown"), True, id="running-or-pending"),
    pytest.param(condition("True"), False, id="succeeded"),
    pytest.param(condition("False"), False, id="failed-or-cancelled"),
    pytest.param({"status": {"conditions": [{"type": "Other", "status": "True"}]}}, True,
                 id="only-other-conditions"),
    pytest.param({"status": "garbage"}, True, id="malformed-status"),
])
def test_a_run_is_active_until_succeeded_is_true_or_false(obj: dict[str, Any],
                                                          active: bool) -> None:
    assert is_active(obj) is active


def test_a_listed_run_reads_name_uid_and_activity() -> None:
    obj = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}, **condition("True")}
    assert listed_run(obj) == ListedRun(namespace="ns", name="r", uid="u", active=False)


@pytest.mark.parametrize(("reservations", "runs", "kept"), [
    pytest.param([reservation("a")], [], ["a"], id="fresh-unlisted-stays"),
    pytest.param([reservation("a", STALE)], [], [], id="stale-unlisted-goes"),
    pytest.param([reservation("a", STALE)], [run("a")], ["a"], id="stale-but-active-stays"),
    pytest.param([reservation("a", STALE)], [run("a", active=False)], [],
                 id="stale-and-finished-goes"),
    pytest.param([reservation("a", STALE)], [run("b")], [], id="another-run-active"),
])
def test_reservations_stay_while_their_run_is_active_or_within_the_grace(
        reservations: list[Reservation], runs: list[ListedRun], kept: list[str]) -> None:
    assert [r.uid for r in kept_reservations(reservations, runs, NOW)] == kept


def test_a_reservation_without_uid_matches_its_run_by_name() -> None:
    by_name = Reservation(uid="", namespace="image-build", name="run-a", reserved_at=STALE)
    assert kept_reservations([by_name], [run("a")], NOW) == (by_name,)


@pytest.mark.parametrize(("reservations", "runs", "limit", "fits", "occupants"), [
    pytest.param([], [], 1, True, [], id="empty"),
    pytest.param([], [run("x")], 1, False, ["image-build/run-x"], id="active-run-unreserved"),
    pytest.param([reservation("x")], [], 1, False, ["image-build/run-x"],
                 id="admitted-not-yet-stored"),
    pytest.param([reservation("x", STALE)], [], 1, True, [], id="never-stored-frees-after-grace"),
    pytest.param([reservation("x")], [run("x", active=False)], 1, True, [],
                 id="finished-frees-at-once"),
    pytest.param([reservation("x")], [run("x")], 2, True, ["image-build/run-x"],
                 id="room-under-a-higher-limit"),
    pytest.param([reservation("x")], [run("x")], 1, False, ["image-build/run-x"],
                 id="reserved-and-stored-counts-once"),
    pytest.param([], [], 0, False, [], id="limit-zero"),
    pytest.param([reservation("cand")], [], 1, True, [], id="already-reserved-is-idempotent"),
    pytest.param([], [run("cand")], 1, True, [], id="own-listed-run-is-not-an-occupant"),
])
def test_a_candidate_fits_when_fewer_than_limit_others_hold_a_slot(
        reservations: list[Reservation], runs: list[ListedRun], limit: int, fits: bool,
        occupants: list[str]) -> None:
    claim = claim_slot(reservation("cand", NOW), reservations, runs, limit=limit, now=NOW)
    assert claim.fits is fits
    assert list(claim.occupants) == occupants


def test_a_fitting_candidate_is_stored_with_the_kept_reservations() -> None:
    claim = claim_slot(reservation("cand", NOW), [reservation("old", STALE), reservation("x")],
                       [run("x")], limit=2, now=NOW)
    assert [r.uid for r in claim.reservations] == ["x", "cand"]
    assert claim.changed


def test_a_repeated_claim_changes_nothing() -> None:
    claim = claim_slot(reservation("cand", NOW), [reservation("cand")], [], limit=1, now=NOW)
    assert claim.fits
    assert not claim.changed


def test_a_refused_candidate_is_not_stored() -> None:
    claim = claim_slot(reservation("cand", NOW), [reservation("x")], [], limit=1, now=NOW)
    assert not claim.fits
    assert [r.uid for r in claim.reservations] == ["x"]
