"""One access line per request from a real uvicorn server, in either log format, or none with ACCESS_LOG=false.

And `log_info`'s direct lines are the lines `logging` would write.
"""

import io
import logging
import re
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.embedded import free_port
from shared.logs import JsonFormatter, TextFormatter, log_info
from tests.helpers import ROOT

REQUESTS = 3


def _access_lines(output: str, log_format: str) -> list[str]:
    """The lines of `output` that log one of the test's requests (any logger's)."""
    lines = [line for line in output.splitlines() if "/status/heartbeat" in line]
    if log_format == "json":
        assert all(orjson.loads(line) for line in lines)  # every one a JSON object, none in uvicorn's own look
    return lines


@pytest.mark.parametrize("access_log", ["true", "false"])
@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("uvicorn_flags", [["--no-access-log"], []], ids=["as-deployed", "uvicorn-default"])
def test_each_request_is_logged_once_or_not_at_all(
    worker_env: dict[str, str],
    venv_bin: Path,
    tmp_path: Path,
    access_log: str,
    log_format: str,
    uvicorn_flags: list[str],
) -> None:
    port = free_port()
    output = tmp_path / "api.log"
    env = {**worker_env, "LOG_FORMAT": log_format, "ACCESS_LOG": access_log, "LOG_LEVEL": "INFO"}
    with output.open("wb") as out:
        server = subprocess.Popen(
            [str(venv_bin / "uvicorn"), "api.main:app", "--port", str(port), *uvicorn_flags],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, output.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)  # up: a route this test does not count
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.2)
        for n in range(REQUESTS):
            response = httpx.get(f"http://127.0.0.1:{port}/status/heartbeat", headers={"X-Request-ID": f"once-{n}"})
            assert response.status_code == 204
    finally:
        server.terminate()
        server.wait(timeout=60)

    lines = _access_lines(output.read_text(), log_format)
    if access_log == "false":
        assert lines == []
    else:
        assert len(lines) == REQUESTS, lines
        if log_format == "json":
            assert [orjson.loads(line)["request_id"] for line in lines] == [f"once-{n}" for n in range(REQUESTS)]
            assert all(
                re.fullmatch(rf"GET http://127\.0\.0\.1:{port}/status/heartbeat 204 \d+\.\d{{6}}s", message)
                for message in (orjson.loads(line)["message"] for line in lines)
            ), lines
        else:
            line = rf"INFO:     GET http://127\.0\.0\.1:{port}/status/heartbeat 204 \d+\.\d{{6}}s"
            assert all(re.fullmatch(line, text) for text in lines), lines


def _no_record(*args: object, **kwargs: object) -> logging.LogRecord:
    raise AssertionError("a LogRecord was made")


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_log_info_writes_what_logging_writes(formatter: logging.Formatter, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.Logger("test.log_info", logging.INFO)  # outside the hierarchy: pytest's capture is not there
    logger.addHandler(handler)
    message = "GET http://h/a%20b\x1b[31m 204 0.001254s"
    with monkeypatch.context() as patched:  # the point: no LogRecord for the service's own handlers
        patched.setattr(logger, "makeRecord", _no_record)
        log_info(logger, message, {"request_id": "r-1", "request_ids": ["a", "b"]})
    logger.info(message, extra={"request_id": "r-1", "request_ids": ["a", "b"]})

    direct, recorded = out.getvalue().splitlines()
    if isinstance(formatter, JsonFormatter):
        direct_fields, recorded_fields = orjson.loads(direct), orjson.loads(recorded)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", direct_fields.pop("time"))
        recorded_fields.pop("time")
        assert list(direct_fields) == list(recorded_fields)  # the same fields in the same order
        assert direct_fields == recorded_fields
    else:
        assert direct == recorded
        assert direct == "INFO:     GET http://h/a%20b\\x1b[31m 204 0.001254s (requests a b)"


def test_log_info_makes_a_record_for_any_other_handler(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.log_info.caplog")
    logger.setLevel(logging.INFO)

    log_info(logger, "100% done", {"request_id": "r-2"})

    (record,) = [record for record in caplog.records if record.name == logger.name]
    assert record.getMessage() == "100% done"
    assert record.request_id == "r-2"  # type: ignore[attr-defined]
