"""The server and the certificate job write one log schema, though they share no code.

certs stands alone (an import-linter contract), so the job cannot use the server's formatter.
Both write `time`, `level`, `logger` and `message` first, in that order and format, then their
own fields: one log pipeline reads both.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
from typing import Any

from certs.cli import main as certs_main
from certs.state import Secret
from tests.unit.certs.fakes import FakeClock, make_store
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

