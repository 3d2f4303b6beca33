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

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
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
