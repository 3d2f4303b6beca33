"""The fixed cost of one review inside a worker: the WSGI call, without HTTP, TLS or gunicorn.

    .venv/bin/python bench/inprocess.py                     # CPU µs per call, each payload
    .venv/bin/python bench/inprocess.py --payloads pod --calls 3000 --repeats 7
    .venv/bin/python bench/inprocess.py --instructions      # callgrind: instructions per call
    .venv/bin/python bench/inprocess.py --instructions --cluster   # ... as a served pod answers
    .venv/bin/python bench/inprocess.py --profile pipelinerun   # pyinstrument call tree

What a gunicorn worker of `serve` runs per review, in this process: `create_app` with
policies/example-policy.yaml, prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR
in a temporary directory, set before any metric is created, as `serve` does), the JSON log line
of webhooks/logs.py written to a file, the objects loaded before serving frozen (gc.freeze, as
the worker does), and `app.wsgi_app` (AdmissionDispatcher) called with a WSGI environ like
gunicorn's for each payload of payloads.py. Every answer is checked (200, allowed) first.

CPU time (time.process_time) over `--calls` calls, best of `--repeats`, is the in-process figure
of bench/HISTORY.md. On a shared machine pin it (`taskset -c 1`) and compare against a copy of
the previous commit in the same minute. `--instructions` runs this script under valgrind's
callgrind twice per payload (with `--calls` and with none) and reports the difference divided
by the calls: instructions are the same whatever else the machine runs, so small changes show.

Without a cluster (as `serve --dev`) the PipelineRun rule's active-run question and the build-pod
rule's run lookup are answered "no cluster". `--cluster` answers them from memory as a served pod
would, without the API server's time: every run fits its slots, and the Tekton pod's TaskRun and
PipelineRun (tests/buildruns.py `objects_of`) are found.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import payloads  # noqa: E402

POLICY = ROOT / "policies" / "example-policy.yaml"


def make_app(workdir: Path, *, cluster: bool = False) -> Callable[..., Iterable[bytes]]:
    """The WSGI callable of one worker, set up as `serve` sets it up."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "prometheus")
    (workdir / "prometheus").mkdir(exist_ok=True)
    from webhooks import logs
    from webhooks.app import create_app

    logs.configure("INFO")
    import logging

    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(workdir / "reviews.log", "w"))  # noqa: SIM115 (lives as long as the app)
    config: dict[str, Any] = {"POLICY_FILE": str(POLICY), "POLICY_RELOAD_SECONDS": 3600.0}
    if cluster:
        config |= cluster_answers()
    app = create_app(config)
    deadline = time.monotonic() + 10
    source = app.extensions["toolforge-admission"].source
    while source.policy is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the policy did not load: {source.error}")
        time.sleep(0.01)
    gc.collect()
    gc.freeze()
    return app.wsgi_app


class FreeSlots:
    """Active-run slots in memory that always have room (`webhooks.admission.ActiveRuns`)."""

    def claim(self, tool: str, candidate: Any, *, limit: int, label: str,
              reserve: bool) -> Any:
        from policies.slots import Claim

        return Claim(fits=True, limit=limit, occupants=(), reservations=(), changed=False)


def cluster_answers() -> dict[str, Any]:
    """The app's ACTIVE_RUNS and BUILD_RUNS, answering from memory."""
    from tests.buildruns import MemoryCluster, objects_of
    from webhooks.runs import BuildRuns

    pod = payloads.tekton_review()["request"]["object"]
    return {"ACTIVE_RUNS": FreeSlots(), "BUILD_RUNS": BuildRuns(MemoryCluster(*objects_of(pod)))}


def environ_for(path: str, body: bytes) -> Callable[[], dict[str, Any]]:
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "",
            "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8443",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
            "wsgi.url_scheme": "https", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0)}

    def make() -> dict[str, Any]:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(body)
        return environ

    return make


def call(app: Callable[..., Iterable[bytes]], make: Callable[[], dict[str, Any]],
         ) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]]) -> None:
        status.append(line)

    body = b"".join(app(make(), start_response))
    return status[0], body


def check(app: Callable[..., Iterable[bytes]], name: str,
          make: Callable[[], dict[str, Any]]) -> None:
    status, body = call(app, make)
    answer = json.loads(body)
    if not status.startswith("200") or not answer["response"]["allowed"]:
        raise SystemExit(f"bench: {name} was not admitted: {status} {body[:300]!r}")


def measure(app: Callable[..., Iterable[bytes]], make: Callable[[], dict[str, Any]],
            calls: int, repeats: int) -> float:
    """CPU µs per call, best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            call(app, make)
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


def bodies(workdir: Path, names: list[str]) -> dict[str, tuple[str, bytes]]:
    written = payloads.write(workdir / "payloads")
    return {name: (path, Path(file).read_bytes()) for name, (file, path) in written.items()
            if name in names}


def instructions(args: argparse.Namespace, names: list[str]) -> dict[str, float]:
    """Instructions per call under callgrind: (run with N calls - run with 0) / N."""
    if shutil.which("valgrind") is None:
        raise SystemExit("bench: --instructions needs valgrind (apt-get install valgrind)")
    out = {}
    for name in names:
        totals = []
        for calls in (args.calls, 0):
            with tempfile.TemporaryDirectory() as scratch:
                result = subprocess.run(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/cg.out",
                     sys.executable, __file__, "--payloads", name, "--calls", str(calls),
                     "--repeats", "1", "--warmup", str(args.warmup),
                     *(["--cluster"] if args.cluster else [])],
                    capture_output=True, text=True, check=False,
                    # The same string hashes in every run: dict layouts, and so the counts,
                    # do not move with the hash seed.
                    env=dict(os.environ, PYTHONHASHSEED="0"))
                match = re.search(r"Collected : (\d+)", result.stderr)
                if result.returncode != 0 or match is None:
                    raise SystemExit(f"bench: callgrind failed:\n{result.stderr[-2000:]}")
                totals.append(int(match.group(1)))
        out[name] = (totals[0] - totals[1]) / args.calls
        print(f"  {name:16} {out[name]:12,.0f} instructions per call", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", default=",".join(payloads.PAYLOADS))
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200, help="calls before measuring")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per call under callgrind (slow: ~50x)")
    parser.add_argument("--cluster", action="store_true",
                        help="answer the rules' cluster questions from memory, as served")
    parser.add_argument("--profile", metavar="PAYLOAD",
                        help="print a pyinstrument call tree of --calls calls of one payload")
    args = parser.parse_args()
    names = args.payloads.split(",")
    if args.instructions:
        if args.calls == parser.get_default("calls"):
            args.calls = 300
        instructions(args, names)
        return 0
    with tempfile.TemporaryDirectory(prefix="tfa-inprocess-") as scratch:
        workdir = Path(scratch)
        app = make_app(workdir, cluster=args.cluster)
        sent = bodies(workdir, [args.profile] if args.profile else names)
        makers = {name: environ_for(path, body) for name, (path, body) in sent.items()}
        for name, make in makers.items():
            check(app, name, make)
            for _ in range(args.warmup):
                call(app, make)
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0001)
            with profiler:
                for _ in range(args.calls):
                    call(app, makers[args.profile])
            print(profiler.output_text(unicode=True, color=False, show_all=False))
            return 0
        if args.repeats and args.calls:
            for name, make in makers.items():
                micros = measure(app, make, args.calls, args.repeats)
                print(f"  {name:16} {micros:8.1f} µs CPU per call (best of {args.repeats} x "
                      f"{args.calls})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
