"""A gunicorn worker killed in the middle of reviews: what the API server sees, and the slots.

What kube-apiserver does (client-go retries only GETs on a lost connection; an admission review
is a POST): a review that the killed worker had read and not answered is not sent again; the API
server fails that one request with `failed calling webhook ...: EOF` (or `connection reset by
peer`) and, as `failurePolicy: Fail` says, refuses the object. Every other review is answered by
the remaining workers, and gunicorn starts a new worker.

The test makes the moment of the kill certain: the fault proxy holds the answer to every Lease
write for a second, so PipelineRun reviews sit in their worker after their reservation was
stored. The worker holding one is stopped (SIGSTOP: it can take no more work), its connections
are read from /proc, and it is killed (SIGKILL). Pods and PipelineRuns keep being created
throughout. Then:

- every create got the suite's verdict, or failed as above; those that failed are no more than
  the connections the API server had open to the killed worker (one review each, HTTP/1.1), and
  include every review whose Lease write the killed worker was waiting on;
- no object was created without the suite's verdict;
- gunicorn replaced the worker, and everything created afterwards is answered;
- the reservations of the runs that died with the worker are the one leak no server can undo
  (written, never answered): each holds its tool's slot (a new run is refused, naming it) until
  its grace has passed, and then frees itself (the new run is admitted).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from policies.slots import RESERVATION_GRACE
from tests.e2e.cluster import BUILD_NAMESPACE, ControlPlane, Suite, wait_for
from tests.e2e.faults import (
    LEASE_WRITE,
    ApiProxy,
    Fault,
    Outcome,
    children,
    create,
    new_tool,
    proxied_suite,
    tcp_connections,
    tool_client,
)
from tests.e2e.objects import (
    TOOL_IMAGE,
    delete_runs,
    pipelinerun,
    pod_manifest,
    reservations,
    unique,
)
from webhooks.slots import lease_name

RUNS_DENIED = 'admission webhook "pipelineruns.toolforge-admission.toolforge.org" denied'
PODS_DENIED = 'admission webhook "pods.toolforge-admission.toolforge.org" denied'
CALL_FAILED = "failed calling webhook"
CONNECTION_LOST = ("EOF", "connection reset by peer", "broken pipe")
EVIL_IMAGE = "docker.io/library/nginx:latest"
POD_LABEL = "e2e-worker-killed"
TOOLS = 8


@pytest.fixture(scope="module")
def proxied(control_plane: ControlPlane, suite: Suite,
            e2e_workdir: pathlib.Path) -> Iterator[tuple[ApiProxy, Suite]]:
    # Threads for every run at once (each holds one for a second on its Lease write), with room
    # left for the pods: no review waits in a queue long enough to meet the API server's timeout.
    with proxied_suite(control_plane, suite, e2e_workdir / "worker-killed",
                       workers=2, threads=TOOLS) as running:
        yield running


def pod(name: str, image: str = TOOL_IMAGE) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(pod_manifest(name, "tool-mytool", image))
    body["metadata"]["labels"] = {POD_LABEL: "yes"}
    return body


def answered(outcome: Outcome, denied: str) -> bool:
    """The suite's verdict reached the API server: created, or refused by a rule."""
    return outcome.created or (outcome.status == 403 and outcome.message.startswith(denied))


def lost_with_the_worker(outcome: Outcome) -> bool:
    """The API server's own refusal: the connection to the webhook broke mid-review."""
    return (outcome.status == 500 and CALL_FAILED in outcome.message
            and outcome.message.rstrip().endswith(CONNECTION_LOST))


class PodTraffic:
    """Threads creating pods (allowed and not) as mytool, until stopped."""

    def __init__(self, kubeconfig: pathlib.Path, threads: int = 3) -> None:
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(kubeconfig, i), daemon=True)
                        for i in range(threads)]

    def __enter__(self) -> PodTraffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, kubeconfig: pathlib.Path, index: int) -> None:
        client = tool_client(kubeconfig)
        count = 0
        while not self.stopping.is_set():
            count += 1
            image = EVIL_IMAGE if count % 4 == 0 else TOOL_IMAGE
            outcome = create(client, pod(unique(f"killed-{index}"), image))
            with self.lock:
                self.outcomes.append(outcome)
            self.stopping.wait(0.05)  # a steady stream, not a flood of stored pods


def stop_a_worker_waiting_on_a_write(proxy: ApiProxy, workers: list[int],
                                     ) -> tuple[int, list[str]]:
    """SIGSTOP a worker while a review of its waits on a held Lease write; return the worker and
    the Leases it wrote and has not heard back about (the writes that die with it)."""
    while True:
        held = wait_for("a review waiting on its Lease write",
                        lambda: [e for e in proxy.seen(LEASE_WRITE) if e.held], 60)
        owners = {pid: {local for local, remote in tcp_connections(pid) if remote == proxy.port}
                  for pid in workers}
        victim = next((pid for pid, ports in owners.items()
                       if any(e.client_port in ports for e in held)), None)
        if victim is None:
            continue  # answered meanwhile: the next one
        os.kill(victim, signal.SIGSTOP)
        # Stopped, it reads nothing more: a write still held now can never be answered to it.
        doomed = [e.lease for e in proxy.seen(LEASE_WRITE)
                  if e.held and e.client_port in owners[victim]]
        if doomed:
            return victim, doomed
        os.kill(victim, signal.SIGCONT)  # its write was answered just before: again


def test_a_killed_worker_fails_only_its_own_reviews_and_leaks_no_slot(
        control_plane: ControlPlane, proxied: tuple[ApiProxy, Suite],
        mytool: pathlib.Path) -> None:
    proxy, suite = proxied
    assert suite.process is not None
    master = suite.process.pid
    workers = children(master)
    assert len(workers) == 2, workers
    tools = dict(new_tool(control_plane) for _ in range(TOOLS))
    clients = {tool: tool_client(kubeconfig) for tool, kubeconfig in tools.items()}
    runs: dict[str, Future[Outcome]] = {}
    try:
        proxy.add(Fault(LEASE_WRITE, "delay_response", seconds=1.0))
        with PodTraffic(mytool) as pods, ThreadPoolExecutor(TOOLS) as pool:
            for tool, client in clients.items():
                runs[tool] = pool.submit(create, client, pipelinerun(unique(f"{tool}-a"), tool))
            victim, doomed_leases = stop_a_worker_waiting_on_a_write(proxy, workers)
            server_side = [remote for local, remote in tcp_connections(victim)
                           if local == suite.port and remote != 0]
            os.kill(victim, signal.SIGKILL)
            first = {tool: future.result(timeout=120) for tool, future in runs.items()}
            # gunicorn notices and starts another worker; pods keep coming meanwhile.
            replaced = wait_for("gunicorn to replace the killed worker", lambda: (
                children(master) if len(children(master)) == 2
                and victim not in children(master) else None), 60)
            proxy.clear()
            after_kill = len(pods.outcomes)
            wait_for("pods created after the new worker started",
                     lambda: len(pods.outcomes) > after_kill + 10, 60)
        print(f"killed worker {victim} (replaced: {replaced}); the API server had "
              f"{len(server_side)} connection(s) to it")

        # Every review was answered by the suite, or lost with the killed worker.
        pod_outcomes = pods.outcomes
        lost = [o for o in [*first.values(), *pod_outcomes] if lost_with_the_worker(o)]
        for outcome in first.values():
            assert answered(outcome, RUNS_DENIED) or lost_with_the_worker(outcome), outcome
        for outcome in pod_outcomes:
            assert answered(outcome, PODS_DENIED) or lost_with_the_worker(outcome), outcome
        lost_runs = [o for o in first.values() if lost_with_the_worker(o)]
        print(f"{len(lost)} of {len(first) + len(pod_outcomes)} creates failed with the worker "
              f"({len(lost_runs)} PipelineRuns, {len(lost) - len(lost_runs)} pods): "
              f"{sorted({o.message.rsplit(': ', 1)[-1] for o in lost})}")
        assert len(lost) <= len(server_side), (lost, server_side)
        # The runs whose Lease write the killed worker was waiting on: not retried, refused.
        doomed = {tool for tool in tools if lease_name(tool) in doomed_leases}
        assert doomed, doomed_leases
        for tool in doomed:
            assert lost_with_the_worker(first[tool]), first[tool]
        # Their reservations were stored and hold the slot (checked at once: within the grace).
        for tool in doomed:
            blocked = create(clients[tool], pipelinerun(unique(f"{tool}-b"), tool))
            assert blocked.status == 403, blocked
            assert f"{BUILD_NAMESPACE}/{first[tool].name}" in blocked.message, blocked
        # After the new worker started, everything is answered.
        for outcome in pod_outcomes[after_kill:]:
            assert answered(outcome, PODS_DENIED), outcome

        # Nothing exists without the suite's verdict.
        stored = {item["metadata"]["name"] for item in control_plane.get_json(
            "-n", "tool-mytool", "pods", "-l", POD_LABEL)["items"]}
        assert stored == {o.name for o in pod_outcomes if o.created}
        for tool, outcome in first.items():
            names = run_names(control_plane, tool)
            assert names == ([outcome.name] if outcome.created else []), (tool, outcome)

        # Slots: an admitted run holds its own; a run lost with the worker after its write holds
        # one it never uses (written, never answered): every run the killed worker was waiting
        # on, and perhaps one that died between its write's answer and its own answer.
        leaked = set()
        for tool, outcome in first.items():
            held = [r["name"] for r in reservations(control_plane, tool)]
            if outcome.created:
                assert held == [outcome.name], (tool, held, outcome)
            elif held:
                assert held == [outcome.name], (tool, held, outcome)
                assert lost_with_the_worker(outcome), outcome  # a refusal withdraws its own
                leaked.add(tool)
        assert doomed <= leaked, (doomed, leaked)
        # ...until its grace has passed: then the slot frees itself.
        latest = max(datetime.datetime.fromisoformat(r["at"])
                     for tool in leaked for r in reservations(control_plane, tool))
        wait_for("the grace of the lost runs' reservations",
                 lambda: datetime.datetime.now(datetime.UTC)
                 > latest + RESERVATION_GRACE + datetime.timedelta(seconds=1),
                 RESERVATION_GRACE.total_seconds() + 30, interval=1)
        for tool in leaked:
            freed = create(clients[tool], pipelinerun(unique(f"{tool}-c"), tool))
            assert freed.created, freed
            assert [r["name"] for r in reservations(control_plane, tool)] == [freed.name]
    finally:
        proxy.clear()
        for tool in tools:
            delete_runs(control_plane, tool)
        control_plane.kubectl("-n", "tool-mytool", "delete", "pods", "-l", POD_LABEL,
                              "--wait=false", check=False)


def run_names(control_plane: ControlPlane, tool: str) -> list[str]:
    items = control_plane.get_json("pipelineruns", "--all-namespaces", "-l",
                                   f"toolforge.org/tool={tool}")["items"]
    return sorted(item["metadata"]["name"] for item in items)
