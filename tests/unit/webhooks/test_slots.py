"""Lease-backed slots: optimistic concurrency holds the limit exactly; failures close the door."""

from __future__ import annotations

import copy
import datetime
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes.client import ApiException

from policies.slots import RESERVATION_GRACE, Reservation
from tests.unit.webhooks.fakes import LABEL, FakeCluster
from webhooks.slots import (
    DEFAULT_BUDGET_SECONDS,
    MAX_ATTEMPTS,
    RESERVATIONS_ANNOTATION,
    WITHDRAW_BUDGET_SECONDS,
    WRITTEN_ANNOTATION,
    ConflictError,
    KubernetesLeases,
    KubernetesRuns,
    LeaseSlots,
    SlotsUnavailableError,
    WriteUncertainError,
    lease_body,
    lease_name,
    read_reservations,
)

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


POOL = urllib3.HTTPConnectionPool("127.0.0.1")
"""The pool a urllib3 error names; the errors under test never reach one."""


def candidate(uid: str, at: datetime.datetime = NOW) -> Reservation:
    return Reservation(uid=uid, namespace="image-build", name=f"run-{uid}", reserved_at=at)


def slots(cluster: Any, **options: Any) -> LeaseSlots:
    return LeaseSlots(cluster, cluster, **options)


def claim(store: LeaseSlots, tool: str, uid: str, *, limit: int = 1,
          reserve: bool = True) -> bool:
    return store.claim(tool, candidate(uid), limit=limit, label=LABEL, reserve=reserve).fits


def test_the_first_run_reserves_and_the_second_is_refused() -> None:
    cluster = FakeCluster()
    store = slots(cluster)
    assert claim(store, "mytool", "a")
    assert not claim(store, "mytool", "b")
    lease = cluster.leases[lease_name("mytool")]
    assert [r.uid for r in read_reservations(lease)] == ["a"]


def test_another_tool_is_never_blocked() -> None:
    store = slots(FakeCluster())
    assert claim(store, "mytool", "a")
    assert claim(store, "othertool", "b")


def test_a_dry_run_reports_the_fit_and_reserves_nothing() -> None:
    cluster = FakeCluster()
    store = slots(cluster)
    assert claim(store, "mytool", "a", reserve=False)
    assert cluster.writes == 0
    assert claim(store, "mytool", "b")


def test_a_finished_run_frees_its_slot() -> None:
    cluster = FakeCluster()
    store = slots(cluster)
    assert claim(store, "mytool", "a")
    cluster.add_run("mytool", "a")
    assert not claim(store, "mytool", "b")
    cluster.runs[0]["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}]}
    assert claim(store, "mytool", "b")


def test_a_run_never_stored_frees_its_slot_after_the_grace() -> None:
    cluster = FakeCluster()
    store = slots(cluster)
    store.claim("mytool", candidate("a", NOW - datetime.timedelta(minutes=5)), limit=1,
                label=LABEL, reserve=True)
    assert claim(store, "mytool", "b")


def test_active_runs_count_even_without_a_reservation() -> None:
    cluster = FakeCluster()
    cluster.add_run("mytool", "old", status="Unknown")
    assert not claim(slots(cluster), "mytool", "b")


def test_concurrent_claims_through_several_workers_admit_exactly_the_limit() -> None:
    cluster = FakeCluster(delay=0.002)
    workers = [slots(cluster) for _ in range(4)]
    results: list[bool] = []
    barrier = threading.Barrier(20)

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            results.append(claim(workers[index % 4], "mytool", f"r{index}", limit=2))
        except SlotsUnavailableError:
            results.append(False)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 2
    assert len(read_reservations(cluster.leases[lease_name("mytool")])) == 2


class BrokenCluster(FakeCluster):
    def __init__(self, fail: str) -> None:
        super().__init__()
        self.fail = fail

    def get(self, name: str, timeout: float) -> dict[str, Any] | None:
        if self.fail == "get":
            raise SlotsUnavailableError("reading failed: HTTP 500 Internal Server Error")
        return super().get(name, timeout)

    def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
        raise ConflictError("always")

    def create(self, body: dict[str, Any], timeout: float) -> None:
        raise ConflictError("always")


@pytest.mark.parametrize(("fail", "text"), [
    pytest.param("get", "HTTP 500", id="api-error"),
    pytest.param("write", "kept conflicting", id="endless-conflicts"),
])
def test_failures_raise_slots_unavailable(fail: str, text: str) -> None:
    pauses: list[float] = []
    store = slots(BrokenCluster(fail), sleep=pauses.append)
    with pytest.raises(SlotsUnavailableError, match=text):
        claim(store, "mytool", "a")
    # Between conflicting attempts only: no pause before the refusal.
    assert len(pauses) == (MAX_ATTEMPTS - 1 if fail == "write" else 0)


def test_a_slow_api_server_runs_out_the_deadline() -> None:
    ticks = iter(range(100))
    store = slots(FakeCluster(), budget_seconds=2.5, monotonic=lambda: float(next(ticks)) * 2)
    with pytest.raises(SlotsUnavailableError, match=r"did not answer within 2\.5 s"):
        claim(store, "mytool", "a")


@pytest.mark.parametrize("tool", [
    pytest.param("mytool", id="plain"),
    pytest.param("my_tool", id="underscore"),
    pytest.param("a" * 256, id="longest"),
])
def test_lease_names_are_valid_object_names(tool: str) -> None:
    name = lease_name(tool)
    assert len(name) <= 253
    assert name == name.lower()
    assert all(c.isalnum() or c == "-" for c in name)
    assert lease_name(tool) != lease_name(tool + "x")


def test_unreadable_reservations_are_dropped() -> None:
    lease = {"metadata": {"annotations": {RESERVATIONS_ANNOTATION: "[{\"uid\": 1}, 7]"}}}
    assert read_reservations(lease) == ()
    assert read_reservations({"metadata": {"annotations": {RESERVATIONS_ANNOTATION: "{"}}}) == ()


def test_a_replaced_lease_carries_the_read_resource_version() -> None:
    body = lease_body("n", "mytool", [candidate("a")], {"metadata": {"resourceVersion": "42"}},
                      NOW)
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["metadata"]["annotations"][WRITTEN_ANNOTATION] == "2026-11-22T12:00:00.000000Z"
    assert [r.uid for r in read_reservations(body)] == ["a"]


class FailingApi:
    """The kubernetes client's API classes, failing the way a fault would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.error
        return call


@pytest.mark.parametrize(("error", "outcome"), [
    pytest.param(ApiException(status=409, reason="Conflict"), ConflictError, id="conflict"),
    pytest.param(ApiException(status=403, reason="Forbidden"), SlotsUnavailableError,
                 id="forbidden"),
    pytest.param(ConnectionRefusedError("refused"), SlotsUnavailableError, id="unreachable"),
])
def test_client_errors_on_write_map_to_conflict_or_unavailable(
        error: Exception, outcome: type[Exception]) -> None:
    with pytest.raises(outcome):
        KubernetesLeases(FailingApi(error), "ns").replace("n", {}, 1.0)


def test_a_missing_lease_reads_as_none_and_other_errors_as_unavailable() -> None:
    assert KubernetesLeases(FailingApi(ApiException(status=404)), "ns").get("n", 1.0) is None
    with pytest.raises(SlotsUnavailableError, match="HTTP 500"):
        KubernetesLeases(FailingApi(ApiException(status=500, reason="Boom")), "ns").get("n", 1.0)
    with pytest.raises(SlotsUnavailableError, match="listing PipelineRuns"):
        KubernetesRuns(FailingApi(TimeoutError("slow"))).list("a=b", 1.0)


# --- A write whose outcome is unknown: the refused run must not keep its slot --------------


class LostAnswer(FakeCluster):
    """The first Lease write is applied, but its answer is lost (a timeout, a reset)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def create(self, body: dict[str, Any], timeout: float) -> None:
        super().create(body, timeout)
        self._lose()

    def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
        super().replace(name, body, timeout)
        self._lose()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            raise WriteUncertainError("writing failed: ReadTimeoutError: timed out")


class LateWrite(FakeCluster):
    """The first Lease write times out in the client and reaches the store only later."""

    def __init__(self) -> None:
        super().__init__()
        self.held: tuple[str, dict[str, Any]] | None = None

    def create(self, body: dict[str, Any], timeout: float) -> None:
        if self.held is None:
            self.held = ("create", copy.deepcopy(body))
            raise WriteUncertainError("writing failed: ReadTimeoutError: timed out")
        super().create(body, timeout)

    def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
        if self.held is None:
            self.held = ("replace", copy.deepcopy(body))
            raise WriteUncertainError("writing failed: ReadTimeoutError: timed out")
        super().replace(name, body, timeout)

    def land(self) -> None:
        """The held write reaches the store now, with the resourceVersion it was sent with."""
        assert self.held is not None
        verb, body = self.held
        if verb == "create":
            super().create(body, 1.0)
        else:
            super().replace(body["metadata"]["name"], body, 1.0)


def reserved(cluster: FakeCluster, tool: str = "mytool") -> list[str]:
    return [r.uid for r in read_reservations(cluster.leases.get(lease_name(tool)))]


@pytest.mark.parametrize("existing", [
    pytest.param(False, id="first-run-creates-the-lease"),
    pytest.param(True, id="lease-exists"),
])
def test_a_write_applied_but_unanswered_is_withdrawn_before_the_refusal(existing: bool) -> None:
    cluster = LostAnswer()
    if existing:
        cluster.leases[lease_name("mytool")] = lease_body(lease_name("mytool"), "mytool", [],
                                                          None, NOW)
        cluster.leases[lease_name("mytool")]["metadata"]["resourceVersion"] = "0"
    with pytest.raises(WriteUncertainError):
        claim(slots(cluster), "mytool", "a")
    assert reserved(cluster) == []
    assert claim(slots(cluster), "mytool", "b")


@pytest.mark.parametrize("existing", [
    pytest.param(False, id="late-create"),
    pytest.param(True, id="late-replace"),
])
def test_a_write_landing_after_the_withdrawal_is_fenced_off(existing: bool) -> None:
    cluster = LateWrite()
    if existing:
        cluster.add_run("mytool", "done", status="True")
        FakeCluster.create(cluster, lease_body(lease_name("mytool"), "mytool", [], None, NOW),
                           1.0)
    with pytest.raises(WriteUncertainError):
        claim(slots(cluster), "mytool", "a")
    # The withdrawal wrote the Lease (a new write time), so the late write's precondition fails.
    with pytest.raises(ConflictError):
        cluster.land()
    assert reserved(cluster) == []
    assert claim(slots(cluster), "mytool", "b")


class GoneAfterWrite(LostAnswer):
    """The write is applied, then the API server cannot be reached at all."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _lose(self) -> None:
        if not self.lost:
            self.down = True
        super()._lose()

    def get(self, name: str, timeout: float) -> dict[str, Any] | None:
        if self.down:
            raise SlotsUnavailableError("reading failed: ConnectionRefusedError: refused")
        return super().get(name, timeout)


def test_when_the_withdrawal_fails_too_the_grace_frees_the_slot(
        caplog: pytest.LogCaptureFixture) -> None:
    cluster = GoneAfterWrite()
    with pytest.raises(WriteUncertainError):
        claim(slots(cluster), "mytool", "a")
    assert reserved(cluster) == ["a"]
    assert "reservation not withdrawn" in caplog.text
    cluster.down = False  # the API server is back
    later = candidate("b", NOW + datetime.timedelta(seconds=31))
    assert slots(cluster).claim("mytool", later, limit=1, label=LABEL, reserve=True).fits
    assert reserved(cluster) == ["b"]


class RefusedWrites(FakeCluster):
    """Every write is refused outright (429, 403): nothing is stored, so nothing to withdraw."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, name: str, timeout: float) -> dict[str, Any] | None:
        self.reads += 1
        return super().get(name, timeout)

    def create(self, body: dict[str, Any], timeout: float) -> None:
        raise SlotsUnavailableError("writing failed: HTTP 429 Too Many Requests")


def test_a_refused_write_is_not_withdrawn() -> None:
    cluster = RefusedWrites()
    with pytest.raises(SlotsUnavailableError, match="HTTP 429") as raised:
        claim(slots(cluster), "mytool", "a")
    assert not isinstance(raised.value, WriteUncertainError)
    assert cluster.reads == 1


def test_the_withdrawal_has_its_own_short_budget() -> None:
    clock = [0.0]

    class Slow(GoneAfterWrite):
        def get(self, name: str, timeout: float) -> dict[str, Any] | None:
            clock[0] += 0.4  # each read takes 0.4 s
            return FakeCluster.get(self, name, timeout)

        def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
            raise ConflictError("someone else wrote first")

    cluster = Slow()
    store = slots(cluster, budget_seconds=2.5, withdraw_budget_seconds=1.0,
                  monotonic=lambda: clock[0])
    with pytest.raises(WriteUncertainError):
        claim(store, "mytool", "a")
    # The claim's read (0.4 s), then the withdrawal's reads until its 1 s ran out.
    assert clock[0] <= 0.4 + 1.0 + 0.4


@pytest.mark.parametrize(("error", "uncertain"), [
    pytest.param(ApiException(status=500, reason="Internal Server Error"), True, id="500"),
    pytest.param(ApiException(status=504, reason="Gateway Timeout"), True, id="504"),
    pytest.param(urllib3.exceptions.ReadTimeoutError(POOL, "/", "timed out"), True,
                 id="read-timeout"),
    pytest.param(urllib3.exceptions.MaxRetryError(
        POOL, "/", urllib3.exceptions.ProtocolError("Connection aborted.")), True,
        id="connection-lost"),
    pytest.param(ApiException(status=429, reason="Too Many Requests"), False, id="429"),
    pytest.param(ApiException(status=403, reason="Forbidden"), False, id="403"),
])
def test_write_errors_are_uncertain_unless_the_api_server_refused(
        error: Exception, uncertain: bool) -> None:
    with pytest.raises(SlotsUnavailableError) as raised:
        KubernetesLeases(FailingApi(error), "ns").create({}, 1.0)
    assert isinstance(raised.value, WriteUncertainError) is uncertain


def test_a_connection_error_names_its_cause() -> None:
    error = urllib3.exceptions.MaxRetryError(POOL, "/apis/x", ConnectionRefusedError("refused"))
    with pytest.raises(SlotsUnavailableError,
                       match=r"^listing PipelineRuns failed: ConnectionRefusedError: refused$"):
        KubernetesRuns(FailingApi(error)).list("a=b", 1.0)


def test_a_lease_body_reaches_the_api_server_as_written() -> None:
    # The client parses a dict body into its V1Lease model and serialises that: the body must
    # come out unchanged (a time field would not: it loses its fraction when that is zero).
    from kubernetes import client

    body = lease_body("n", "mytool", [candidate("a")], {"metadata": {"resourceVersion": "7"}},
                      NOW)
    sent = client.ApiClient().sanitize_for_serialization(client.V1Lease.model_validate(body))
    assert sent == body


def test_the_budgets_fit_the_webhook_timeout_and_the_grace_outlasts_it() -> None:
    # The refusal must reach the API server before its own timeout fires (or the user gets
    # "failed calling webhook" instead of the reason), and a reservation must outlive any review
    # that may still store its run (or a run admitted but not yet stored would lose its slot).
    manifest = (Path(__file__).parents[3] / "manifests" / "base" / "webhook-pipelineruns.yaml")
    timeout = yaml.safe_load(manifest.read_text())["webhooks"][0]["timeoutSeconds"]
    assert timeout - 1 >= DEFAULT_BUDGET_SECONDS + WITHDRAW_BUDGET_SECONDS
    assert RESERVATION_GRACE.total_seconds() > timeout


class OverlapCluster(FakeCluster):
    """Answers a Lease read only once a list is in flight: a claim that reads the Lease and then
    lists, one after the other, waits out the read's 2 s and fails."""

    def __init__(self) -> None:
        super().__init__()
        self.listing = threading.Event()

    def get(self, name: str, timeout: float) -> dict[str, Any] | None:
        if not self.listing.wait(2.0):
            raise SlotsUnavailableError("the Lease was read before the list went out")
        return super().get(name, timeout)

    def list(self, label_selector: str, timeout: float) -> Sequence[Mapping[str, Any]]:
        self.listing.set()
        return super().list(label_selector, timeout)


def test_the_runs_are_listed_while_the_lease_is_read() -> None:
    # One API round trip per attempt instead of two: the PipelineRun webhook's latency.
    cluster = OverlapCluster()
    claim = slots(cluster).claim("mytool", candidate("a"), limit=1, label=LABEL, reserve=True)
    assert claim.fits
    assert cluster.writes == 1
