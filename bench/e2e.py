"""End-to-end benchmark: pod creates through a real kube-apiserver, with the suite and without.

    .venv/bin/python bench/e2e.py                      # also run by `make bench` (bench/run.py)
    .venv/bin/python bench/e2e.py --quick              # 1 round of 300 creates: a smoke run

As Kyverno publishes its numbers: the control plane of the e2e harness (tests/e2e/cluster.py:
etcd, kube-apiserver, kube-controller-manager; binaries from tests/e2e/build.py) and the suite
started by `Suite` exactly as the e2e tests run it (gunicorn over TLS with the harness's workers
and threads, mutual TLS, the active-run check against this API server). Then:

- pods: N clients (default 50), each on its own kept-alive HTTPS connection as the tool mytool
  (client certificate CN=mytool, O=toolforge), create a realistic tool pod (3 containers, 2 init
  containers, probes, env, volumes; images from the tool's Harbor project) in tool-mytool, a
  fixed number per round, in three modes: `none` (no webhook configuration registered), `suite`
  (the project's configurations registered) and `goref` (only the pods configuration of
  manifests/base/webhook-pods.yaml, pointed at bench/goref: the Go stdlib reference of the same
  registry check, as a floor for what any webhook costs here), interleaved over rounds (the
  order rotates: none/suite/goref, then suite/goref/none, ...) so drift in the machine's load
  hits all. Each mode starts with a warm-up, and the pods are deleted between modes. Reported
  per mode: p50/p90/p99 of the client-side create latency (request sent to response read),
  creates/s, errors, the CPU of each process, and the API server's count of its calls to the
  pods webhook by answer (its own metrics); plus the suite's own review time (duration_ms of its
  log) in `suite` mode.
- pipelineruns: with the suite registered, the builds API's ServiceAccount creates runs for many
  tools at C concurrent clients (default 8): per tool one run (admitted: the check lists the
  tool's runs and writes its Lease) and a second (denied: the limit is 1). Reported: the client
  latency and the suite's duration_ms, p50/p99, for admitted and denied.

The Tekton controller is stopped after the install: the benchmark measures admission, and the
controller would turn every admitted run into a TaskRun and a build pod on the same two cores.
goref is built as run.py builds it and serves the suite's certificate; like the suite it is not
pinned, and its GOMAXPROCS is the CPU count (Go's default without a CPU limit).
Writes bench/results/e2e-latest.{json,md,png}.
"""

from __future__ import annotations

import argparse
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
    cpu_seconds,
    delete_all,
    percentile,
    pods_path,
    runs_path,
    tool_client,
    wait_empty,
    wait_webhooks,
)

import payloads  # noqa: E402
from run import build_go, go_config, machine, plot, start_go  # noqa: E402

RESULTS = BENCH / "results"
TOOL = payloads.TOOL
NAMESPACE = payloads.NAMESPACE
QUANTILES = (50, 90, 99, 99.9)
MODES = {"none": "no webhook", "suite": "suite registered", "goref": "Go reference registered"}
PAIRS = (("suite", "none"), ("goref", "none"), ("suite", "goref"))
PODS_CONFIGURATION = "toolforge-admission-pods"
PODS_WEBHOOK = "pods.toolforge-admission.toolforge.org"


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
    client is free (closed loop)."""
    counter = itertools.count()
    results: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    began = 0.0

    def client() -> None:
        start.wait()
        while (i := next(counter)) < total:
            if rate:
                time.sleep(max(0.0, began + i / rate - time.perf_counter()))
            result = task(i)
            with lock:
                results.append(result)

    futures = [pool.submit(client) for _ in range(clients)]
    began = time.perf_counter()
    start.wait()
    for future in futures:
        future.result()
    return results, time.perf_counter() - began


def quantiles(ms: list[float]) -> dict[str, float]:
    return {f"p{q:g}_ms": round(percentile(ms, q), 2) for q in QUANTILES}


def time_wait(port: int, *, by_server: bool = False) -> int:
    """TCP connections to or from `port` in TIME_WAIT (state 06): those closed in the last
    60 s. The API server keeps a limited number of idle connections per webhook host; beyond
    that each review pays a new (mutual) TLS handshake, which this shows. With `by_server`,
    only those the server closed (TIME_WAIT is on the side that closed first: here, its port
    is the local one)."""
    total = 0
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
                total += 1
    return total


class OpenConnections:
    """Samples (every 20 ms, in a thread) how many connections the server on `port` holds, and
    how many distinct ones it held over the run."""

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
        self.thread.join()

    def _run(self) -> None:
        local = f":{self.port:04X} "
        while not self.stopping.wait(0.02):
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


def webhook_calls(client: Client) -> dict[str, float]:
    """The API server's own count of its CREATE calls to the pods webhook, whichever server it
    points at (apiserver_admission_webhook_request_total), by `<HTTP code> allowed|rejected`;
    and under "seconds" the time they took as it measures them (the sum of
    apiserver_admission_webhook_admission_duration_seconds)."""
    out: dict[str, float] = {}
    for line in client.request("GET", "/metrics").raw.decode().splitlines():
        if f'name="{PODS_WEBHOOK}"' not in line or 'operation="CREATE"' not in line:
            continue
        labels, value = line.rsplit(" ", 1)
        if labels.startswith("apiserver_admission_webhook_request_total{"):
            code = re.search(r'code="(\d+)"', labels)
            answer = "rejected" if 'rejected="true"' in labels else "allowed"
            key = f"{code.group(1) if code else '?'} {answer}"
        elif labels.startswith("apiserver_admission_webhook_admission_duration_seconds_sum{"):
            key = "seconds"
        else:
            continue
        out[key] = out.get(key, 0) + float(value)
    return out


def register(env: dict[str, Any], mode: str) -> None:
    """Make `mode` the registered webhook: none, the suite's configurations, or the pods
    configuration pointed at goref. A switch between two webhooks goes through none, so that
    the probe's refusal confirms the new one (both refuse it). The goref configuration has the
    suite's name: `unregister` deletes it too."""
    suite, tool = env["suite"], env["tool"]
    if env["registered"] == mode:
        return
    if env["registered"] != "none":
        suite.unregister()
        wait_webhooks(tool, NAMESPACE, registered=False)
    if mode == "suite":
        suite.register()
    elif mode == "goref":
        env["cp"].apply([env["goref_configuration"]])
    if mode != "none":
        wait_webhooks(tool, NAMESPACE, registered=True)
    env["registered"] = mode


# -- the stages -------------------------------------------------------------------------------

def pods_stage(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    suite, tool, admin, cpu = (env[k] for k in ("suite", "tool", "admin", "cpu"))
    ports = {"none": suite.port, "suite": suite.port,
             "goref": env["goref"].port if env["goref"] else 0}
    path = pods_path(NAMESPACE)
    pool = ThreadPoolExecutor(max_workers=args.clients)
    rows: list[dict[str, Any]] = []
    serial = itertools.count()

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
                    run_parallel(args.clients, args.warmup, create(f"{tag}-warm"), pool,
                                 args.rate)
                window = LogWindow(suite.log_path)
                calls = webhook_calls(admin)
                closed = time_wait(ports[mode])
                closed_by_server = time_wait(ports[mode], by_server=True)
                closes = suite_closes(suite)
                before = cpu.sample()
                with OpenConnections(ports[mode]) as held:
                    results, wall = run_parallel(args.clients, args.creates, create(tag), pool,
                                                 args.rate)
                used = Cpu.cores(before, cpu.sample(), wall)
                closed = time_wait(ports[mode]) - closed
                closed_by_server = time_wait(ports[mode], by_server=True) - closed_by_server
                closes = suite_closes(suite) - closes
                after = webhook_calls(admin)
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
                row = {"round": round_, "mode": mode, "creates": len(results),
                       "created": len(ok), "wall_s": round(wall, 3),
                       "creates_per_s": round(len(ok) / wall, 1),
                       **latency_summary(ok), "errors": dict(errors), "cores": used,
                       "cpu_ms_per_create": {k: round(v / len(ok) * wall * 1000, 2)
                                             for k, v in used.items() if k != "other" and ok},
                       "suite_reviews": len(reviews), "webhook_connections_closed": closed,
                       "webhook_connections_closed_by_server": closed_by_server,
                       "suite_closed_by_reason": dict(closes),
                       "webhook_connections_open": held.summary(),
                       "webhook_calls": answers,
                       "webhook_call_mean_ms": round(seconds / sum(answers.values()) * 1000, 2)
                       if answers else None,
                       "latencies_ms": [round(s * 1000, 3) for s in ok]}
                if reviews:
                    row["suite_review"] = quantiles(reviews)
                rows.append(row)
                print(f"  pods r{round_} {mode:5} {row['creates_per_s']:7.1f} creates/s  "
                      f"p50 {row['p50_ms']:7.2f}  p90 {row['p90_ms']:7.2f}  "
                      f"p99 {row['p99_ms']:7.2f} ms  errors {sum(errors.values())}  "
                      f"cores: {', '.join(f'{k} {v:.2f}' for k, v in used.items())}; "
                      f"webhook calls {answers} (mean {row['webhook_call_mean_ms']} ms), "
                      f"connections closed {closed} ({closed_by_server} by the server; the "
                      f"suite's count by reason {dict(closes)}), open {held.summary()}",
                      flush=True)
                delete_all(admin, path, "bench=e2e")
                wait_empty(admin, path, "bench=e2e")
    finally:
        pool.shutdown()
    return summarise_pods(rows, args)


def summarise_pods(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    modes: dict[str, Any] = {}
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        pooled = [ms for r in mine for ms in r["latencies_ms"]]
        wall = sum(r["wall_s"] for r in mine)
        calls = Counter[str]()
        for r in mine:
            calls.update(r["webhook_calls"])
        means = [r["webhook_call_mean_ms"] for r in mine if r["webhook_call_mean_ms"]]
        modes[mode] = {
            **quantiles(pooled),
            "creates_per_s": round(sum(r["created"] for r in mine) / wall, 1) if wall else 0,
            "errors": sum(sum(r["errors"].values()) for r in mine),
            "rounds": len(mine),
            "cpu_ms_per_create": {k: statistics.median(r["cpu_ms_per_create"][k] for r in mine)
                                  for k in mine[0]["cpu_ms_per_create"]} if mine else {},
            "webhook_connections_closed": sum(r["webhook_connections_closed"] for r in mine),
            "webhook_connections_closed_by_server": sum(
                r.get("webhook_connections_closed_by_server", 0) for r in mine),
            "webhook_connections_replaced": sum(
                r.get("webhook_connections_open", {}).get("closed", 0) for r in mine),
            "webhook_calls": dict(calls),
            "webhook_call_mean_ms": statistics.median(means) if means else None,
        }
        if mode == "suite":
            reviews = [r["suite_review"] for r in mine if "suite_review" in r]
            if reviews:
                modes[mode]["suite_review_p50_ms"] = statistics.median(
                    r["p50_ms"] for r in reviews)
                modes[mode]["suite_review_p99_ms"] = statistics.median(
                    r["p99_ms"] for r in reviews)
    ratios = {}
    for a, b in PAIRS:
        if a in modes and b in modes:
            ratios[f"{a}/{b}"] = {
                "p50": round(modes[a]["p50_ms"] / modes[b]["p50_ms"], 3),
                "p99": round(modes[a]["p99_ms"] / modes[b]["p99_ms"], 3),
                "creates_per_s": round(modes[a]["creates_per_s"] / modes[b]["creates_per_s"], 3),
                "p99_per_round": [round(x["p99_ms"] / y["p99_ms"], 3) for x in rows for y in rows
                                  if x["round"] == y["round"] and x["mode"] == a
                                  and y["mode"] == b],
            }
    for row in rows:
        del row["latencies_ms"]  # pooled above; the percentiles stay in each row
    return {
        "clients": args.clients, "creates_per_round": args.creates, "warmup": args.warmup,
        "rate": args.rate,
        "rounds": args.rounds, "modes": modes, "ratios": ratios,
        "target": "p99 with a webhook within 10% of the no-webhook p99 (p99 ratio to none "
                  "<= 1.10)",
        "target_met": {mode: m["p99_ms"] <= 1.10 * modes["none"]["p99_ms"]
                       for mode, m in modes.items() if mode != "none"},
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

def markdown(data: dict[str, Any]) -> str:
    meta, pods, runs = data["meta"], data["pods"], data.get("pipelineruns")
    goref = (f" and the Go reference (bench/goref, GOMAXPROCS={meta['goref_gomaxprocs']})"
             if "goref" in pods["modes"] else "")
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; kube-apiserver, etcd, the suite "
        f"(`serve --workers {meta['workers']} --threads {meta['threads']}`){goref} on the same "
        f"cores, nothing pinned. "
        f"{pods['clients']} clients, {pods['creates_per_round']} pod creates per mode and round, "
        f"{pods['rounds']} round(s), modes interleaved, "
        + (f"paced at {pods['rate']:g} creates/s." if pods.get("rate") else "closed loop."),
        "",
        "| mode | creates/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | API server's "
        "webhook calls by answer; mean ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in pods["modes"].items():
        calls = ", ".join(f"{k}: {n}" for k, n in m["webhook_calls"].items()) or "none"
        mean = f"; {m['webhook_call_mean_ms']:.2f}" if m["webhook_call_mean_ms"] else ""
        lines.append(f"| {MODES[mode]} | {m['creates_per_s']:.0f} | {m['p50_ms']:.1f} | "
                     f"{m['p90_ms']:.1f} | {m['p99_ms']:.1f} | {m['p99.9_ms']:.1f} | "
                     f"{m['errors']} | {calls}{mean} |")
    lines += ["", "CPU per create (ms, from /proc): "
              + "; ".join(f"{MODES[mode]}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                        m["cpu_ms_per_create"].items())
                          for mode, m in pods["modes"].items())
              + ". Connections to the webhook closed during the measured creates, as seen "
              "from the connections it held: "
              + ", ".join(f"{mode} {m.get('webhook_connections_replaced', 0)}"
                          for mode, m in pods["modes"].items() if mode != "none")
              + "; as TIME_WAIT sockets (a close that resets leaves none): "
              + ", ".join(f"{mode} {m['webhook_connections_closed']} "
                          f"({m.get('webhook_connections_closed_by_server', 0)} on the server's "
                          "side)"
                          for mode, m in pods["modes"].items() if mode != "none") + "."]
    lines.append("")
    for pair, r in pods["ratios"].items():
        lines.append(f"{pair}: p50 ×{r['p50']:.2f}, p99 ×{r['p99']:.2f} (per round "
                     f"{', '.join(f'{x:.2f}' for x in r['p99_per_round'])}), creates/s "
                     f"×{r['creates_per_s']:.2f}.")
    lines.append("Target p99 ≤ ×1.10 of no webhook: " + ", ".join(
        f"{MODES[mode]} {'met' if met else 'not met'}" for mode, met in pods["target_met"].items())
        + ".")
    suite = pods["modes"]["suite"]
    if "suite_review_p50_ms" in suite:
        lines.append(f"The suite's own time per pod review (log duration_ms): p50 "
                     f"{suite['suite_review_p50_ms']:.2f} ms, p99 "
                     f"{suite['suite_review_p99_ms']:.2f} ms.")
    if runs:
        a, d = runs["admitted"], runs["denied"]
        lines += [
            "",
            f"PipelineRuns (builds API for {runs['tools']} tools, {runs['clients']} clients, "
            f"{runs['creates_per_s']:.0f} creates/s):",
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
    parser.add_argument("--rate", type=float, default=0,
                        help="pod creates per second over all clients, paced (open loop); "
                             "0: each client creates as soon as its last create returned")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-goref", action="store_true",
                        help="no `goref` mode (the Go reference registered instead of the suite)")
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
    args.modes = [m for m in MODES if not (m == "goref" and args.no_goref)]

    binaries = ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="tfa-bench-e2e-"))
    print(f"bench e2e: work dir (logs) {workdir}", flush=True)
    cp = ControlPlane(workdir, binaries)
    suite: Suite | None = None
    goref = None
    try:
        cp.start()
        ensure_namespaces(cp)
        cp.install_tekton()
        cp.tekton.stop()  # see the module's docstring
        suite = Suite(cp, workdir)
        suite.start()
        if not args.no_goref:
            # As run.py builds it, with the suite's certificate (its CA is the caBundle), and
            # like the suite not pinned: GOMAXPROCS = the CPU count, Go's default without a CPU
            # limit, so it may use both cores as the suite's two workers do. It does not ask
            # for the API server's client certificate (the suite requires and checks it).
            config = go_config(workdir, [NAMESPACE], TEST_POLICY)
            goref = start_go(build_go(workdir), config, suite.cert_dir, None, workdir,
                             gomaxprocs=os.cpu_count() or 1)
        by_name = {p.name: p for p in cp.processes}
        running = suite

        def suite_pids() -> list[int]:
            assert running.process is not None
            return [running.process.pid, *children(running.process.pid)]

        cpu = Cpu({"kube-apiserver": lambda: [by_name["kube-apiserver"].pid],
                   "etcd": lambda: [by_name["etcd"].pid],
                   "kube-controller-manager": lambda: [by_name["kube-controller-manager"].pid],
                   "suite": suite_pids,
                   "goref": lambda: [goref.proc.pid] if goref else []})
        pods_configuration = next(c for c in project_webhook_configurations()
                                  if c["metadata"]["name"] == PODS_CONFIGURATION)
        env = {"cp": cp, "suite": suite, "cpu": cpu, "admin": admin(cp),
               "tool": tool_client(cp, TOOL), "builds": builds_api_client(cp),
               "goref": goref, "registered": "none",
               "goref_configuration": point_at(
                   pods_configuration, f"https://127.0.0.1:{goref.port}", suite.ca_pem)
               if goref else None}
        print(f"bench e2e: pods, modes {', '.join(args.modes)}, {args.clients} clients, "
              f"{args.creates} creates per mode and round, {args.rounds} round(s), "
              + (f"{args.rate:g} creates/s" if args.rate else "closed loop"), flush=True)
        data: dict[str, Any] = {"meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "workers": suite.workers, "threads": suite.threads,
            "binaries": str(binaries["kube-apiserver"].parent),
            "goref_gomaxprocs": os.cpu_count() if goref else None,
        }}
        data["pods"] = pods_stage(args, env)
        if args.pr_tools:
            print(f"bench e2e: PipelineRuns, {args.pr_tools} tools, {args.pr_clients} clients",
                  flush=True)
            data["pipelineruns"] = pipelineruns_stage(args, env)
        errors = [line for line in suite.log_path.read_text(errors="replace").splitlines()
                  if '"level":"error"' in line or "Traceback" in line]
        data["meta"]["suite_log_errors"] = len(errors)
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
