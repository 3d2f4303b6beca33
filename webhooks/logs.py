"""Structured logs: one JSON object per line, so log pipelines need no parsing rules.

Extra fields are passed as `extra={"fields": {...}}`. JSON encoding escapes newlines and control
characters, so tenant-supplied text cannot forge log lines.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON."""

    # (second, its ISO 8601 text): a review's line is written many times a second, and the
    # date and time of day cost more to format than the rest of the line.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname.lower(), record.name,
                         record.getMessage(), fields if isinstance(fields, dict) else None,
                         exception=exception)

    def line(self, created: float, level: str, logger: str, message: str,
             fields: dict[str, Any] | None = None, *, exception: str | None = None) -> str:
        """The JSON line of one record, from its parts."""
        entry: dict[str, Any] = {"time": self._time(created), "level": level, "logger": logger,
                                 "message": message}
        if fields:
            entry.update(fields)
        if exception is not None:
            entry["exception"] = exception
        return orjson.dumps(entry, default=str).decode()

    def _time(self, created: float) -> str:
        """`created` as datetime's isoformat(timespec="milliseconds") in UTC writes it."""
        second = int(created)
        cached = self._second
        if cached[0] != second:
            text = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S")
            cached = self._second = (second, text)
        return f"{cached[1]}.{int((created - second) * 1000):03d}+00:00"


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure` installs: JSON lines on a stream."""


def info_fields(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """`logger.info(message, extra={"fields": fields})`, for the line every review writes.

    Where the record would reach only the handler `configure` installed (a served worker), the
    line is written as that handler writes it, without a LogRecord: making one and passing it
    down the handler chain cost twice what the line itself costs (bench/HISTORY.md, entry 29).
    Anywhere else (a test capturing logs, another handler or a filter added, a write that
    fails) it is logger.info.
    """
    handler = _only_handler(logger) if logger.isEnabledFor(logging.INFO) else None
    if handler is None:
        logger.info(message, extra={"fields": fields})
        return
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)  # _only_handler checked it
    text = formatter.line(time.time(), "info", logger.name, message, fields)
    handler.acquire()
    try:
        handler.stream.write(text + handler.terminator)
        handler.flush()
    except Exception:  # logging's own path reports it (handleError) and never raises
        logger.info(message, extra={"fields": fields})
    finally:
        handler.release()


def _only_handler(logger: logging.Logger) -> JsonLinesHandler | None:
    """The one handler an INFO record of `logger` would reach, when it is the JSON handler of
    `configure` and nothing on the way filters; None otherwise."""
    found: JsonLinesHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not JsonLinesHandler or handler.filters \
                    or handler.level > logging.INFO \
                    or type(handler.formatter) is not JsonFormatter:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    # The JSON lines name no source line or thread; without these lookups (the logging HOWTO's
    # "Optimization") a record costs less, and there is one per review. The process id stays:
    # gunicorn's own log format prints it, and its lines would fail to format without it.
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    handler = JsonLinesHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
