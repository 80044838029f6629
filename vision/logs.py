"""Logging for every process: human-readable lines locally, one JSON object per line in clusters.

Every line logged while a request is handled carries its request id and, with tracing on, its trace and span
ids (`vision.telemetry.context`): JSON fields ``request_id``, ``trace_id``, ``span_id``; in text lines a
``[request … trace …]`` suffix.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from vision.telemetry.context import LogContextFilter

_CONTEXT_FIELDS = ("request_id", "trace_id", "span_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, "")
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """The usual one-line format, plus the request and trace ids of a line logged during a request."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id, trace_id = getattr(record, "request_id", ""), getattr(record, "trace_id", "")
        if not (request_id or trace_id):
            return line
        context = " ".join(
            part
            for part in (
                f"request {request_id}" if request_id else "",
                f"trace {trace_id}" if trace_id else "",
            )
            if part
        )
        first, newline, rest = line.partition("\n")  # keep a traceback below the line it belongs to
        return f"{first} [{context}]{newline}{rest}"


def configure_logging(level: str = "INFO", json_lines: bool = False, service: str = "") -> None:
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(LogContextFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"{service} " if service else ""
        handler.setFormatter(TextFormatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
