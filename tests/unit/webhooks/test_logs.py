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


@pytest.fixture
def review_stream(configured: None) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logs.JsonLinesHandler)
    handler.setStream(stream)
    return stream


def only_ours() -> logs.JsonLinesHandler:
    """Leave the root logger with the handler `configure` installed alone: pytest adds its own
    capturing handlers for each test's call, which the review line reaches as any other."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, logs.JsonLinesHandler)]
    root.handlers[:] = ours
    return ours[0]


FIELDS = {"uid": "u-1", "decision": "allowed", "detail": "a\nb", "duration_ms": 0.25}


def test_a_review_line_is_the_line_logger_info_writes(review_stream: io.StringIO) -> None:
    logger = logging.getLogger("webhooks.app")
    ours = only_ours()
    assert logs._only_handler(logger) is ours  # written without a LogRecord
    logs.info_fields(logger, "review", FIELDS)
    logger.info("review", extra={"fields": FIELDS})
    direct, through_logging = review_stream.getvalue().splitlines()
    # The same keys in the same order, the same values; only the millisecond may differ.
    assert list(json.loads(direct)) == list(json.loads(through_logging))
    assert {**json.loads(direct), "time": ""} == {**json.loads(through_logging), "time": ""}
    assert list(json.loads(direct))[:4] == ["time", "level", "logger", "message"]


def test_a_review_line_reaches_every_other_handler_too(review_stream: io.StringIO) -> None:
    # pytest's caplog, or an admin's extra handler: the record goes down the usual chain.
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    extra = Capture()
    logger = logging.getLogger("webhooks.app")
    only_ours()
    logger.addHandler(extra)
    try:
        assert logs._only_handler(logger) is None
        logs.info_fields(logger, "review", FIELDS)
    finally:
        logger.removeHandler(extra)
    assert [r.fields for r in records] == [FIELDS]  # type: ignore[attr-defined]
    assert json.loads(review_stream.getvalue())["uid"] == "u-1"


def test_a_review_line_follows_the_level(review_stream: io.StringIO) -> None:
    only_ours()
    logging.getLogger().setLevel("WARNING")
    logs.info_fields(logging.getLogger("webhooks.app"), "review", FIELDS)
    assert review_stream.getvalue() == ""


def test_a_failed_write_is_reported_as_logging_reports_it(
        review_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[logging.LogRecord] = []
    handler = only_ours()
    monkeypatch.setattr(handler, "handleError", reported.append)
    review_stream.close()  # a write raises ValueError now
    logs.info_fields(logging.getLogger("webhooks.app"), "review", FIELDS)
    assert [r.getMessage() for r in reported] == ["review"]
