"""The JSON log configuration leaves other formatters (gunicorn's) working."""

from __future__ import annotations

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
