"""The server (gunicorn's own lines included) and the certificate job write one log schema,
though the server and the job share no code.

certs stands alone (an import-linter contract), so the job cannot use the server's formatter.
Both write `time`, `level`, `logger` and `message` first, in that order and format, then their
own fields: one log pipeline reads both.
"""

from __future__ import annotations

import datetime
import http.client
import io
import json
import logging
import os
import re
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from certs.cli import main as certs_main
from certs.state import Secret
from tests.builders import make_review
from tests.unit.certs.fakes import FakeClock, make_store
from tests.unit.webhooks.dev_server import post_review, start_dev_server
from webhooks.logs import JsonFormatter

SCHEMA = ("time", "level", "logger", "message")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
LEVELS = {"debug", "info", "warning", "error", "critical"}


def assert_schema(entry: dict[str, Any]) -> None:
    assert tuple(entry)[:len(SCHEMA)] == SCHEMA, entry
    assert TIME.fullmatch(entry["time"]), entry["time"]
    assert datetime.datetime.fromisoformat(entry["time"]).utcoffset() == datetime.timedelta(0)
    assert entry["level"] in LEVELS
    assert isinstance(entry["logger"], str)
    assert entry["logger"]
    assert isinstance(entry["message"], str)
    assert entry["message"]


def server_line(level: int, message: str, **fields: object) -> dict[str, Any]:
    record = logging.LogRecord("webhooks.app", level, "", 0, message, None, None)
    record.fields = fields
    return json.loads(JsonFormatter().format(record))


def job_lines(*argv: str, prepare: Any = None) -> list[dict[str, Any]]:
    clock = FakeClock()
    store = make_store(clock)
    if prepare is not None:
        prepare(store)
    out = io.StringIO()
    certs_main(list(argv), store=store, clock=clock, sleep=clock.sleep, out=out,
               err=io.StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_server_writes_the_schema() -> None:
    entry = server_line(logging.WARNING, "policy refused", path="/etc/policy.yaml")
    assert_schema(entry)
    assert (entry["level"], entry["message"], entry["path"]) == (
        "warning", "policy refused", "/etc/policy.yaml")


def test_every_line_of_a_rotation_writes_the_schema() -> None:
    lines = job_lines("rotate")
    assert len(lines) > 2
    for entry in lines:
        assert_schema(entry)
    assert {entry["level"] for entry in lines} == {"info"}
    assert lines[0]["event"] == "create-ca"
    assert lines[-1]["event"] == "certificates"
    assert lines[-1]["message"] == "certificates installed"


def test_a_failed_rotation_logs_at_error_level() -> None:
    def foreign(store: Any) -> None:
        store.put_secret(Secret("webhook-certs", {}, {}, {}, "kubernetes.io/tls"))

    lines = job_lines("rotate", prepare=foreign)
    for entry in lines:
        assert_schema(entry)
    assert [entry["level"] for entry in lines] == ["error", "error"]
    assert "not issued by toolforge-admission" in lines[-1]["message"]



@pytest.mark.slow  # starts a server
def test_every_line_a_serve_run_writes_is_json_in_the_schema(tmp_path: Path) -> None:
    # gunicorn's own lines too: the master's and the workers', at start, stop and a crash.
    log = tmp_path / "server.log"
    dev = start_dev_server("--workers=1", log=log)
    try:
        context = ssl.create_default_context(cafile=dev.ca_file)
        connection = http.client.HTTPSConnection("127.0.0.1", dev.port, context=context,
                                                 timeout=10)
        answer: Any = post_review(connection, make_review(), "/validate/pods")
        assert answer["response"]["allowed"] is True
        connection.close()
        worker = int(Path(f"/proc/{dev.process.pid}/task/{dev.process.pid}/children")
                     .read_text().split()[0])
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while log.read_text().count("Booting worker") < 2:
            assert time.monotonic() < deadline, "the master did not replace the worker"
            time.sleep(0.1)
    finally:
        dev.process.send_signal(signal.SIGTERM)
        dev.process.wait(timeout=30)
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert_schema(entry)
    gunicorn = [(entry["level"], entry["message"]) for entry in entries
                if entry["logger"] == "gunicorn.error"]
    messages = " / ".join(message for _, message in gunicorn)
    for expected in ("Starting gunicorn", "Booting worker with pid", "Worker exiting",
                     "Shutting down: Master"):
        assert expected in messages, messages
    assert ("error", f"Worker (pid:{worker}) was sent SIGKILL! Perhaps out of memory?") \
        in gunicorn
    assert any(entry["logger"] == "webhooks.app" and entry["message"] == "review"
               for entry in entries)
