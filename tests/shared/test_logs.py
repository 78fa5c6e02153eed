"""One access line per request from a real uvicorn server, in either log format, or none with ACCESS_LOG=false."""

import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.embedded import free_port
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
