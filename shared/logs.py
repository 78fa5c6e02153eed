"""Logging set-up shared by the API and the worker, in uvicorn's `INFO:     message` look."""

import logging


class _UvicornStyle(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{record.levelname + ':':<9} {record.message}"


def configure_logging(level: str) -> None:
    """Send the service's logs to stderr at `level`, unless the host process configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_UvicornStyle())
        root.addHandler(handler)
    root.setLevel(level.upper())
