"""Structured logs: one JSON object per line, so log pipelines need no parsing rules.

Extra fields are passed as `extra={"fields": {...}}`. JSON encoding escapes newlines and control
characters, so tenant-supplied text cannot forge log lines.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON."""

    # (second, its ISO 8601 text): a review's line is written many times a second, and the
    # date and time of day cost more to format than the rest of the line.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
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


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    # The JSON lines name no source line or thread; without these lookups (the logging HOWTO's
    # "Optimization") a record costs less, and there is one per review. The process id stays:
    # gunicorn's own log format prints it, and its lines would fail to format without it.
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
