"""The JSON log configuration leaves other formatters (gunicorn's) working."""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections.abc import Iterator

import pytest
from gunicorn.glogging import Logger

from webhooks import logs


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging._srcfile, logging.logThreads,
             logging.logProcesses, logging.logMultiprocessing)
    logs.configure()
    yield
    (root.handlers[:], level, logging._srcfile, logging.logThreads, logging.logProcesses,
     logging.logMultiprocessing) = saved
    root.setLevel(level)


def test_gunicorns_own_log_lines_still_format(configured: None) -> None:
    # gunicorn's error log prints the process id; a record without one fails to format and
    # gunicorn's message is replaced by "--- Logging error ---".
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(Logger.error_fmt, Logger.datefmt))
    logger = logging.getLogger("test.gunicorn.error")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("cannot set up TLS for a connection")
    finally:
        logger.removeHandler(handler)
    assert "[ERROR] cannot set up TLS for a connection" in stream.getvalue()


def test_a_record_is_one_json_line_with_its_fields(configured: None) -> None:
    record = logging.LogRecord("webhooks", logging.WARNING, "", 0, "policy refused\nforged",
                               None, None)
    record.fields = {"path": "/etc/policy.yaml"}
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {"time": json.loads(line)["time"], "level": "warning",
                                "logger": "webhooks", "message": "policy refused\nforged",
                                "path": "/etc/policy.yaml"}


@pytest.mark.parametrize("created", [0.0, 1_700_000_000.0, 1_700_000_000.0004, 1_700_000_000.999,
                                     1_700_000_001.5, 1_699_999_999.0125])
def test_the_time_is_utc_iso_8601_to_the_millisecond(created: float) -> None:
    formatter = logs.JsonFormatter()
    for moment in (created, created + 1, created):  # the cached second changes and comes back
        record = logging.LogRecord("webhooks", logging.INFO, "", 0, "review", None, None)
        record.created = moment
        expected = datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(
            timespec="milliseconds")
        assert json.loads(formatter.format(record))["time"] == expected
