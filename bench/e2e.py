"""End-to-end benchmark: pod creates through a real kube-apiserver, with the suite, with what
users would pick instead, and with no admission policy at all.

    .venv/bin/python bench/e2e.py                      # also run by `make bench` (bench/run.py)
    .venv/bin/python bench/e2e.py --quick              # 1 round of 300 creates: a smoke run

As Kyverno publishes its numbers: the control plane of the e2e harness (tests/e2e/cluster.py:
etcd, kube-apiserver, kube-controller-manager; binaries from tests/e2e/build.py) and the suite
started by `Suite` exactly as the e2e tests run it (gunicorn over TLS with the harness's workers
and threads, mutual TLS, the active-run check against this API server). Then:

- pods: N clients (default 50), each on its own kept-alive HTTPS connection as the tool mytool
  (client certificate CN=mytool, O=toolforge), create a realistic tool pod (3 containers, 2 init
  containers, probes, env, volumes; images from the tool's Harbor project) in tool-mytool, a
  fixed number per round, in these modes:
  - `none`: no admission policy for pods;
  - `suite`: the project's webhook configurations registered;
  - `goref`: only the pods configuration of manifests/base/webhook-pods.yaml, pointed at
    bench/goref (the Go stdlib reference of the same registry check): what any webhook doing
    this check costs here;
  - `vap`: the same allow-list as a ValidatingAdmissionPolicy (CEL in the API server, no
    webhook: the floor for any policy); bench/peers.py;
  - `kyverno`: Kyverno v1.19.1's admission controller (built by bench/kyverno.py, run out of
    the cluster on loopback) with a restrict-image-registries ClusterPolicy for the same
    prefixes; bench/peers.py says how it runs.
  Before measuring, each mode must refuse and admit the sample pods of bench/peers.py as the
  suite does (dry-run creates). Modes are interleaved over rounds (the order rotates: none,
  suite, goref, vap, kyverno; then suite, goref, vap, kyverno, none; ...) so drift in the
  machine's load hits all. Each mode starts with a warm-up, and the pods are deleted between
  modes. Two regimes, one after the other: the closed loop (each client creates as soon as its
  last create returned: saturation) and the open loop (creates paced at `--rate` per second,
  by default half of what `none` reached in the closed loop of the same run: below
  saturation). Reported per regime, mode and round, and pooled: p50/p90/p99/p99.9 of the
  client-side create latency (request sent to response read), creates/s, errors, the ratios to
  `none`, the CPU of each process per create, the webhook's RSS, and the API server's own count
  of its webhook calls (or of its ValidatingAdmissionPolicy checks) by answer; plus the suite's
  own review time (duration_ms of its log) in `suite` mode; and each regime's targets, met, not
  met or not judged (a mode they need left out), by bench/targets.py: in the open loop the
  suite's p99 within x1.10 of `none`'s, pooled and in every round; in the closed loop the
  suite's p99 at or below goref's and at or below Kyverno's.
- pipelineruns: with the suite registered, the builds API's ServiceAccount creates runs for many
  tools at C concurrent clients (default 8): per tool one run (admitted: the check lists the
  tool's runs and writes its Lease) and a second (denied: the limit is 1). Reported: the client
  latency and the suite's duration_ms, p50/p99, for admitted and denied.

The Tekton controller is stopped after the install: the benchmark measures admission, and the
controller would turn every admitted run into a TaskRun and a build pod on the same two cores.
goref is built as run.py builds it and serves the suite's certificate; like the suite and
Kyverno it is not pinned, and its GOMAXPROCS is the CPU count (Go's default without a CPU
limit). The webhooks of the modes not being measured stay running, idle (their CPU is in every
row). Writes bench/results/e2e-latest.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from tests.e2e.build import ensure_binaries  # noqa: E402
from tests.e2e.cluster import (  # noqa: E402
    TEST_POLICY,
    ControlPlane,
    Suite,
    ensure_namespaces,
    point_at,
    project_webhook_configurations,
)
from tests.e2e.objects import pipelinerun  # noqa: E402
from tests.e2e.traffic import (  # noqa: E402
    Client,
    LogWindow,
    admin,
    builds_api_client,
    children,
    count,
    cpu_seconds,
    delete_all,
    percentile,
    pods_path,
    rss_mb,
    runs_path,
    tool_client,
)

import payloads  # noqa: E402
import peers  # noqa: E402
import targets  # noqa: E402
from run import build_go, go_config, machine, plot, start_go  # noqa: E402

RESULTS = BENCH / "results"
TOOL = payloads.TOOL
NAMESPACE = payloads.NAMESPACE
QUANTILES = (50, 90, 99, 99.9)
ADMIN_TIMEOUT = 600
"""Seconds the admin's requests may take, and clearing a round's pods (`clear`)."""
MODES = {"none": "no policy", "suite": "suite (webhook)", "goref": "Go reference (webhook)",
         "vap": "ValidatingAdmissionPolicy (CEL, in the API server)",
         "kyverno": f"Kyverno {peers.KYVERNO_VERSION} (webhook)"}
REGIMES = {"closed": "closed loop (saturation)", "open": "open loop (paced, below saturation)"}
PODS_CONFIGURATION = "toolforge-admission-pods"
PODS_WEBHOOK = "pods.toolforge-admission.toolforge.org"
# How each mode's refusal of the probe pod reads: a switch is confirmed by its own refusal.
REFUSED_BY = {"suite": f'admission webhook "{PODS_WEBHOOK}" denied the request',
              "goref": f'admission webhook "{PODS_WEBHOOK}" denied the request',
              "vap": f"ValidatingAdmissionPolicy '{peers.VAP_NAME}'",
              "kyverno": f'admission webhook "{peers.KYVERNO_WEBHOOK}" denied the request'}
# A webhook's denial is 403 (the suite, goref: status.code 403) or 400 (Kyverno answers with code
# 400); a ValidatingAdmissionPolicy's is 403 with reason Forbidden (422 with reason Invalid).
REFUSALS = (400, 403, 422)
PROBE = peers.Sample("probe", ("docker.io/library/nginx:1",), refused=True)


def pod_template() -> bytes:
    """The pod of payloads.py (a tool's webservice), as a client submits it, encoded once: no
    owner (the garbage collector would delete pods of a ReplicaSet that does not exist), no
    managedFields, a fixed name (NAME, replaced per create) instead of a generated one. Encoding
    it once keeps the client's CPU per create small beside the API server's."""
    pod = payloads.tool_pod_review()["request"]["object"]
    metadata = pod["metadata"]
    for key in ("generateName", "ownerReferences", "managedFields"):
        metadata.pop(key, None)
    metadata["name"] = "NAME"
    metadata["labels"]["bench"] = "e2e"
    pod.pop("status", None)
    return json.dumps(pod, separators=(",", ":")).encode()


TEMPLATE = pod_template()


def tool_pod(name: str) -> bytes:
    return TEMPLATE.replace(b'"name":"NAME"', f'"name":"{name}"'.encode(), 1)


# -- processes --------------------------------------------------------------------------------

class Cpu:
    """CPU seconds of the named processes, of this process, and of the whole machine."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def sample(self) -> dict[str, float]:
        out = {name: cpu_seconds(pids()) for name, pids in self.groups.items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["client"] = usage.ru_utime + usage.ru_stime
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        out["machine"] = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        return out

    def rss(self) -> dict[str, float]:
        """Resident memory (MB) of each group, its processes summed; and for the suite its
        largest gunicorn worker alone (the target is per worker)."""
        out = {name: round(sum(rss_mb(pid) for pid in pids()), 1)
               for name, pids in self.groups.items() if pids()}
        workers = self.groups["suite"]()[1:]
        if workers:
            out["suite worker"] = round(max(rss_mb(pid) for pid in workers), 1)
        return out

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], wall: float,
              ) -> dict[str, float]:
        used = {k: (after[k] - before[k]) / wall for k in before}
        ours = sum(v for k, v in used.items() if k != "machine")
        used["other"] = max(0.0, used.pop("machine") - ours)
        return {k: round(v, 3) for k, v in used.items()}


def run_parallel(clients: int, total: int, task: Callable[[int], Any],
                 pool: ThreadPoolExecutor, rate: float = 0) -> tuple[list[Any], float]:
    """`total` calls of task(i) from `clients` threads of `pool`; results and wall seconds.
    With a rate, the i-th call is due at i/rate seconds (open loop) instead of as soon as a
    client is free (closed loop), and each result comes as (result, lag): the seconds the call
    started after it was due, because every client was still busy. A create's latency in the
    open loop counts from when it was due (as wrk2 does), so a mode that cannot keep up with
    the rate shows it instead of slowing the schedule down."""
    counter = itertools.count()
    results: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    began = 0.0

    def client() -> None:
        start.wait()
        while (i := next(counter)) < total:
            lag = 0.0
            if rate:
                due = began + i / rate
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                else:
                    lag = now - due
            result = task(i)
            with lock:
                results.append((result, lag) if rate else result)

    futures = [pool.submit(client) for _ in range(clients)]
    began = time.perf_counter()
    start.wait()
    for future in futures:
        future.result()
    return results, time.perf_counter() - began


def quantiles(ms: list[float]) -> dict[str, float]:
    return {f"p{q:g}_ms": round(percentile(ms, q), 2) for q in QUANTILES}


def time_wait(port: int, *, by_server: bool = False) -> set[tuple[str, str]]:
    """TCP connections to or from `port` in TIME_WAIT (state 06), by their two addresses: those
    closed in the last 60 s. The API server keeps a limited number of idle connections per
    webhook host; beyond that each review pays a new (mutual) TLS handshake. The connections
    closed during a window are those in TIME_WAIT at its end that were not at its start. With
    `by_server`, only those the server closed (TIME_WAIT is on the side that closed first: here,
    its port is the local one)."""
    found: set[tuple[str, str]] = set()
    if not port:
        return found
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local = int(fields[1].rsplit(":", 1)[1], 16)
            ports = {local, int(fields[2].rsplit(":", 1)[1], 16)}
            if fields[3] == "06" and port in ports and (local == port or not by_server):
                found.add((fields[1], fields[2]))
    return found


class OpenConnections:
    """Samples (every SAMPLE_SECONDS, in a thread) how many connections the server on `port`
    holds, and how many distinct ones it held over the run. A sample reads the machine's whole
    TCP table (about 2.5 ms of this process's CPU for 350 sockets), so it runs in every mode,
    with port 0 (no webhook: nothing matches) too: the client's CPU, on the cores it shares
    with what it measures, is then the same whatever the mode. At 20 ms it took about 0.13 of a
    core, in the webhook modes only."""

    SAMPLE_SECONDS = 0.1

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[int] = []
        self.peers: set[str] = set()
        self.first: set[str] | None = None
        self.last: set[str] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OpenConnections:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        local = f":{self.port:04X} "
        while not self.stopping.wait(self.SAMPLE_SECONDS):
            count = 0
            now: set[str] = set()
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    text = Path(table).read_text()
                except OSError:
                    continue
                for line in text.splitlines()[1:]:
                    fields = line.split()
                    if fields[3] == "01" and (fields[1] + " ").endswith(local):
                        count += 1
                        now.add(fields[2])
            self.samples.append(count)
            self.peers |= now
            self.last = now
            if self.first is None:
                self.first = now

    def summary(self) -> dict[str, float]:
        samples = self.samples or [0]
        # Connections opened and closed meanwhile, by the client ends seen: whichever side
        # closed, and however (a close that resets leaves no TIME_WAIT to count).
        return {"peak": max(samples), "mean": round(statistics.fmean(samples), 1),
                "opened": len(self.peers - (self.first or set())),
                "closed": len(self.peers - self.last)}


def suite_closes(suite: Suite) -> Counter[str]:
    """The connections the suite says it closed, by reason (its own metric)."""
    closed: Counter[str] = Counter()
    for line in suite.metrics().splitlines():
        if line.startswith("toolforge_admission_connections_closed_total{"):
            reason = re.search(r'reason="([^"]*)"', line)
            closed[reason.group(1) if reason else "?"] += round(float(line.rsplit(" ", 1)[1]))
    return closed


def latency_summary(seconds: list[float]) -> dict[str, float]:
    return quantiles([s * 1000 for s in seconds])


VAP_PLUGIN = "ValidatingAdmissionPolicy plugin, every CREATE"


def admission_calls(client: Client, mode: str) -> dict[str, float]:
    """The API server's own count of its admission calls for CREATE, from its metrics: to each
    webhook by `<name> <HTTP code> allowed|rejected` (apiserver_admission_webhook_request_total),
    with under "seconds" the time they took as it measures them (the sum of
    apiserver_admission_webhook_admission_duration_seconds). In `vap` mode, the policy's
    refusals (apiserver_validating_admission_policy_check_total: the API server counts a
    policy's checks only when it refuses or fails, never an admission), and the
    ValidatingAdmissionPolicy admission plugin's own calls and time
    (apiserver_admission_controller_admission_duration_seconds: every CREATE of the window, the
    pods and whatever kube-controller-manager created meanwhile)."""
    out: dict[str, float] = {}
    for line in client.request("GET", "/metrics").raw.decode().splitlines():
        if not line.startswith(("apiserver_admission_", "apiserver_validating_admission_")):
            continue
        labels, _, value = line.rpartition(" ")
        labels_of = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if labels_of.get("operation", "CREATE") != "CREATE":
            continue
        metric = labels.partition("{")[0]
        key = None
        if metric == "apiserver_admission_webhook_request_total":
            answer = "rejected" if labels_of.get("rejected") == "true" else "allowed"
            key = f"{labels_of.get('name')} {labels_of.get('code')} {answer}"
        elif metric == "apiserver_admission_webhook_admission_duration_seconds_sum":
            key = "seconds"
        elif mode == "vap" and metric == "apiserver_validating_admission_policy_check_total":
            key = (f"{labels_of.get('policy')} {labels_of.get('enforcement_action')} "
                   f"{labels_of.get('error_type')}")
        elif mode == "vap" and labels_of.get("name") == "ValidatingAdmissionPolicy" \
                and labels_of.get("type") == "validate":
            if metric == "apiserver_admission_controller_admission_duration_seconds_count":
                key = VAP_PLUGIN
            elif metric == "apiserver_admission_controller_admission_duration_seconds_sum":
                key = "seconds"
        if key is not None:
            out[key] = out.get(key, 0) + float(value)
    return out


# -- switching modes --------------------------------------------------------------------------

def probe(tool: Client, sample: peers.Sample = PROBE) -> tuple[int, str]:
    response = tool.create(pods_path(NAMESPACE), peers.sample_pod(sample, NAMESPACE),
                           dry_run=True)
    return response.status, response.message


def wait_mode(env: dict[str, Any], mode: str, timeout: float = 120) -> None:
    """Until the API server applies `mode`: the probe pod (Docker Hub) is refused by that mode
    (in its own words); for `none`, admitted, with no webhook for pods left registered (Kyverno
    takes its webhook back a moment after its policy is gone, and until then the API server
    would still call it)."""
    deadline = time.monotonic() + timeout
    while True:
        status, message = probe(env["tool"])
        hooks: set[str] = set()
        if mode == "none":
            hooks = pod_webhooks(env["admin"])
            ok = status == 201 and not hooks
        else:
            ok = status in REFUSALS and REFUSED_BY[mode] in message
        if ok:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"mode {mode} not in effect after {timeout}s: probe {status} "
                               f"{message[:300]}; webhooks for pods {sorted(hooks)}")
        time.sleep(0.2)


def pod_webhooks(client: Client) -> set[str]:
    """Names of the registered webhooks whose rules take pod CREATEs."""
    names = set()
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        body = client.request("GET", f"/apis/admissionregistration.k8s.io/v1/{kind}").body
        for configuration in body.get("items") or []:
            for webhook in configuration.get("webhooks") or []:
                for rule in webhook.get("rules") or []:
                    if (set(rule.get("resources") or ()) & {"pods", "*"}
                            and set(rule.get("operations") or ()) & {"CREATE", "*"}
                            and set(rule.get("apiGroups") or ()) & {"", "*"}):
                        names.add(webhook["name"])
    return names


def register(env: dict[str, Any], mode: str) -> None:
    """Make `mode` the registered policy. A switch goes through none: the suite's
    configurations (and goref's, which has the suite's name) are deleted, the
    ValidatingAdmissionPolicy and its binding deleted, Kyverno's ClusterPolicy deleted (Kyverno
    then takes its pods webhook back itself)."""
    cp, suite = env["cp"], env["suite"]
    current = env["registered"]
    if current == mode:
        return
    if current in ("suite", "goref"):
        suite.unregister()
    elif current == "vap":
        cp.kubectl("delete", "validatingadmissionpolicybinding", peers.VAP_NAME,
                   "--ignore-not-found")
        cp.kubectl("delete", "validatingadmissionpolicy", peers.VAP_NAME, "--ignore-not-found")
    elif current == "kyverno":
        cp.kubectl("delete", "clusterpolicy", peers.KYVERNO_POLICY, "--ignore-not-found")
    if current != "none":
        wait_mode(env, "none")
    env["registered"] = "none"
    if mode == "suite":
        suite.register()
    elif mode == "goref":
        cp.apply([env["goref_configuration"]])
    elif mode == "vap":
        cp.apply(env["vap_documents"])
    elif mode == "kyverno":
        cp.apply([env["kyverno_policy"]])
    if mode != "none":
        wait_mode(env, mode)
    env["registered"] = mode


def check_samples(env: dict[str, Any], modes: list[str]) -> dict[str, Any]:
    """Each mode refuses and admits the sample pods as the suite does (dry-run creates); none
    admits them all. Raises before anything is measured if one does not."""
    samples = peers.samples(payloads.HARBOR, TOOL, "other")
    out: dict[str, Any] = {}
    for mode in modes:
        register(env, mode)
        verdicts = {}
        for sample in samples:
            status, message = probe(env["tool"], sample)
            refused = status in REFUSALS
            if status != 201 and not refused:
                raise RuntimeError(f"{mode}: sample {sample.name}: {status} {message[:300]}")
            expected = sample.refused and mode != "none"
            if refused != expected:
                raise RuntimeError(f"{mode} {'refused' if refused else 'admitted'} the sample "
                                   f"{sample.name} ({', '.join(sample.images)}; init "
                                   f"{', '.join(sample.init_images) or 'none'}), the suite "
                                   f"{'refuses' if sample.refused else 'admits'} it: {message}")
            verdicts[sample.name] = "refused" if refused else "admitted"
        out[mode] = verdicts
        print(f"  samples: {mode:7} refused {sum(v == 'refused' for v in verdicts.values())}, "
              f"admitted {sum(v == 'admitted' for v in verdicts.values())}: as the suite",
              flush=True)
    return out


# -- the stages -------------------------------------------------------------------------------

def pods_stage(args: argparse.Namespace, env: dict[str, Any], regime: str,
               rate: float) -> dict[str, Any]:
    suite, tool, admin, cpu = (env[k] for k in ("suite", "tool", "admin", "cpu"))
    path = pods_path(NAMESPACE)
    pool = ThreadPoolExecutor(max_workers=args.clients)
    rows: list[dict[str, Any]] = []
    serial = env["serial"]

    def create(prefix: str) -> Callable[[int], tuple[int, float, str]]:
        def task(i: int) -> tuple[int, float, str]:
            response = tool.create(path, tool_pod(f"{prefix}-{i}"))
            return response.status, response.seconds, "" if response.status == 201 \
                else response.message[:300]
        return task

    try:
        for round_ in range(args.rounds):
            shift = round_ % len(args.modes)
            for mode in args.modes[shift:] + args.modes[:shift]:
                register(env, mode)
                tag = f"b{next(serial)}"
                if args.warmup:
                    run_parallel(args.clients, args.warmup, create(f"{tag}-warm"), pool, rate)
                window = LogWindow(suite.log_path)
                calls = admission_calls(admin, mode)
                port = env["ports"].get(mode, 0)
                closed = time_wait(port)
                closed_by_server = time_wait(port, by_server=True)
                closes = suite_closes(suite)
                before = cpu.sample()
                with OpenConnections(port) as held:
                    results, wall = run_parallel(args.clients, args.creates, create(tag), pool,
                                                 rate)
                if rate:  # (status, seconds, message), lag: from when the create was due
                    lags = [lag for _, lag in results]
                    results = [(status, seconds + lag, message)
                               for (status, seconds, message), lag in results]
                used = Cpu.cores(before, cpu.sample(), wall)
                memory = cpu.rss()
                closed = len(time_wait(port) - closed)
                closed_by_server = len(time_wait(port, by_server=True) - closed_by_server)
                closes = suite_closes(suite) - closes
                after = admission_calls(admin, mode)
                calls = {k: after[k] - calls.get(k, 0) for k in after
                         if after[k] - calls.get(k, 0) > 0}
                seconds = calls.pop("seconds", 0.0)
                answers = {k: round(v) for k, v in calls.items()}
                ok = [s for status, s, _ in results if status == 201]
                errors = Counter(f"{status} {message}" for status, _, message in results
                                 if status != 201)
                reviews = [e["duration_ms"] for e in window.reviews()
                           if e.get("endpoint") == "validate-pods"
                           and str(e.get("name", "")).startswith(f"{tag}-")]
                row = {"regime": regime, "round": round_, "mode": mode,
                       "late_creates": sum(lag > 0.001 for lag in lags) if rate else 0,
                       "creates": len(results), "created": len(ok), "wall_s": round(wall, 3),
                       "creates_per_s": round(len(ok) / wall, 1),
                       **latency_summary(ok), "errors": dict(errors), "cores": used,
                       "cpu_ms_per_create": {k: round(v / len(ok) * wall * 1000, 2)
                                             for k, v in used.items() if k != "other" and ok},
                       "rss_mb": memory,
                       "suite_reviews": len(reviews), "webhook_connections_closed": closed,
                       "webhook_connections_closed_by_server": closed_by_server,
                       "suite_closed_by_reason": dict(closes),
                       "webhook_connections_open": held.summary(),
                       "admission_calls": answers,
                       "admission_call_mean_ms": round(seconds / sum(answers.values()) * 1000,
                                                       3) if answers else None,
                       "latencies_ms": [round(s * 1000, 3) for s in ok]}
                if reviews:
                    row["suite_review"] = quantiles(reviews)
                rows.append(row)
                print(f"  pods {regime} r{round_} {mode:7} {row['creates_per_s']:7.1f} "
                      f"creates/s  p50 {row['p50_ms']:7.2f}  p90 {row['p90_ms']:7.2f}  "
                      f"p99 {row['p99_ms']:7.2f}  p99.9 {row['p99.9_ms']:7.2f} ms  errors "
                      f"{sum(errors.values())}  cores: "
                      f"{', '.join(f'{k} {v:.2f}' for k, v in used.items())}; calls "
                      f"{answers} (mean {row['admission_call_mean_ms']} ms), connections "
                      f"closed {closed} ({closed_by_server} by the server; the suite's count by "
                      f"reason {dict(closes)}), open {held.summary()}", flush=True)
                clear(admin, path, "bench=e2e")
    finally:
        pool.shutdown()
    return summarise_pods(rows, args, regime, rate)


def clear(admin: Client, path: str, selector: str) -> None:
    """Delete a round's pods, and wait until they are gone.

    The API server deletes a collection one object at a time and gives the request 60 s: on a
    slower 2-core machine that was not enough for a round's 2,200 pods, and it stopped with some
    left (answering with a timeout, or closing the connection). So the delete is repeated until
    none is left.
    """
    deadline = time.monotonic() + ADMIN_TIMEOUT
    while count(admin, path, selector):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} ({selector}) not empty after {ADMIN_TIMEOUT} s")
        with contextlib.suppress(OSError):
            delete_all(admin, path, selector)
        time.sleep(0.2)  # a refused delete is not repeated at once


def summarise_pods(rows: list[dict[str, Any]], args: argparse.Namespace, regime: str,
                   rate: float) -> dict[str, Any]:
    modes: dict[str, Any] = {}
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        pooled = [ms for r in mine for ms in r["latencies_ms"]]
        wall = sum(r["wall_s"] for r in mine)
        calls = Counter[str]()
        for r in mine:
            calls.update(r["admission_calls"])
        means = [r["admission_call_mean_ms"] for r in mine if r["admission_call_mean_ms"]]
        modes[mode] = {
            **quantiles(pooled),
            "creates_per_s": round(sum(r["created"] for r in mine) / wall, 1) if wall else 0,
            "errors": sum(sum(r["errors"].values()) for r in mine),
            "late_creates": sum(r["late_creates"] for r in mine),
            "rounds": len(mine),
            "cpu_ms_per_create": {k: statistics.median(r["cpu_ms_per_create"][k] for r in mine)
                                  for k in mine[0]["cpu_ms_per_create"]} if mine else {},
            "rss_mb": {k: max(r["rss_mb"].get(k, 0) for r in mine)
                       for k in mine[0]["rss_mb"]} if mine else {},
            "webhook_connections_closed": sum(r["webhook_connections_closed"] for r in mine),
            "webhook_connections_closed_by_server": sum(
                r.get("webhook_connections_closed_by_server", 0) for r in mine),
            "webhook_connections_replaced": sum(
                r.get("webhook_connections_open", {}).get("closed", 0) for r in mine),
            "admission_calls": dict(calls),
            "admission_call_mean_ms": statistics.median(means) if means else None,
        }
        if mode == "suite":
            reviews = [r["suite_review"] for r in mine if "suite_review" in r]
            if reviews:
                modes[mode]["suite_review_p50_ms"] = statistics.median(
                    r["p50_ms"] for r in reviews)
                modes[mode]["suite_review_p99_ms"] = statistics.median(
                    r["p99_ms"] for r in reviews)
    ratios = {}
    pairs = [(m, "none") for m in args.modes if m != "none" and "none" in modes]
    pairs += [("suite", m) for m in ("goref", "vap", "kyverno") if m in modes and "suite" in modes]
    for a, b in pairs:
        ratios[f"{a}/{b}"] = {
            "p50": round(modes[a]["p50_ms"] / modes[b]["p50_ms"], 3),
            "p99": round(modes[a]["p99_ms"] / modes[b]["p99_ms"], 3),
            "p99.9": round(modes[a]["p99.9_ms"] / modes[b]["p99.9_ms"], 3),
            "creates_per_s": round(modes[a]["creates_per_s"] / modes[b]["creates_per_s"], 3),
            "p99_per_round": [round(x["p99_ms"] / y["p99_ms"], 3) for x in rows for y in rows
                              if x["round"] == y["round"] and x["mode"] == a
                              and y["mode"] == b],
        }
    for row in rows:
        del row["latencies_ms"]  # pooled above; the percentiles stay in each row
    return {
        "regime": regime, "clients": args.clients, "creates_per_round": args.creates,
        "warmup": args.warmup, "rate": rate, "rounds": args.rounds, "modes": modes,
        "ratios": ratios,
        "targets": [v.as_json() for v in targets.judge(regime, modes, ratios)],
        "rows": rows,
    }


def pipelineruns_stage(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    suite, builds, admin, cpu = (env[k] for k in ("suite", "builds", "admin", "cpu"))
    register(env, "suite")
    path = runs_path()
    pool = ThreadPoolExecutor(max_workers=args.pr_clients)

    def cycle(prefix: str) -> Callable[[int], list[tuple[str, int, float, str]]]:
        def task(i: int) -> list[tuple[str, int, float, str]]:
            name = f"{prefix}{i:04d}"
            out = []
            for attempt in ("a", "b"):
                response = builds.create(path, pipelinerun(f"{name}-{attempt}", name))
                out.append((f"{name}-{attempt}", response.status, response.seconds,
                            response.message[:300]))
            return out
        return task

    try:
        run_parallel(args.pr_clients, max(args.pr_clients * 2, 10), cycle("warm"), pool)
        window = LogWindow(suite.log_path)
        before = cpu.sample()
        results, wall = run_parallel(args.pr_clients, args.pr_tools, cycle("bench"), pool)
        used = Cpu.cores(before, cpu.sample(), wall)
    finally:
        pool.shutdown()
    sent = [r for pair in results for r in pair]

    def expected(name: str, status: int, message: str) -> bool:
        """The first run of a tool is admitted, the second refused for the limit."""
        if name.endswith("-a"):
            return status == 201
        return status == 403 and "may have at most 1" in message

    good = [(name, s) for name, status, s, m in sent if expected(name, status, m)]
    admitted = [s for name, s in good if name.endswith("-a")]
    denied = [s for name, s in good if name.endswith("-b")]
    unexpected = Counter(f"{name[-1]} {status} {message}" for name, status, _, message in sent
                         if not expected(name, status, message))
    reviews = {e["name"]: e for e in window.reviews()
               if e.get("endpoint") == "validate-pipelineruns" and e.get("operation") == "CREATE"
               and str(e.get("name", "")).startswith("bench")}
    server = {"a": [e["duration_ms"] for n, e in reviews.items() if n.endswith("-a")],
              "b": [e["duration_ms"] for n, e in reviews.items() if n.endswith("-b")]}
    delete_all(admin, path)
    result = {
        "clients": args.pr_clients, "tools": args.pr_tools, "wall_s": round(wall, 3),
        "creates_per_s": round(len(sent) / wall, 1), "cores": used,
        "admitted": {"count": len(admitted), **latency_summary(admitted),
                     "suite": quantiles(server["a"])},
        "denied": {"count": len(denied), **latency_summary(denied),
                   "suite": quantiles(server["b"])},
        "unexpected": dict(unexpected),
        "suite_reviews_logged": len(reviews),
        "target": "PipelineRun admission with the active-run check: p99 < 50 ms",
    }
    all_server = server["a"] + server["b"]
    result["suite_p99_ms"] = round(percentile(all_server, 99), 2)
    result["target_met"] = result["suite_p99_ms"] < 50
    print(f"  pipelineruns: {result['creates_per_s']} creates/s at c={args.pr_clients}; "
          f"admitted {len(admitted)} client p50/p99 {result['admitted']['p50_ms']}/"
          f"{result['admitted']['p99_ms']} ms, suite {result['admitted']['suite']['p50_ms']}/"
          f"{result['admitted']['suite']['p99_ms']} ms; denied {len(denied)} client "
          f"{result['denied']['p50_ms']}/{result['denied']['p99_ms']} ms, suite "
          f"{result['denied']['suite']['p50_ms']}/{result['denied']['suite']['p99_ms']} ms; "
          f"unexpected {sum(unexpected.values())}", flush=True)
    return result


# -- report -----------------------------------------------------------------------------------

def _calls_text(calls: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(calls.items())) or "none"


def pods_markdown(pods: dict[str, Any]) -> list[str]:
    regime = pods["regime"]
    pace = (f"paced at {pods['rate']:g} creates/s" if pods["rate"]
            else f"{pods['clients']} clients in a closed loop")
    lines = [
        f"### Pod creates, {REGIMES[regime]}: {pace}, {pods['creates_per_round']} creates per "
        f"mode and round, {pods['rounds']} round(s)",
        "",
        "| mode | creates/s | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 / none (per round) "
        "| errors | API server's calls by answer; mean ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in pods["modes"].items():
        ratio = pods["ratios"].get(f"{mode}/none")
        shown = (f"×{ratio['p99']:.2f} ({', '.join(f'{x:.2f}' for x in ratio['p99_per_round'])})"
                 if ratio else "")
        mean = f"; {m['admission_call_mean_ms']:.2f}" if m["admission_call_mean_ms"] else ""
        lines.append(f"| {MODES[mode]} | {m['creates_per_s']:.0f} | {m['p50_ms']:.1f} | "
                     f"{m['p90_ms']:.1f} | {m['p99_ms']:.1f} | {m['p99.9_ms']:.1f} | {shown} | "
                     f"{m['errors']} | {_calls_text(m['admission_calls'])}{mean} |")
    lines += ["", "Per round (creates/s, p50 / p90 / p99 / p99.9 ms):", "",
              "| round | " + " | ".join(MODES[m] for m in pods["modes"]) + " |",
              "|---" * (len(pods["modes"]) + 1) + "|"]
    for round_ in range(pods["rounds"]):
        cells = []
        for mode in pods["modes"]:
            row = next((r for r in pods["rows"] if r["round"] == round_ and r["mode"] == mode),
                       None)
            cells.append(f"{row['creates_per_s']:.0f}/s, {row['p50_ms']:.1f} / "
                         f"{row['p90_ms']:.1f} / {row['p99_ms']:.1f} / {row['p99.9_ms']:.1f}"
                         if row else "")
        lines.append(f"| {round_} | " + " | ".join(cells) + " |")
    lines += ["", "CPU per create (ms, from /proc, median of the rounds): "
              + "; ".join(f"{MODES[mode]}: " + ", ".join(
                  f"{k} {v:.2f}" for k, v in m["cpu_ms_per_create"].items() if v >= 0.005)
                          for mode, m in pods["modes"].items()) + ".",
              "",
              "Resident memory at the end of the measured creates (MB, largest of the rounds): "
              + "; ".join(f"{MODES[mode]}: " + ", ".join(f"{k} {v:.0f}"
                                                        for k, v in m["rss_mb"].items())
                          for mode, m in pods["modes"].items()) + ".",
              "",
              *(["Creates that started over 1 ms after they were due (every client busy; "
                 "their latency counts from when they were due): " + ", ".join(
                     f"{mode} {m['late_creates']}" for mode, m in pods["modes"].items()) + ".",
                 ""] if pods["rate"] else []),
              "Connections to the webhook closed during the measured creates, as seen from the "
              "connections it held: "
              + ", ".join(f"{mode} {m.get('webhook_connections_replaced', 0)}"
                          for mode, m in pods["modes"].items() if mode not in ("none", "vap"))
              + "; as TIME_WAIT sockets (a close that resets leaves none): "
              + ", ".join(f"{mode} {m['webhook_connections_closed']} "
                          f"({m.get('webhook_connections_closed_by_server', 0)} on the server's "
                          "side)"
                          for mode, m in pods["modes"].items() if mode not in ("none", "vap"))
              + ".",
              ""]
    for pair, r in pods["ratios"].items():
        lines.append(f"- {pair}: p50 ×{r['p50']:.2f}, p99 ×{r['p99']:.2f} (per round "
                     f"{', '.join(f'{x:.2f}' for x in r['p99_per_round'])}), p99.9 "
                     f"×{r['p99.9']:.2f}, creates/s ×{r['creates_per_s']:.2f}.")
    lines += [f"- Target: {targets.Verdict(**v).text()}." for v in pods["targets"]]
    suite = pods["modes"].get("suite", {})
    if "suite_review_p50_ms" in suite:
        lines.append(f"- The suite's own time per pod review (log duration_ms): p50 "
                     f"{suite['suite_review_p50_ms']:.2f} ms, p99 "
                     f"{suite['suite_review_p99_ms']:.2f} ms.")
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    meta, runs = data["meta"], data.get("pipelineruns")
    extra = ""
    if meta.get("goref_gomaxprocs"):
        extra += f", the Go reference (bench/goref, GOMAXPROCS={meta['goref_gomaxprocs']})"
    if meta.get("kyverno"):
        extra += f", Kyverno {meta['kyverno']}"
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; kube-apiserver, etcd, the suite "
        f"(`serve --workers {meta['workers']} --threads {meta['threads']}`){extra} on the "
        "same cores, nothing pinned; modes interleaved round by round.",
        "",
    ]
    for pods in data["pods"].values():
        lines += pods_markdown(pods)
    if runs:
        a, d = runs["admitted"], runs["denied"]
        lines += [
            f"### PipelineRuns (builds API for {runs['tools']} tools, {runs['clients']} clients, "
            f"{runs['creates_per_s']:.0f} creates/s)",
            "",
            "| run | count | client p50 / p99 ms | suite p50 / p99 ms |",
            "|---|---|---|---|",
            f"| admitted (lists runs, writes the Lease) | {a['count']} | {a['p50_ms']:.1f} / "
            f"{a['p99_ms']:.1f} | {a['suite']['p50_ms']:.1f} / {a['suite']['p99_ms']:.1f} |",
            f"| denied (over the limit) | {d['count']} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} "
            f"| {d['suite']['p50_ms']:.1f} / {d['suite']['p99_ms']:.1f} |",
            "",
            f"Suite p99 over both: {runs['suite_p99_ms']:.1f} ms; target < 50 ms: "
            f"{'met' if runs['target_met'] else 'not met'}; unexpected answers: "
            f"{sum(runs['unexpected'].values())}.",
        ]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent pod creators")
    parser.add_argument("--creates", type=int, default=2000,
                        help="measured pod creates per mode and round")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured creates first")
    parser.add_argument("--regimes", default="closed,open",
                        help="closed (each client creates as soon as its last create "
                             "returned), open (paced at --rate), or both, in that order")
    parser.add_argument("--rate", type=float, default=0,
                        help="pod creates per second over all clients in the open loop; "
                             "0: half of what `none` reached in this run's closed loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"modes to measure, of {', '.join(MODES)} (none is always in)")
    parser.add_argument("--no-goref", action="store_true", help="leave out the goref mode")
    parser.add_argument("--pr-clients", type=int, default=8)
    parser.add_argument("--pr-tools", type=int, default=300,
                        help="tools with two PipelineRun creates each (0: no PipelineRun stage)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 300 creates (50 warm-up), 40 tools: a smoke run")
    parser.add_argument("--out", default=str(RESULTS / "e2e-latest.json"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.creates, args.warmup, args.rounds = 300, 50, 1
        args.pr_tools = min(args.pr_tools, 40)
    wanted = {m.strip() for m in args.modes.split(",") if m.strip()} | {"none"}
    if unknown := wanted - set(MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}")
    if args.no_goref:
        wanted.discard("goref")
    args.modes = [m for m in MODES if m in wanted]
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if not regimes or set(regimes) - set(REGIMES):
        parser.error(f"--regimes: closed, open or closed,open, not {args.regimes}")
    if regimes == ["open"] and not args.rate:
        parser.error("--regimes open needs --rate (or the closed regime before it)")

    binaries = ensure_binaries()
    kyverno_paths = None
    if "kyverno" in args.modes:
        from kyverno import ensure_kyverno

        kyverno_paths = ensure_kyverno()
    workdir = Path(tempfile.mkdtemp(prefix="tfa-bench-e2e-"))
    print(f"bench e2e: work dir (logs) {workdir}", flush=True)
    cp = ControlPlane(workdir, binaries)
    suite: Suite | None = None
    goref = None
    kyverno: peers.Kyverno | None = None
    try:
        cp.start()
        ensure_namespaces(cp)
        cp.install_tekton()
        cp.tekton.stop()  # see the module's docstring
        suite = Suite(cp, workdir)
        suite.start()
        ports = {"suite": suite.port}
        if "goref" in args.modes:
            # As run.py builds it, with the suite's certificate (its CA is the caBundle), and
            # like the suite not pinned: GOMAXPROCS = the CPU count, Go's default without a CPU
            # limit, so it may use both cores as the suite's two workers do. It does not ask
            # for the API server's client certificate (the suite requires and checks it).
            config = go_config(workdir, [NAMESPACE], TEST_POLICY)
            goref = start_go(build_go(workdir), config, suite.cert_dir, None, workdir,
                             gomaxprocs=os.cpu_count() or 1)
            ports["goref"] = goref.port
        allow = peers.AllowList.from_policy(TEST_POLICY)
        if kyverno_paths is not None:
            crds, documents = peers.kyverno_manifests(kyverno_paths)
            cp.apply(documents)
            for crd in crds:
                cp.kubectl("apply", "--server-side", "-f", str(crd))
            cp.kubectl("wait", "--for=condition=Established", "--timeout=120s",
                       "crd/clusterpolicies.kyverno.io", "crd/policies.kyverno.io")
            kyverno = peers.Kyverno(kyverno_paths["kyverno"], cp.kubeconfig, workdir)
            took = kyverno.start()
            print(f"bench e2e: Kyverno {peers.KYVERNO_VERSION} serving on 127.0.0.1:"
                  f"{kyverno.port} after {took:.0f}s (log {kyverno.log_path})", flush=True)
            ports["kyverno"] = kyverno.port
        by_name = {p.name: p for p in cp.processes}
        running = suite

        def suite_pids() -> list[int]:
            assert running.process is not None
            return [running.process.pid, *children(running.process.pid)]

        def kyverno_pids() -> list[int]:
            process = kyverno.process if kyverno else None
            return [process.pid] if process is not None and process.poll() is None else []

        cpu = Cpu({"kube-apiserver": lambda: [by_name["kube-apiserver"].pid],
                   "etcd": lambda: [by_name["etcd"].pid],
                   "kube-controller-manager": lambda: [by_name["kube-controller-manager"].pid],
                   "suite": suite_pids,
                   "goref": lambda: [goref.proc.pid] if goref else [],
                   "kyverno": kyverno_pids})
        pods_configuration = next(c for c in project_webhook_configurations()
                                  if c["metadata"]["name"] == PODS_CONFIGURATION)
        env = {"cp": cp, "suite": suite, "cpu": cpu, "admin": admin(cp, ADMIN_TIMEOUT),
               "tool": tool_client(cp, TOOL), "builds": builds_api_client(cp),
               "goref": goref, "registered": "none", "ports": ports,
               "serial": itertools.count(),
               "goref_configuration": point_at(
                   pods_configuration, f"https://127.0.0.1:{goref.port}", suite.ca_pem)
               if goref else None,
               "vap_documents": peers.vap_documents(allow),
               "kyverno_policy": peers.kyverno_policy(allow)}
        data: dict[str, Any] = {"meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "workers": suite.workers, "threads": suite.threads,
            "binaries": str(binaries["kube-apiserver"].parent),
            "goref_gomaxprocs": os.cpu_count() if goref else None,
            "kyverno": peers.KYVERNO_VERSION if kyverno else None,
            "modes": args.modes,
        }, "pods": {}}
        print(f"bench e2e: checking the sample pods in every mode ({', '.join(args.modes)})",
              flush=True)
        data["samples"] = check_samples(env, args.modes)
        register(env, "none")
        for regime in regimes:
            rate = 0.0
            if regime == "open":
                rate = args.rate or round(
                    data["pods"]["closed"]["modes"]["none"]["creates_per_s"] / 2)
            print(f"bench e2e: pods, {REGIMES[regime]}, modes {', '.join(args.modes)}, "
                  f"{args.clients} clients, {args.creates} creates per mode and round, "
                  f"{args.rounds} round(s)" + (f", {rate:g} creates/s" if rate else ""),
                  flush=True)
            data["pods"][regime] = pods_stage(args, env, regime, rate)
            for verdict in data["pods"][regime]["targets"]:
                print(f"  target, {regime} loop: {targets.Verdict(**verdict).text()}",
                      flush=True)
        if args.pr_tools:
            print(f"bench e2e: PipelineRuns, {args.pr_tools} tools, {args.pr_clients} clients",
                  flush=True)
            data["pipelineruns"] = pipelineruns_stage(args, env)
        errors = [line for line in suite.log_path.read_text(errors="replace").splitlines()
                  if '"level":"error"' in line or "Traceback" in line]
        data["meta"]["suite_log_errors"] = len(errors)
        if kyverno is not None:
            data["meta"]["kyverno_log_errors"] = len(kyverno.errors())
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2))
        table = markdown(data)
        out.with_suffix(".md").write_text(table)
        print()
        print(table)
        if errors:
            print(f"bench e2e: the suite logged {len(errors)} error(s), first: {errors[0]}")
        if not args.no_plot:
            plot(out, out.with_suffix(".png"))
            print(f"bench e2e: wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    finally:
        if kyverno is not None:
            kyverno.stop()
        if goref is not None:
            goref.stop()
        if suite is not None:
            suite.stop()
        cp.stop()
        if args.keep:
            print(f"bench e2e: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
