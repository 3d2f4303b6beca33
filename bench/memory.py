"""What a pod's memory reaches when clients send the bodies that cost most to hold and to parse.

    .venv/bin/python bench/memory.py [--workers 2] [--threads 2] [--senders 8] [--rounds 3]
                                     [serve's flags, e.g. --body-budget 16]

Starts `toolforge-admission serve --dev` as the pod runs it (2 workers x 2 threads by default),
then, against the review port:
- fills each worker's body budget with bodies being read: requests with a 3 MiB Content-Length
  that send all of it but the last byte, and wait (`--held`, 24 by default: 72 MiB declared,
  spread over the workers by the kernel; a worker sheds what exceeds its 32 MiB);
- while those are held, `--senders` clients each send `--rounds` whole 3 MiB bodies of the JSON
  that costs most to parse (nested empty objects, `[{"":{"":{}}},...]`: about 34 bytes of
  memory per byte of body, about 100 MB for one body), refused as not an AdmissionReview only
  once parsed.

Reports each process's peak RSS (VmHWM) and, sampled every 20 ms, the pod's memory as the
kernel charges it to the container: the sum of the processes' proportional set sizes (Pss, so
that pages the workers share with the master count once). Compare the peak with the container's
memory limit in manifests/base/deployment.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.unit.webhooks.dev_server import free_port, is_ready  # noqa: E402

MIB = 1024 * 1024
BODY = 3 * MIB
UNIT = b'{"":{"":{}}},'


def worst_body() -> bytes:
    items = UNIT * ((BODY - 2) // len(UNIT))
    return b"[" + items[:-1] + b"]"


def kib(pid: int, field: str, table: str = "status") -> int:
    text = Path(f"/proc/{pid}/{table}").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def pod_pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that has just gone
            total += kib(pid, "Pss", "smaps_rollup")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--held", type=int, default=24)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args, serve_flags = parser.parse_known_args()

    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="bench-memory-")) / "server.log"
    with log.open("w") as stream:
        server = subprocess.Popen(
            [sys.executable, "-m", "webhooks.cli", "serve", "--dev", f"--bind=127.0.0.1:{port}",
             f"--workers={args.workers}", f"--threads={args.threads}", *serve_flags],
            stdout=subprocess.PIPE, stderr=stream, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        ca_file = next(found.group(1) for line in server.stdout
                       if (found := re.search(r"CA certificate: (\S+)", line)))
        context = ssl.create_default_context(cafile=ca_file)
        deadline = time.monotonic() + 30
        while len(workers := _children(server.pid)) < args.workers or not is_ready(port, context):
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        pids = [server.pid, *workers]
        idle = pod_pss(pids)

        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], pod_pss(pids))
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        held = [_hold(port, context) for _ in range(args.held)]
        body = worst_body()
        started = time.monotonic()
        senders = [threading.Thread(target=_send, args=(port, context, body, args.rounds))
                   for _ in range(args.senders)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        took = time.monotonic() - started
        stop.set()
        sampler.join()
        for sock in held:
            sock.close()
        print(f"{args.workers} workers x {args.threads} threads {' '.join(serve_flags)}; "
              f"{args.held} held bodies, "
              f"{args.senders} senders x {args.rounds} worst-case 3 MiB bodies in {took:.1f} s")
        print(f"pod (sum of Pss): idle {idle / 1024:.0f} MB, peak {peak[0] / 1024:.0f} MB")
        for pid in pids:
            role = "master" if pid == server.pid else "worker"
            print(f"  {role} {pid}: peak RSS (VmHWM) {kib(pid, 'VmHWM') / 1024:.0f} MB, "
                  f"now {kib(pid, 'VmRSS') / 1024:.0f} MB")
    finally:
        server.terminate()
        server.wait(30)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _hold(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A 3 MiB body sent but for its last byte."""
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                               server_hostname="127.0.0.1")
    head = (f"POST /validate/pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BODY}\r\n\r\n").encode()
    with contextlib.suppress(OSError):  # shed by a full budget: the server closed it
        sock.sendall(head + b" " * (BODY - 1))
    return sock


def _send(port: int, context: ssl.SSLContext, body: bytes, rounds: int) -> None:
    for _ in range(rounds):
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                 timeout=120)
        try:
            connection.request("POST", "/validate/pods", body=body,
                               headers={"Content-Type": "application/json"})
            connection.getresponse().read()
        except OSError:
            pass
        finally:
            connection.close()


if __name__ == "__main__":
    main()
