"""Request ids: echoed to the client, carried with the stream entry, named by the worker's log; JSON log lines."""

import io
import logging

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from shared import keys
from shared.logs import JsonFormatter, TextFormatter
from tests.helpers import drain_all
from worker.drain import Drain


async def test_request_id_travels_from_api_to_worker_log(
    client: httpx.AsyncClient, redis: Redis, drain: Drain, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.post("/notifications/v1/", json={"to": "me"}, headers={"X-Request-ID": "trace-42"})

    assert response.headers["x-request-id"] == "trace-42"
    ((_, fields),) = await redis.xrange(keys.STREAM)
    assert fields[keys.REQUEST_ID_FIELD] == b"trace-42"
    with caplog.at_level(logging.INFO, logger="worker.drain"):
        await drain_all(drain)
    batches = [record for record in caplog.records if record.getMessage().startswith("stored 1 new")]
    assert [record.request_ids for record in batches] == [["trace-42"]]  # type: ignore[attr-defined]
    (text,) = [TextFormatter().format(record) for record in batches]  # LOG_FORMAT=text names it too
    assert text.endswith(" (requests trace-42)")
    assert orjson.loads(JsonFormatter().format(batches[0]))["request_ids"] == ["trace-42"]


@pytest.mark.parametrize("sent", [None, "", "x" * 65, "bad id with spaces", "ünïcode"])
async def test_missing_or_odd_request_ids_are_replaced(client: httpx.AsyncClient, sent: str | None) -> None:
    headers = {"X-Request-ID": sent.encode()} if sent is not None else {}

    response = await client.get("/status/heartbeat", headers=headers)

    made = response.headers["x-request-id"]
    assert made != sent
    assert len(made) == 32
    assert set(made) <= set("0123456789abcdef")


def test_json_log_lines_carry_the_context() -> None:
    record = logging.makeLogRecord(
        {"name": "api.access", "levelname": "INFO", "msg": "GET %s 204", "args": ("/x",), "request_id": "abc"}
    )

    line = orjson.loads(JsonFormatter().format(record))

    assert line["message"] == "GET /x 204"
    assert line["request_id"] == "abc"
    assert line["level"] == "INFO"
    assert line["logger"] == "api.access"
    assert "time" in line


async def test_a_path_or_host_cannot_forge_a_log_line(client: httpx.AsyncClient) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    access = logging.getLogger("api.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        await client.get("/x%0D%0AINFO:     POST http://localhost/services/v1/ 201 0.001s")
        await client.get("/status/heartbeat", headers={"Host": "evil\r\nINFO:     forged"})
    finally:
        access.removeHandler(handler)
        access.setLevel(level)

    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("INFO:     GET http://localhost:8000/x\\r\\nINFO:")
    assert " 404 " in lines[0]
    assert "evil\\r\\nINFO:     forged" in lines[1]


def test_a_text_batch_line_names_the_first_ids_and_counts_the_rest() -> None:
    record = logging.LogRecord("worker.drain", logging.INFO, __file__, 1, "stored 500 new", None, None)
    record.request_ids = [f"r{index}" for index in range(500)]

    text = TextFormatter().format(record)

    assert text.endswith(" (requests r0 r1 r2 r3 r4 r5 r6 r7 r8 r9 and 490 more)")
    assert len(orjson.loads(JsonFormatter().format(record))["request_ids"]) == 500
