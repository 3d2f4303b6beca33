"""Instructions per review as served: a gunicorn worker under callgrind, TLS and HTTP included.

    .venv/bin/python bench/served.py                          # every payload, 200 reviews each
    .venv/bin/python bench/served.py --payloads pipelinerun --reviews 300 --threads-apart

bench/inprocess.py counts the WSGI call alone; this counts what a worker of `serve` spends per
review, its main loop (accepting, TLS reads, the HTTP reader, the hand-over to a thread) and its
threads (the application and the answer's TLS write) together, which the served benchmark
(bench/run.py) measures in time. Instructions are the same whatever else the machine runs, so
changes of a few per cent show on a shared machine, where the timings of bench/run.py do not.

For each payload: `toolforge-admission serve --dev --workers 1` under valgrind's callgrind
(children traced: the worker is a fork), warmed up with 30 reviews on one kept-alive TLS
connection; then the worker's counters are zeroed (`callgrind_control -z`), `--reviews` reviews
are sent one after the other, each request in one write as the API server and wrk send it, and
the counters dumped. Kernel time (system calls, context switches) is not counted.
`--threads-apart` reports the main loop and the threads separately.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import payloads  # noqa: E402

POLICY = ROOT / "policies" / "example-policy.yaml"
WARMUP = 30


class Client:
    """One kept-alive TLS connection that sends a request in one write and reads the answer."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=300)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")

    def review(self, request: bytes) -> None:
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        if length is None:
            raise SystemExit(f"bench: an answer without a Content-Length: {head[:300]!r}")
        while len(body) < int(length.group(1)):
            body += self._recv()
        if not head.startswith(b"HTTP/1.1 200") or b'"allowed":true' not in body:
            raise SystemExit(f"bench: a review was not admitted: {data[:300]!r}")

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SystemExit("bench: the server closed the connection")
        return chunk


def request_bytes(path: str, body: bytes, port: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen in {timeout:.0f} s")
        time.sleep(0.5)


def measure(name: str, reviews: int, threads_apart: bool) -> dict[str, float]:
    """Instructions per review of one payload: the worker's total (and per thread)."""
    with tempfile.TemporaryDirectory(prefix="tfa-served-") as scratch:
        work = Path(scratch)
        file, path = payloads.write(work / "payloads")[name]
        body = Path(file).read_bytes()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        command = [
            "valgrind", "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={work}/callgrind.%p",
            *(["--separate-threads=yes"] if threads_apart else []),
            sys.executable, str(ROOT / ".venv/bin/toolforge-admission"), "serve", "--dev",
            "--bind", f"127.0.0.1:{port}", "--policy", str(POLICY), "--workers", "1",
            # valgrind runs the worker ~50 times slower: the deadlines must not fire.
            "--header-timeout", "120", "--body-timeout", "120"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("KUBECONFIG", "PROMETHEUS_MULTIPROC_DIR")}
        env["PYTHONHASHSEED"] = "0"  # the same dict layouts, and so the same counts, each run
        out = work / "serve.out"
        with out.open("wb") as stdout, (work / "serve.log").open("wb") as stderr:
            server = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=work)
        try:
            wait_for("serve's start", lambda: "CA certificate:" in out.read_text()
                     or server.poll() is not None)
            found = re.search(r"CA certificate: (\S+)", out.read_text())
            if found is None:
                raise SystemExit("bench: serve did not start: "
                                 f"{(work / 'serve.log').read_text()[-2000:]}")
            context = ssl.create_default_context(cafile=found.group(1))

            def listening() -> bool:
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) == 0

            wait_for("the listening socket", listening)
            client = Client(port, context)
            request = request_bytes(path, body, port)
            for _ in range(WARMUP):
                client.review(request)
            workers = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                     text=True, check=False).stdout.split()
            if len(workers) != 1:
                raise SystemExit(f"bench: expected one worker, found {workers}")
            worker = workers[0]
            subprocess.run(["callgrind_control", "-z", worker], check=True, capture_output=True)
            for _ in range(reviews):
                client.review(request)
            subprocess.run(["callgrind_control", "-d", worker], check=True, capture_output=True)
            # The dump after -z: callgrind.PID.1, per thread callgrind.PID.1-NN.
            dumps = sorted(work.glob(f"callgrind.{worker}.1*"))
            per_part = {}
            for dump in dumps:
                total = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"),
                                  re.MULTILINE)
                if total is not None:
                    per_part[dump.name.rpartition(".1")[2].lstrip("-") or "all"] = \
                        int(total.group(1)) / reviews
            return per_part
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", default=",".join(payloads.PAYLOADS))
    parser.add_argument("--reviews", type=int, default=200, help="reviews counted per payload")
    parser.add_argument("--threads-apart", action="store_true",
                        help="also the instructions of each thread (01 is the main loop)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is needed (apt-get install valgrind)")
    for name in args.payloads.split(","):
        parts = measure(name, args.reviews, args.threads_apart)
        total = sum(parts.values())
        apart = ("  (" + ", ".join(f"thread {k}: {v:,.0f}" for k, v in sorted(parts.items()))
                 + ")") if args.threads_apart else ""
        print(f"  {name:16} {total:12,.0f} instructions per served review{apart}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
