"""Logging set-up shared by the API and the worker: uvicorn's `INFO:     message` look, or JSON lines.

With LOG_FORMAT=json every record is one JSON object carrying, where known, the `request_id` of the HTTP request
(from the client's `X-Request-ID` or made by the API) — the worker logs the ids of the requests it stored, so a
notification can be followed from the API's log to the drain's.
"""

import logging
from datetime import UTC, datetime

import orjson

#: Attributes passed with `extra=` that the JSON format keeps.
CONTEXT_FIELDS = ("request_id", "request_ids", "consumer", "entry")


class _UvicornStyle(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{record.levelname + ':':<9} {record.message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                document[name] = getattr(record, name)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send the service's logs to stderr at `level` in `log_format` ("text" or "json").

    In JSON mode the loggers of uvicorn and arq, which bring handlers of their own, are routed through it too.
    """
    root = logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else _UvicornStyle()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level.upper())
    if log_format == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
