"""Structured logs: one JSON object per line, for log pipelines (Loki, Cloud Logging, Elasticsearch)
that index fields instead of parsing text. Opt-in with VITA_LOG_FORMAT=json; the default stays the
human-readable text line.

Each line carries the time (UTC, RFC 3339), level, logger, message and service, plus, when known, the
OpenTelemetry trace and span ids (tracing on: VITA_OTLP_ENDPOINT) and the session and turn ids
(shared/log_fields.py), so that one turn's lines can be found across every service."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from opentelemetry import trace

from shared import log_fields

# LogRecord attributes that are the record's own, not `extra=` fields a call added.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = ""):
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._service:
            line["service"] = self._service
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        line.update(log_fields.current())
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in line:
                line[name] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def use_format(log_format: str, service: str = "") -> None:
    """Switches the root logger's handlers (set up by `configure_logging`) to `log_format`: "json" or
    "text" (left as configured)."""
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter(service))
