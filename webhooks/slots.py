"""Active-run slots kept in the cluster, with the API server as the arbiter.

Each tool has one `coordination.k8s.io/v1` Lease in the suite's namespace. Its annotation holds
the reservations of admitted runs. A claim reads the Lease and lists the tool's PipelineRuns (by
the tool label, in every namespace), lets `policies.slots.claim_slot` decide, and writes the new
reservations back with the Lease's resourceVersion as a precondition: when two replicas (or two
workers) claim at once, one write wins and the other gets 409 Conflict, reads again and decides
again. So at most N runs are ever admitted, however many requests arrive together.

Everything is bounded by one deadline (`DEFAULT_BUDGET_SECONDS`), well inside the webhook's
timeout. When the API server cannot be reached, errors or is too slow, `SlotsUnavailableError` is
raised and the rule refuses the run (fail closed).

A refused run must not keep a slot. A Lease write that failed without saying whether it was
applied (a timeout, a lost connection, a 5xx) may have stored the reservation all the same, so
the claim then withdraws it (`WITHDRAW_BUDGET_SECONDS` more, still inside the timeout) before it
refuses. What no server can undo is a write whose answer never reached the API server (the
worker died after it, or the API server gave up waiting): that reservation holds the slot until
its grace (`policies.slots.RESERVATION_GRACE`) has passed, and then frees itself.

RBAC the ServiceAccount needs: list `pipelineruns.tekton.dev` in all namespaces (runs live in the
build namespace and tools' namespaces), and get/create/update `leases.coordination.k8s.io` in its
own namespace.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any, Protocol

from policies.slots import Claim, Reservation, claim_slot, listed_run
from webhooks.cluster import api_client, unavailable

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "toolforge-admission"
DEFAULT_BUDGET_SECONDS = 2.5
WITHDRAW_BUDGET_SECONDS = 1.0
"""After a failed claim; with the claim's budget, 3.5 s: inside the webhook's 5 s timeout."""
MAX_ATTEMPTS = 8
LIST_THREADS = 8
"""Lists in flight at once per worker; more wait their turn (a worker has 2 request threads)."""
RESERVATIONS_ANNOTATION = "toolforge.org/reservations"
TOOL_ANNOTATION = "toolforge.org/tool"
WRITTEN_ANNOTATION = "toolforge.org/written-at"
LEASE_PREFIX = "pipelineruns-"
MANAGED_BY = {"app.kubernetes.io/managed-by": "toolforge-admission"}


class SlotsUnavailableError(Exception):
    """The cluster could not say whether a run fits (unreachable, an error, or too slow)."""


class WriteUncertainError(SlotsUnavailableError):
    """A Lease write failed without saying whether the API server applied it."""


class ConflictError(Exception):
    """A write lost against a concurrent one (HTTP 409): read again and retry."""


class LeaseStore(Protocol):
    """Leases in one namespace, as plain dicts; `timeout` bounds each call in seconds."""

    def get(self, name: str, timeout: float) -> dict[str, Any] | None: ...

    def create(self, body: dict[str, Any], timeout: float) -> None: ...

    def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
        """Write `body`; raise ConflictError unless its resourceVersion is still current."""


class RunLister(Protocol):
    """PipelineRuns in all namespaces, selected by label."""

    def list(self, label_selector: str, timeout: float) -> Sequence[Mapping[str, Any]]: ...


def lease_name(tool: str) -> str:
    """A valid object name for a tool's Lease; tool names may hold `_` and be 256 long."""
    readable = re.sub(r"[^a-z0-9-]", "-", tool.lower())[:200].strip("-")
    digest = hashlib.sha256(tool.encode()).hexdigest()[:10]
    return f"{LEASE_PREFIX}{readable}-{digest}"


class LeaseSlots:
    """Claims active-run slots for tools, in Leases updated with optimistic concurrency."""

    def __init__(self, leases: LeaseStore, runs: RunLister, *,
                 budget_seconds: float = DEFAULT_BUDGET_SECONDS,
                 withdraw_budget_seconds: float = WITHDRAW_BUDGET_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
                     datetime.UTC)) -> None:
        self.leases = leases
        self.runs = runs
        self.budget_seconds = budget_seconds
        self.withdraw_budget_seconds = withdraw_budget_seconds
        self._monotonic = monotonic
        self._sleep = sleep
        self._clock = clock
        # The list goes out while the Lease is read: one API round trip per attempt instead of
        # two. Their order does not matter: a reservation is dropped only once it is past its
        # grace (30 s, far beyond one claim's budget) and its run is not active, so a list made
        # just before a run is stored never meets a Lease that already forgot that run.
        self._lister = futures.ThreadPoolExecutor(max_workers=LIST_THREADS,
                                                  thread_name_prefix="slots-list")

    def claim(self, tool: str, candidate: Reservation, *, limit: int, label: str,
              reserve: bool) -> Claim:
        """Decide whether `candidate` fits; when it does and `reserve` is set, record it."""
        budget = self.budget_seconds
        deadline = self._monotonic() + budget
        name = lease_name(tool)
        for attempt in range(MAX_ATTEMPTS):
            listing = self._lister.submit(self.runs.list, f"{label}={tool}",
                                          self._remaining(deadline, budget))
            lease = self.leases.get(name, self._remaining(deadline, budget))
            listed = listing.result()
            claim = claim_slot(candidate, read_reservations(lease),
                               [listed_run(run) for run in listed], limit=limit,
                               now=candidate.reserved_at)
            if not (reserve and claim.fits and claim.changed):
                return claim
            body = lease_body(name, tool, claim.reservations, lease, candidate.reserved_at)
            try:
                self._write(name, body, lease, self._remaining(deadline, budget))
            except ConflictError:
                if attempt + 1 < MAX_ATTEMPTS:  # no pause before giving up
                    pause = min(0.01 * 2**attempt + random.uniform(0, 0.02),  # noqa: S311
                                self._remaining(deadline, budget) / 2)
                    self._sleep(pause)
                continue
            except WriteUncertainError:
                self._withdraw(name, tool, candidate)
                raise
            return claim
        raise SlotsUnavailableError(f"the reservation for tool {tool} kept conflicting with "
                                    f"others after {MAX_ATTEMPTS} attempts")

    def _withdraw(self, name: str, tool: str, candidate: Reservation) -> None:
        """Leave no reservation of `candidate` behind, after a write that may have landed.

        The Lease is read and written back without the candidate, with a new write time, so the
        write always changes it: a late copy of the claim's own write, still on its way through
        the API server with the resourceVersion read before, then fails its precondition instead
        of landing afterwards. Best effort: when this fails too, the grace frees the slot.
        """
        budget = self.withdraw_budget_seconds
        deadline = self._monotonic() + budget
        try:
            for _ in range(MAX_ATTEMPTS):
                lease = self.leases.get(name, self._remaining(deadline, budget))
                kept = [r for r in read_reservations(lease) if r.key != candidate.key]
                body = lease_body(name, tool, kept, lease, self._clock())
                try:
                    self._write(name, body, lease, self._remaining(deadline, budget))
                except ConflictError:
                    continue
                logger.info("reservation withdrawn", extra={"fields": {
                    "tool": tool, "run": candidate.key}})
                return
            raise SlotsUnavailableError(f"kept conflicting after {MAX_ATTEMPTS} attempts")
        except SlotsUnavailableError as error:
            logger.warning("reservation not withdrawn; it frees the slot after the grace",
                           extra={"fields": {"tool": tool, "run": candidate.key,
                                             "error": str(error)}})

    def _write(self, name: str, body: dict[str, Any], current: Mapping[str, Any] | None,
               timeout: float) -> None:
        if current is None:
            self.leases.create(body, timeout)
        else:
            self.leases.replace(name, body, timeout)

    def _remaining(self, deadline: float, budget: float) -> float:
        left = deadline - self._monotonic()
        if left <= 0:
            raise SlotsUnavailableError(f"the API server did not answer within {budget:g} s")
        return left


def read_reservations(lease: Mapping[str, Any] | None) -> tuple[Reservation, ...]:
    """The reservations stored in a Lease; entries that do not parse are dropped."""
    if lease is None:
        return ()
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(RESERVATIONS_ANNOTATION)
    if not text:
        return ()
    try:
        entries = json.loads(text)
    except ValueError:
        logger.warning("unreadable reservations dropped", extra={"fields": {"text": text[:200]}})
        return ()
    found = []
    for entry in entries if isinstance(entries, list) else ():
        try:
            found.append(Reservation(
                uid=str(entry["uid"]), namespace=str(entry["namespace"]),
                name=str(entry["name"]),
                reserved_at=datetime.datetime.fromisoformat(entry["at"])))
        except (KeyError, TypeError, ValueError):
            logger.warning("unreadable reservation dropped", extra={"fields": {"entry": entry}})
    return tuple(found)


def lease_body(name: str, tool: str, reservations: Sequence[Reservation],
               current: Mapping[str, Any] | None, written_at: datetime.datetime,
               ) -> dict[str, Any]:
    """The Lease to write; with `current`, it carries its resourceVersion as the precondition.

    The time of the write goes in an annotation: it makes every write a change (the API server
    keeps the resourceVersion of a write that changes nothing), which the withdrawal relies on.
    Not in spec.renewTime: the client parses a dict body into its model and writes that time
    back without the fraction when it is zero, which the API server refuses.
    """
    entries = [{"uid": r.uid, "namespace": r.namespace, "name": r.name,
                "at": r.reserved_at.isoformat()} for r in reservations]
    metadata: dict[str, Any] = {
        "name": name,
        "labels": dict(MANAGED_BY),
        "annotations": {TOOL_ANNOTATION: tool,
                        RESERVATIONS_ANNOTATION: json.dumps(entries, separators=(",", ":")),
                        WRITTEN_ANNOTATION: micro_time(written_at)},
    }
    if current is not None:
        metadata["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": "toolforge-admission"}}


def micro_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with six fractional digits (as Kubernetes' MicroTime)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- The kubernetes client adapters ---------------------------------------------------------


class KubernetesLeases:
    """LeaseStore over the kubernetes client's CoordinationV1Api."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def get(self, name: str, timeout: float) -> dict[str, Any] | None:
        try:
            response = self.api.read_namespaced_lease(name, self.namespace,
                                                      _preload_content=False,
                                                      _request_timeout=timeout)
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return None
            raise _unavailable("reading", error) from error
        return _json(response)

    def create(self, body: dict[str, Any], timeout: float) -> None:
        self._write(lambda: self.api.create_namespaced_lease(
            self.namespace, body, _preload_content=False, _request_timeout=timeout))

    def replace(self, name: str, body: dict[str, Any], timeout: float) -> None:
        self._write(lambda: self.api.replace_namespaced_lease(
            name, self.namespace, body, _preload_content=False, _request_timeout=timeout))

    @staticmethod
    def _write(call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as error:
            status = getattr(error, "status", None)
            if status == 409:
                raise ConflictError(str(error)) from error
            # A 4xx is a refusal: nothing was stored. A timeout, a lost connection or a 5xx
            # (an etcd timeout, say) may come after the write was applied.
            if isinstance(status, int) and status < 500:
                raise _unavailable("writing", error) from error
            raise _unavailable("writing", error, WriteUncertainError) from error


class KubernetesRuns:
    """RunLister over the kubernetes client's CustomObjectsApi (tekton.dev/v1)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def list(self, label_selector: str, timeout: float) -> Sequence[Mapping[str, Any]]:
        try:
            response = self.api.list_cluster_custom_object(
                "tekton.dev", "v1", "pipelineruns", label_selector=label_selector,
                _preload_content=False, _request_timeout=timeout)
        except Exception as error:
            raise _unavailable("listing PipelineRuns", error) from error
        items = _json(response).get("items")
        return items if isinstance(items, list) else []


def from_environment() -> LeaseSlots:
    """The real slots: in-cluster config (or KUBECONFIG), Leases in $POD_NAMESPACE.

    Call it in each worker process, after gunicorn forks: the client's connection pool must not
    be shared between processes.
    """
    from kubernetes import client  # noqa: PLC0415 - only the service needs the client

    api = api_client()
    namespace = os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
    return LeaseSlots(KubernetesLeases(client.CoordinationV1Api(api), namespace),
                      KubernetesRuns(client.CustomObjectsApi(api)))


def _json(response: Any) -> dict[str, Any]:
    data = json.loads(response.data)
    return data if isinstance(data, dict) else {}


def _unavailable(action: str, error: Exception,
                 kind: type[SlotsUnavailableError] = SlotsUnavailableError,
                 ) -> SlotsUnavailableError:
    return unavailable(action, error, kind)
