"""The active-run check when the API server misbehaves: a clear refusal in time, no slot kept.

The suite of this module reaches the API server through the fault proxy (`faults.py`); the tool
creates its PipelineRun through the real API server, which calls the suite as usual. Only the
suite's own calls (read the Lease, list the runs, write the Lease) see the fault.

For every fault the contract is the same:
- the API server gets the suite's refusal (not its own "failed calling webhook"), and within the
  webhook's timeout: the suite's deadline (2.5 s, plus 1 s to withdraw a write that may have
  landed) fits inside the 5 s `timeoutSeconds` of the manifests;
- the message says the check could not be made and to try again;
- once the fault is gone, the tool's Lease holds no reservation for the refused run, and a new
  run is admitted.

A reservation whose answer never reached the API server (the worker died after the write) is the
one the suite cannot withdraw; `test_worker_killed.py` shows it freeing itself after the grace.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.cluster import BUILD_NAMESPACE, SUITE_NAMESPACE, ControlPlane, Suite
from tests.e2e.faults import (
    ANY,
    LEASE_READ,
    LEASE_WRITE,
    RUNS_LIST,
    ApiProxy,
    Fault,
    Outcome,
    create,
    new_tool,
    proxied_suite,
    tool_client,
    webhook_timeout,
)
from tests.e2e.objects import delete_runs, pipelinerun, reservations, unique
from webhooks.slots import lease_body, lease_name

DENIED = 'admission webhook "pipelineruns.toolforge-admission.toolforge.org" denied the request'
SLOW = 4.0  # seconds: beyond the suite's 2.5 s budget, within the webhook's 5 s


@pytest.fixture(scope="module")
def proxied(control_plane: ControlPlane, suite: Suite,
            e2e_workdir: pathlib.Path) -> Iterator[tuple[ApiProxy, Suite]]:
    with proxied_suite(control_plane, suite, e2e_workdir / "faults-apiserver") as running:
        yield running


@pytest.fixture
def proxy(proxied: tuple[ApiProxy, Suite]) -> Iterator[ApiProxy]:
    """The proxy, with no fault left at the end of the test (and nothing still held)."""
    running, _ = proxied
    yield running
    running.clear()
    running.accept()
    running.wait_idle()


@pytest.fixture
def tool(control_plane: ControlPlane) -> Iterator[tuple[str, Any]]:
    """A fresh tool and an API client with its credentials."""
    name, kubeconfig = new_tool(control_plane)
    yield name, tool_client(kubeconfig)
    delete_runs(control_plane, name)


def refused_in_time(outcome: Outcome, tool: str) -> None:
    """The suite's refusal for lack of the check, inside the webhook's timeout."""
    assert outcome.status == 403, outcome
    assert outcome.message.startswith(DENIED), outcome
    assert (f"could not check how many PipelineRuns the tool {tool} has running, so this run "
            "was not created: try again in a minute") in outcome.message, outcome
    assert outcome.seconds < webhook_timeout(), outcome


def no_reservation_left(control_plane: ControlPlane, proxy: ApiProxy, tool: str,
                        refused: str, client: Any) -> None:
    """Once the fault is gone: the refused run holds no slot, and a new run is admitted."""
    proxy.clear()
    proxy.accept()
    proxy.wait_idle()  # requests still held (a late write) have reached the API server
    assert refused not in [r["name"] for r in reservations(control_plane, tool)]
    assert control_plane.get_json("-n", BUILD_NAMESPACE, "pipelineruns", "-l",
                                  f"toolforge.org/tool={tool}")["items"] == []
    after = create(client, pipelinerun(unique(f"{tool}-after"), tool))
    assert after.created, after
    assert [r["name"] for r in reservations(control_plane, tool)] == [after.name]


def refuse_connections(proxy: ApiProxy) -> None:
    proxy.refuse()


def faults(*rules: Fault) -> Callable[[ApiProxy], None]:
    def inject(proxy: ApiProxy) -> None:
        for rule in rules:
            proxy.add(rule)
    return inject


@pytest.mark.parametrize(("inject", "cause"), [
    pytest.param(faults(Fault(ANY, "delay_request", seconds=SLOW)), "timed out",
                 id="slow-beyond-the-budget"),
    pytest.param(refuse_connections, "Connection refused", id="unreachable"),
    # All 8 attempts conflict, or (on a loaded host) the budget runs out first.
    pytest.param(faults(Fault(LEASE_WRITE, "status", 409)),
                 "kept conflicting with others after 8 attempts|did not answer within 2.5 s",
                 id="409-on-every-lease-write"),
    pytest.param(faults(Fault(LEASE_WRITE, "status", 429)),
                 "writing failed: HTTP 429 Too Many Requests", id="429-on-lease-writes"),
    pytest.param(faults(Fault(ANY, "status", 429)),
                 "reading failed: HTTP 429 Too Many Requests", id="429-on-everything"),
    pytest.param(faults(Fault(RUNS_LIST, "status", 500)),
                 "listing PipelineRuns failed: HTTP 500 Internal Server Error",
                 id="500-on-list-pipelineruns"),
    pytest.param(faults(Fault(LEASE_READ, "status", 500)),
                 "reading failed: HTTP 500 Internal Server Error", id="500-on-get-lease"),
])
def test_a_fault_during_the_check_is_a_clear_refusal_in_time_and_leaves_no_slot(
        control_plane: ControlPlane, proxy: ApiProxy, tool: tuple[str, Any],
        inject: Callable[[ApiProxy], None], cause: str) -> None:
    name, client = tool
    inject(proxy)
    outcome = create(client, pipelinerun(unique(f"{name}-refused"), name))
    refused_in_time(outcome, name)
    assert re.search(cause, outcome.message), outcome
    no_reservation_left(control_plane, proxy, name, outcome.name, client)


def test_a_lease_write_applied_but_answered_too_late_is_withdrawn(
        control_plane: ControlPlane, proxy: ApiProxy, tool: tuple[str, Any]) -> None:
    # The API server stores the reservation, but its answer comes after the suite gave up: the
    # suite cannot know, so it takes the reservation back before refusing.
    name, client = tool
    mark = proxy.mark()
    proxy.add(Fault(LEASE_WRITE, "delay_response", seconds=SLOW, times=1))
    outcome = create(client, pipelinerun(unique(f"{name}-refused"), name))
    refused_in_time(outcome, name)
    assert "writing failed: ReadTimeoutError" in outcome.message, outcome
    writes = proxy.seen(LEASE_WRITE, since=mark)
    assert writes[0].upstream_status == 201, writes  # the reservation was stored...
    assert len(writes) == 2, writes  # ...and the suite wrote the Lease again, without it
    no_reservation_left(control_plane, proxy, name, outcome.name, client)


@pytest.mark.parametrize("existing", [
    pytest.param(False, id="late-create"),
    pytest.param(True, id="late-replace"),
])
def test_a_lease_write_reaching_the_api_server_after_the_refusal_is_fenced_off(
        control_plane: ControlPlane, proxy: ApiProxy, tool: tuple[str, Any],
        existing: bool) -> None:
    # The write is still on its way when the suite gives up and withdraws: the withdrawal's own
    # write changes the Lease (its write time, when there is no reservation to remove yet), so
    # the late write fails its precondition instead of landing.
    name, client = tool
    if existing:  # the tool has built before: its Lease exists, with no reservation in it
        lease = lease_body(lease_name(name), name, [], None,
                           datetime.datetime.now(datetime.UTC))
        control_plane.kubectl("-n", SUITE_NAMESPACE, "create", "-f", "-",
                              input=json.dumps(lease))
    mark = proxy.mark()
    proxy.add(Fault(LEASE_WRITE, "delay_request", seconds=SLOW, times=1))
    outcome = create(client, pipelinerun(unique(f"{name}-refused"), name))
    refused_in_time(outcome, name)
    proxy.wait_idle()
    late = proxy.seen(LEASE_WRITE, since=mark)[0]
    assert late.fault.startswith("delay_request"), late
    assert late.upstream_status == 409, late  # refused by the API server: no reservation
    no_reservation_left(control_plane, proxy, name, outcome.name, client)


def test_a_single_conflict_is_retried_and_the_run_admitted(
        control_plane: ControlPlane, proxy: ApiProxy, tool: tuple[str, Any]) -> None:
    name, client = tool
    mark = proxy.mark()
    proxy.add(Fault(LEASE_WRITE, "status", 409, times=1))
    outcome = create(client, pipelinerun(unique(f"{name}-admitted"), name))
    assert outcome.created, outcome
    writes = proxy.seen(LEASE_WRITE, since=mark)
    assert [w.upstream_status for w in writes] == [None, 201], writes  # injected 409, then a write
    assert [r["name"] for r in reservations(control_plane, name)] == [outcome.name]
