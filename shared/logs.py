"""Logging set-up shared by the API and the worker: uvicorn's `INFO:     message` look, or JSON lines (LOG_FORMAT).

Records carry, where known, the `request_id` of the HTTP request (the client's `X-Request-ID`, else made by the
API); the worker logs the request ids of each batch it stores (JSON: all of them; text: the first few, and how
many more), so a notification can be followed from the API's log to the drain's.
"""

import logging
import re
from datetime import UTC, datetime

import orjson

#: Attributes passed with `extra=` that the JSON format keeps.
CONTEXT_FIELDS = ("request_id", "request_ids", "consumer", "entry")


#: Control characters (C0, DEL, C1): a client can put them in a path or a header, and a raw CR LF in a log message
#: would start a forged line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    r"""Return `text` with every control character written as an escape (`\r`, `\n`, `\x1b`…)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


#: Request ids a text-format line names at most.
TEXT_REQUEST_IDS = 10


class TextFormatter(logging.Formatter):
    """uvicorn's look, one line per record: control characters in the message are escaped, never written raw.

    A record that names the requests it concerns (`request_ids`: the worker's batch line) ends with the first
    TEXT_REQUEST_IDS of them and how many more there were (JSON lists them all): a batch of 500 requests would
    otherwise write a 17 KB line.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Render the level and the escaped message, then the request ids if the record has them."""
        message = record.message
        request_ids = getattr(record, "request_ids", None)
        if request_ids:
            shown = " ".join(map(str, request_ids[:TEXT_REQUEST_IDS]))
            more = len(request_ids) - TEXT_REQUEST_IDS
            message += f" (requests {shown} and {more} more)" if more > 0 else f" (requests {shown})"
        return f"{record.levelname + ':':<9} {escape_controls(message)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, exception.

    orjson writes control characters inside strings as escapes, so a record is always exactly one line.
    """

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
    uvicorn's access line is silenced in both formats: the API's own (`api.access`, with the request's id) is the
    one line per request, and ACCESS_LOG=false turns that off.
    """
    root = logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # it logs at INFO only
    if log_format == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
