"""The worker's metrics: every value true from the first scrape, and the new series present.

In prometheus_client's multiprocess mode each worker writes its own files and `/metrics` sums
them. A gauge exists (at 0) from the moment a worker imports the metrics module, before it has
loaded its certificate: a minimum over the workers then read 0 on the first scrape after a start
(`certificate_valid`, the expiry), which would fire the critical expiry alert. `/metrics` now
reads the gauges only of the workers that serve (webhooks.metrics._ServingWorkers).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.webhooks.dev_server import metric, scrape, start_dev_server

# They start real servers (`serve`): `make test-unit` leaves them out.
pytestmark = pytest.mark.slow

WORKERS, THREADS = 2, 2


def test_every_value_is_true_from_the_first_scrape(tmp_path: Path) -> None:
    dev = start_dev_server(f"--workers={WORKERS}", f"--threads={THREADS}",
                           log=tmp_path / "server.log")
    context = ssl.create_default_context(cafile=dev.ca_file)
    try:
        scrapes = 0
        deadline = time.monotonic() + 30
        while True:  # from the first moment the server answers until both workers serve
            text = scrape(dev.port, context)
            scrapes += 1
            assert metric(text, "toolforge_admission_certificate_valid") == 1, text
            assert metric(text, "toolforge_admission_certificate_not_after_timestamp_seconds") \
                > time.time(), text
            assert metric(text, "toolforge_admission_policy_valid") == 1, text
            assert metric(text, "toolforge_admission_build_info") == 1, text
            assert metric(text, "toolforge_admission_policy_info") == 1, text
            if metric(text, "toolforge_admission_threads") == WORKERS * THREADS:
                break
            assert time.monotonic() < deadline, "the second worker never served"
        assert metric(text, "toolforge_admission_process_resident_memory_bytes") > 10e6
        assert metric(text, "toolforge_admission_process_cpu_seconds_total") > 0
        assert metric(text, "toolforge_admission_open_connections") >= 0
    finally:
        dev.process.send_signal(signal.SIGTERM)
        dev.process.wait(timeout=30)


WORKER = """
import os, sys
from webhooks import metrics
metrics.CERTIFICATE_VALID.set(float(sys.argv[1]))
if sys.argv[2] == "serving":
    metrics.worker_started(2)
"""
SCRAPE = """
from webhooks import metrics
print(metrics.exposition()[0].decode())
"""


def test_a_worker_that_does_not_serve_yet_is_left_out_of_the_gauges(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(code: str, *args: str) -> str:
        return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True,
                              capture_output=True, text=True).stdout

    run(WORKER, "1", "serving")
    run(WORKER, "0", "starting")  # imported the module, loaded nothing yet
    # Both processes have exited; prometheus_client's live gauges of a dead process are removed
    # by the master (mark_process_dead), which is not run here, so both files are still read.
    text = run(SCRAPE)
    assert metric(text, "toolforge_admission_certificate_valid") == 1, text
    assert metric(text, "toolforge_admission_threads") == 2, text
    # The same files, with the second worker serving too: its 0 counts, as it must.
    run(WORKER, "0", "serving")
    assert metric(run(SCRAPE), "toolforge_admission_certificate_valid") == 0
