"""Server-side benchmark of toolforge-admission, against a Go reference measured in the same run.

    .venv/bin/python bench/run.py            # or: make bench
    .venv/bin/python bench/run.py --quick    # 3 s cells, one round: a smoke run

What it does (see bench/README.md):
- starts the suite as in production, through the CLI: `toolforge-admission serve --dev --bind
  127.0.0.1:PORT --policy policies/example-policy.yaml` (TLS with a certificate from certs.issue
  in a temporary directory, gunicorn with the suite's own worker (webhooks/worker.py),
  prometheus multiprocess mode, one JSON log line per review on stderr, kept in a file);
  `--dev` only picks the certificate and, with no KUBECONFIG, skips the cluster's active-run
  check with a warning;
- builds and starts bench/goref (Go, standard library only) with the same certificate;
- pins both servers to one CPU and wrk to another (taskset), and drives each with wrk over
  kept-alive HTTPS/1.1 connections (1, 8, 32) with the payloads of bench/payloads.py;
- reports requests/s, p50/p99/p99.9, server CPU per review (utime+stime of the server's process
  tree from /proc), peak RSS per gunicorn worker, a 100,000-review soak for memory growth, and
  ours/Go ratios; writes bench/results/latest.{json,md,png};
- then runs bench/e2e.py (unless --no-e2e): pod creates through a real kube-apiserver with no
  policy, the suite, the Go reference, a ValidatingAdmissionPolicy and Kyverno, in a closed and
  an open loop, and PipelineRun admission; bench/results/e2e-latest.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from tests import slow_clients  # noqa: E402
from tests.e2e import traffic  # noqa: E402

import payloads  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLICY = ROOT / "policies" / "example-policy.yaml"
RESULTS = BENCH / "results"


# -- /proc ------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of live processes (every thread), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, context: ssl.SSLContext, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on {port} not ready after {timeout}s")
        time.sleep(0.2)


class Server:
    name = ""

    def __init__(self, pid_proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = pid_proc
        self.port = port

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def workers(self) -> list[int]:
        return [p for p in self.pids() if p != self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ours(workdir: Path, cpu: str, workers: int | None, threads: int | None,
               ) -> tuple[Server, Path, Path]:
    port = free_port()
    command = ["taskset", "-c", cpu, str(ROOT / ".venv/bin/toolforge-admission"), "serve",
               "--dev", "--bind", f"127.0.0.1:{port}", "--policy", str(POLICY)]
    if workers:
        command += ["--workers", str(workers)]
    if threads:
        command += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "PROMETHEUS_MULTIPROC_DIR")}
    stdout = (workdir / "serve.out").open("wb")
    log = workdir / "serve.log"
    proc = subprocess.Popen(command, stdout=stdout, stderr=log.open("wb"), env=env,
                            cwd=workdir)
    deadline = time.monotonic() + 30
    cert_dir = None
    while cert_dir is None:
        match = re.search(r"CA certificate: (\S+)/ca\.crt", (workdir / "serve.out").read_text())
        if match:
            cert_dir = Path(match.group(1))
        elif proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"serve did not start: {log.read_text()[-2000:]}")
        else:
            time.sleep(0.1)
    server = Server(proc, port)
    server.name = "ours"
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    wait_ready(port, context, "/readyz")
    # every worker up (gunicorn forks them after the master binds)
    deadline = time.monotonic() + 30
    while len(server.workers()) < (workers or 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    return server, cert_dir, log


def build_go(workdir: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("bench: the Go reference needs `go` on PATH (the machine's Go)")
    binary = workdir / "goref"
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off",
               CGO_ENABLED="0")
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=BENCH / "goref", env=env,
                   check=True)
    return binary


def go_config(workdir: Path, namespaces: list[str], policy_file: Path = POLICY) -> Path:
    """The reference's allowed prefixes, computed by the project's own policy code."""
    from policies.model import parse_policy
    from policies.registry import allow_list

    policy = parse_policy(policy_file.read_bytes())
    today = datetime.datetime.now(datetime.UTC).date()
    prefixes = {ns: [str(p) for p in allow_list(policy, ns, today).prefixes] for ns in namespaces}
    config = {"prefixes": prefixes, "harborHosts": list(policy.builds.harbor_hosts),
              "harborProjectFormat": "tool-%s", "toolLabel": policy.builds.tool_label}
    path = workdir / "goref.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_go(binary: Path, config: Path, cert_dir: Path, cpu: str | None, workdir: Path,
             gomaxprocs: int = 1) -> Server:
    """goref on a free port, pinned to `cpu` (taskset) unless it is None."""
    port = free_port()
    env = dict(os.environ, GOMAXPROCS=str(gomaxprocs))
    pin = ["taskset", "-c", cpu] if cpu else []
    proc = subprocess.Popen(
        [*pin, str(binary), "-addr", f"127.0.0.1:{port}",
         "-cert", str(cert_dir / "tls.crt"), "-key", str(cert_dir / "tls.key"),
         "-config", str(config)],
        stdout=subprocess.DEVNULL, stderr=(workdir / "goref.log").open("wb"), env=env)
    server = Server(proc, port)
    server.name = "go"
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("goref did not start") from None
            time.sleep(0.1)
    return server


def check_answers(server: Server, context: ssl.SSLContext,
                  bodies: dict[str, tuple[Path, str]]) -> None:
    """Every payload must be admitted (HTTP 200, allowed true) before it is measured."""
    for name, (file, path) in bodies.items():
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        conn.request("POST", path, body=file.read_bytes(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or not json.loads(data)["response"]["allowed"]:
            raise SystemExit(f"bench: {server.name} did not admit {name}: {response.status} "
                             f"{data[:500]!r}")


# -- load -------------------------------------------------------------------------------------

def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    print("bench: wrk is not installed; installing Debian's package (apt-get install -y wrk)",
          flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                   stdout=subprocess.DEVNULL)
    wrk = shutil.which("wrk")
    if not wrk:
        subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True,
                       stdout=subprocess.DEVNULL)
        wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("bench: could not install wrk; install it with `apt-get install wrk`")
    return wrk


def run_wrk(wrk: str, cpu: str, port: int, conns: int, seconds: float,
            env_extra: dict[str, str]) -> dict[str, Any]:
    command = ["taskset", "-c", cpu, wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s",
               "--timeout", "10s", "-s", str(BENCH / "wrk/post.lua"),
               f"https://127.0.0.1:{port}"]
    result = subprocess.run(command, env=dict(os.environ, **env_extra), capture_output=True,
                            text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[len("WRKJSON "):])
            return data
    raise RuntimeError(f"wrk failed: {result.stdout[-1000:]} {result.stderr[-1000:]}")


def foreign_idle_wait(limit: float = 0.15, patience: float = 10.0) -> float:
    """Wait (up to `patience` s) until the machine is nearly idle; return the last busy cores."""
    deadline = time.monotonic() + patience
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < limit or time.monotonic() > deadline:
            return busy


def measure(wrk: str, server: Server, args: argparse.Namespace, conns: int,
            env: dict[str, str]) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for attempt in range(1, args.tries + 1):
        foreign_idle_wait()
        run_wrk(wrk, args.load_cpu, server.port, conns, args.warmup, env)
        pids = server.pids()
        cpu0, busy0 = cpu_seconds(pids), machine_busy_seconds()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        data = run_wrk(wrk, args.load_cpu, server.port, conns, args.duration, env)
        wall = time.monotonic() - started
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = cpu_seconds(pids) - cpu0
        load_cpu = (children1.ru_utime + children1.ru_stime
                    - children0.ru_utime - children0.ru_stime)
        foreign = max(0.0, machine_busy_seconds() - busy0 - server_cpu - load_cpu) / wall
        requests = data["requests"]
        cell = {
            "rps": requests / (data["duration_us"] / 1e6),
            "requests": requests,
            "errors": data["errors"],
            "latency_ms": {k: v / 1000 for k, v in data["latency_us"].items()},
            "server_cpu_us_per_review": server_cpu / requests * 1e6 if requests else None,
            "server_cores": server_cpu / wall,
            "load_cores": load_cpu / wall,
            "foreign_cores": round(foreign, 3),
            "attempt": attempt,
        }
        if best is None or cell["foreign_cores"] < best["foreign_cores"]:
            best = cell
        if foreign <= args.foreign_limit:
            break
        print(f"    (other processes used {foreign:.2f} cores; trying again)", flush=True)
    assert best is not None
    return best


# -- the hostile cell -------------------------------------------------------------------------

HOSTILE = {"slow-header": 128, "slow-body": 128}
"""The slow clients of the hostile cell (tests/slow_clients.py), opened again whenever the
server closes one, so that the attack keeps its force whatever the server does with it."""


def hostile(wrk: str, servers: list[Server], args: argparse.Namespace, context: ssl.SSLContext,
            body: tuple[Path, str]) -> list[dict[str, Any]]:
    """Normal pod reviews at 8 connections with and without HOSTILE slow clients, per server.

    The attack runs in this process, pinned with wrk to the load CPU; each server keeps its
    own pinning. Go's server gives each connection a goroutine and has no deadline here (goref
    sets none), so it holds the attack for free; the suite closes each slow client at its
    deadline and the attack opens it again (a TLS handshake each time).
    """
    rows = []
    file, path = body
    env = {"BENCH_BODY": str(file), "BENCH_PATH": path}
    affinity = os.sched_getaffinity(0)
    for server in servers:
        for attack in ("none", "slow clients"):
            if attack == "none":
                cell = measure(wrk, server, args, 8, env)
                held: dict[str, Any] = {}
            else:
                os.sched_setaffinity(0, {int(args.load_cpu)})  # the attack's thread inherits it
                try:
                    with slow_clients.SlowClients("127.0.0.1", server.port, context, HOSTILE,
                                                  reconnect=True) as clients:
                        cell = measure(wrk, server, args, 8, env)
                        held = {"open_at_end": sum(clients.open_now().values()),
                                "closed_by_server": sum(clients.closed_by_server.values()),
                                "failed_opens": clients.failed_opens}
                finally:
                    os.sched_setaffinity(0, affinity)
            cell.update(server=server.name, payload="pod", conns=8, attack=attack,
                        slow_clients=sum(HOSTILE.values()) if held else 0, held=held)
            rows.append(cell)
            lat = cell["latency_ms"]
            print(f"  hostile {server.name:4} {attack:12} {cell['rps']:8.0f} rps  p50 "
                  f"{lat['p50']:6.2f}  p99 {lat['p99']:6.2f} ms  errors "
                  f"{sum(cell['errors'].values())}  {held}", flush=True)
    return rows


def hostile_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["", f"Hostile cell: pod reviews at 8 connections, without and with "
                 f"{sum(HOSTILE.values())} slow clients "
                 f"({', '.join(f'{n} {kind}' for kind, n in HOSTILE.items())}, opened again "
                 "whenever the server closes one).", "",
             "| server | slow clients | rps | p50 ms | p99 ms | errors | the slow clients: "
             "open at the end; closed by the server |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        held = row["held"]
        attack = f"{held['open_at_end']}; {held['closed_by_server']}" if held else "–"
        lines.append(f"| {'ours' if row['server'] == 'ours' else 'Go'} | {row['slow_clients']} | "
                     f"{row['rps']:.0f} | {row['latency_ms']['p50']:.2f} | "
                     f"{row['latency_ms']['p99']:.2f} | {sum(row['errors'].values())} | "
                     f"{attack} |")
    return "\n".join(lines) + "\n"


# -- report -----------------------------------------------------------------------------------

def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds per (payload, conns, server); ours/Go ratio per round, then median."""
    cells: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        key = (row["payload"], row["conns"])
        cells.setdefault(key, {}).setdefault(row["server"], []).append(row)
    out = []
    for (payload, conns), by_server in cells.items():
        entry: dict[str, Any] = {"payload": payload, "conns": conns}
        for name, runs in by_server.items():
            entry[name] = {
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in runs),
                "p999_ms": statistics.median(r["latency_ms"]["p999"] for r in runs),
                "cpu_us": statistics.median(r["server_cpu_us_per_review"] for r in runs),
                "rounds": len(runs),
            }
        if "ours" in by_server and "go" in by_server:
            go = {r["round"]: r for r in by_server["go"]}
            pairs = [(r, go[r["round"]]) for r in by_server["ours"] if r["round"] in go]
            entry["rps_ratio"] = statistics.median(o["rps"] / g["rps"] for o, g in pairs)
            entry["p99_ratio"] = statistics.median(
                o["latency_ms"]["p99"] / g["latency_ms"]["p99"] for o, g in pairs)
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; server on CPU {meta['server_cpu']}, wrk on "
        f"CPU {meta['load_cpu']}; {meta['rounds']} round(s) of {meta['duration_s']:g} s per cell; "
        f"ours = `toolforge-admission serve` {meta['serve_args']}; Go = bench/goref, "
        "GOMAXPROCS=1.",
        "",
        "| payload | conns | ours rps | Go rps | ours/Go rps | ours p50 / p99 / p99.9 ms "
        "| Go p50 / p99 / p99.9 ms | p99 ours/Go | CPU µs/review ours / Go |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        o, g = e.get("ours"), e.get("go")
        if o is None:
            continue
        go_rps = f"{g['rps']:.0f}" if g else "–"
        go_lat = f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f} / {g['p999_ms']:.2f}" if g else "–"
        lines.append(
            f"| {e['payload']} | {e['conns']} | {o['rps']:.0f} | {go_rps} | "
            f"{e.get('rps_ratio', float('nan')):.2f} | "
            f"{o['p50_ms']:.2f} / {o['p99_ms']:.2f} / {o['p999_ms']:.2f} | {go_lat} | "
            f"{e.get('p99_ratio', float('nan')):.2f} | "
            f"{o['cpu_us']:.0f} / {g['cpu_us'] if g else float('nan'):.0f} |")
    mem = meta.get("memory") or {}
    if "peak_rss_mb" in mem:
        lines += ["", f"Memory per gunicorn worker: peak RSS (VmHWM) {mem['peak_rss_mb']} MB."]
    if "soak_reviews" in mem:
        lines += ["", f"Soak of {mem['soak_reviews']} mixed reviews: RSS "
                      f"{mem['soak_rss_mb_first']} → {mem['soak_rss_mb_last']} MB "
                      f"(growth {mem['soak_growth_mb']} MB after the first chunk; slope "
                      f"{mem.get('soak_slope_mb_per_10k', 0):+.2f} MB per 10k reviews)."]
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = status_total_mem()
    return (f"{os.cpu_count()} vCPU {model}, {mem_kb // (1024 * 1024)} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def status_total_mem() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def plot(result_file: Path, png: Path) -> None:
    venv = BENCH / ".venv"
    python = venv / "bin/python"
    if not python.exists():
        print("bench: creating bench/.venv for matplotlib (kept out of the project's venv)",
              flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # Bounded as the project's dependencies are (3.11 draws the published plots).
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "matplotlib>=3.10,<4"],
                       check=True)
    subprocess.run([str(python), str(BENCH / "plot.py"), str(result_file), str(png)],
                   check=True)


# -- main -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per cell")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds (server order alternates); medians are reported")
    parser.add_argument("--conns", default="1,8,32")
    parser.add_argument("--payloads", default=",".join(payloads.PAYLOADS))
    parser.add_argument("--workers", type=int, help="--workers for serve (default: the CLI's)")
    parser.add_argument("--threads", type=int, help="--threads for serve (default: the CLI's)")
    parser.add_argument("--server-cpu", default="1")
    parser.add_argument("--load-cpu", default="0")
    parser.add_argument("--soak", type=int, default=100_000,
                        help="reviews in the memory soak (0: none)")
    parser.add_argument("--no-go", action="store_true", help="skip the Go reference")
    parser.add_argument("--tries", type=int, default=2,
                        help="attempts per cell when other processes load the machine")
    parser.add_argument("--foreign-limit", type=float, default=0.3,
                        help="cores other processes may use during a cell before it is redone")
    parser.add_argument("--quick", action="store_true", help="3 s cells, 1 s warm-up, soak 20000")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--label", default="", help="a note stored with the results")
    parser.add_argument("--no-hostile", action="store_true",
                        help="skip the hostile cell (pod reviews with and without slow clients)")
    parser.add_argument("--no-e2e", action="store_true",
                        help="skip the end-to-end stage (bench/e2e.py: pod creates through a "
                             "real kube-apiserver with and without the suite)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.soak = 3, 1, min(args.soak, 20_000)
    conns = [int(c) for c in args.conns.split(",")]
    names = args.payloads.split(",")

    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="toolforge-admission-bench-"))
    bodies = {n: v for n, v in payloads.write(workdir / "payloads").items() if n in names}
    servers: list[Server] = []
    try:
        ours, cert_dir, log = start_ours(workdir, args.server_cpu, args.workers, args.threads)
        servers.append(ours)
        context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
        check_answers(ours, context, bodies)
        if not args.no_go:
            config = go_config(workdir, sorted({json.loads(f.read_bytes())["request"]["namespace"]
                                                for f, _ in bodies.values()}))
            go = start_go(build_go(workdir), config, cert_dir, args.server_cpu, workdir)
            servers.append(go)
            check_answers(go, context, bodies)
        print(f"bench: ours pid {ours.proc.pid} workers {ours.workers()}, logs in {log}",
              flush=True)

        rows: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for name, (file, path) in bodies.items():
                for c in conns:
                    for server in order:
                        cell = measure(wrk, server, args, c,
                                       {"BENCH_BODY": str(file), "BENCH_PATH": path})
                        cell.update(server=server.name, payload=name, conns=c, round=round_)
                        rows.append(cell)
                        lat = cell["latency_ms"]
                        print(f"  r{round_} {name:16} c={c:<3} {server.name:4} "
                              f"{cell['rps']:8.0f} rps  p50 {lat['p50']:6.2f}  p99 "
                              f"{lat['p99']:6.2f}  p99.9 {lat['p999']:6.2f} ms  "
                              f"{cell['server_cpu_us_per_review']:6.0f} µs/review  "
                              f"errors {sum(cell['errors'].values())}  "
                              f"foreign {cell['foreign_cores']:.2f}", flush=True)

        hostile_rows = [] if args.no_hostile or "pod" not in bodies else \
            hostile(wrk, servers, args, context, bodies["pod"])
        workers = ours.workers()
        peak = {str(p): round(status_kb(p, "VmHWM") / 1024, 1) for p in workers}
        memory: dict[str, Any] = {"peak_rss_mb_per_worker": peak,
                                  "peak_rss_mb": max(peak.values(), default=0)}
        if args.soak:
            memory.update(soak(wrk, ours, args, bodies))
        # every review answered must have its one log line
        reviews_logged = sum(1 for line in log.open("rb") if b'"message":"review"' in line)
        meta = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "server_cpu": args.server_cpu, "load_cpu": args.load_cpu,
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "serve_args": " ".join(
                ["--dev"] + ([f"--workers {args.workers}"] if args.workers else [])
                + ([f"--threads {args.threads}"] if args.threads else [])) or "defaults",
            "go": subprocess.run(["go", "version"], capture_output=True, text=True,
                                 check=False).stdout.strip(),
            "wrk": subprocess.run([wrk, "-v"], capture_output=True, text=True,
                                  check=False).stdout.split("\n")[0],
            "label": args.label,
            "reviews_logged": reviews_logged,
            "memory": memory,
        }
        summary = summarise(rows)
        table = markdown(summary, meta) + (hostile_markdown(hostile_rows) if hostile_rows else "")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows,
                                   "hostile": hostile_rows}, indent=2))
        out.with_suffix(".md").write_text(table)
        print()
        print(table)
        if not args.no_plot:
            plot(out, out.with_suffix(".png"))
            print(f"bench: wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    finally:
        for server in servers:
            server.stop()
    if not args.no_e2e:
        # Its own process, after the servers above are gone: it needs both cores.
        out = Path(args.out)
        subprocess.run([sys.executable, str(BENCH / "e2e.py"), "--out",
                        str(out.with_name(f"e2e-{out.name}")),
                        *(["--quick"] if args.quick else []),
                        *(["--no-goref"] if args.no_go else []),
                        *(["--no-plot"] if args.no_plot else [])], check=True)
    return 0


def soak(wrk: str, ours: Server, args: argparse.Namespace,
         bodies: dict[str, tuple[Path, str]]) -> dict[str, Any]:
    """Send `args.soak` mixed reviews in chunks at c=8 and follow each worker's RSS."""
    mix = ",".join(f"{path}={file}" for file, path in bodies.values())
    done, samples = 0, []
    chunk_seconds = 5.0
    while done < args.soak:
        data = run_wrk(wrk, args.load_cpu, ours.port, 8, chunk_seconds, {"BENCH_MIX": mix})
        done += data["requests"]
        rss = [status_kb(p, "VmRSS") / 1024 for p in ours.workers()]
        samples.append({"reviews": done, "rss_mb": [round(r, 1) for r in rss]})
        print(f"  soak: {done:7d} reviews, worker RSS {', '.join(f'{r:.1f}' for r in rss)} MB",
              flush=True)
    first, last = max(samples[0]["rss_mb"]), max(samples[-1]["rss_mb"])
    hwm = {str(p): round(status_kb(p, "VmHWM") / 1024, 1) for p in ours.workers()}
    # The trend after the first chunk (the warm-up), by least squares over every sample: a leak
    # shows as a steady slope even when the first and last samples happen to be close.
    points = [(s["reviews"] / 10_000, max(s["rss_mb"])) for s in samples[1:]]
    slope = traffic.slope(points)
    print(f"  soak: worker RSS {first:.1f} MB after the first chunk -> {last:.1f} MB after "
          f"{done} reviews; slope {slope:+.2f} MB per 10k reviews", flush=True)
    return {"soak_reviews": done, "soak_samples": samples, "soak_rss_mb_first": first,
            "soak_rss_mb_last": last, "soak_growth_mb": round(last - first, 1),
            "soak_slope_mb_per_10k": round(slope, 3), "peak_rss_mb_after_soak": hwm}


if __name__ == "__main__":
    sys.exit(main())
