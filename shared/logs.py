"""Logging set-up shared by the API and the worker: uvicorn's `INFO:     message` look, or JSON lines (LOG_FORMAT).

Records carry, where known, the `request_id` of the HTTP request (the client's `X-Request-ID`, else made by the
API); the worker logs the request ids of each batch it stores (JSON: all of them; text: the first few, and how
many more), so a notification can be followed from the API's log to the drain's. `log_info` writes a line
without a LogRecord when only the service's own handlers would see it (the API's access line, once per request).
"""

import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO, cast

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
        return self.line(record.created, record.levelname, record.name, record.message, vars(record))

    def line(self, created: float, levelname: str, name: str, message: str, context: Mapping[str, object]) -> str:
        """Render one line from its fields (a record's, or `log_info`'s without a record)."""
        request_ids = context.get("request_ids")
        if request_ids:
            ids = cast(Sequence[object], request_ids)
            shown = " ".join(map(str, ids[:TEXT_REQUEST_IDS]))
            more = len(ids) - TEXT_REQUEST_IDS
            message += f" (requests {shown} and {more} more)" if more > 0 else f" (requests {shown})"
        return f"{levelname + ':':<9} {escape_controls(message)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, exception.

    orjson writes control characters inside strings as escapes, so a record is always exactly one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        document = _document(record.created, record.levelname, record.name, record.getMessage(), vars(record))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()

    def line(self, created: float, levelname: str, name: str, message: str, context: Mapping[str, object]) -> str:
        """Render one line from its fields (`log_info`'s, without a record)."""
        return orjson.dumps(_document(created, levelname, name, message, context), default=str).decode()


def _document(
    created: float, levelname: str, name: str, message: str, context: Mapping[str, object]
) -> dict[str, object]:
    document: dict[str, object] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": levelname,
        "logger": name,
        "message": message,
    }
    for field in CONTEXT_FIELDS:
        if field in context:
            document[field] = context[field]
    return document


_FORMATTERS = (TextFormatter, JsonFormatter)


def log_info(logger: logging.Logger, message: str, context: Mapping[str, object]) -> None:
    """Log `message` at INFO with `context` (as `extra=`), as `logger.info` would; without a LogRecord when it can.

    When every handler the line reaches is a plain StreamHandler with this module's formatter (the service's own
    set-up), the line is formatted and written directly; otherwise (pytest's caplog, a handler or filter added by a
    deployment) `logger.info` logs it. The caller checks `logger.isEnabledFor(logging.INFO)` first.
    """
    handlers = _plain_handlers(logger)
    if handlers is None:
        logger.info(message, extra=context)  # no arguments: a `%` in the message is kept as it is
        return
    created = time.time()
    for handler in handlers:
        formatter = cast(TextFormatter | JsonFormatter, handler.formatter)
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(formatter.line(created, "INFO", logger.name, message, context) + handler.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # as StreamHandler.emit: reported on stderr, never raised to the caller
            handler.handleError(logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None, extra=context))
        finally:
            handler.release()


def _plain_handlers(logger: logging.Logger) -> list[logging.StreamHandler[TextIO]] | None:
    """The handlers an INFO record of `logger` reaches, if they are all plain and ours (and there is one), else None."""
    if logger.filters or logger.disabled:
        return None
    found: list[logging.StreamHandler[TextIO]] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if handler.level > logging.INFO:
                continue
            if (
                type(handler) is not logging.StreamHandler
                or handler.filters
                or type(handler.formatter) not in _FORMATTERS
            ):
                return None
            found.append(handler)
        current = current.parent if current.propagate else None
    return found or None


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
