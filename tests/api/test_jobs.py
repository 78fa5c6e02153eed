"""Native jobs over HTTP (`/notifications/v1/jobs`): a streamed CSV or NDJSON body stored all or nothing, in Postgres.

What a client sees (status, body) and what Postgres holds afterwards (jobs, notifications, job_files, job_keys).
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import native_jobs
from api.main import create_app
from shared import job_store, ratelimits
from shared.settings import Settings
from tests.helpers import Tenant, make_tenant, notify_headers, notify_key, wait_for

URL = "/notifications/v1/jobs"
CSV = {"Content-Type": "text/csv"}
NDJSON = {"Content-Type": "application/x-ndjson"}
EMAIL_TEMPLATE = {"name": "welcome", "subject": "Hi ((name))", "body": "Hello ((name))"}
SMS_TEMPLATE = {"name": "code", "type": "sms", "body": "Your code is ((code))"}


@pytest.fixture
async def email(client: httpx.AsyncClient) -> str:
    """An email template of `tenant`'s service, with one placeholder, `name`."""
    made = await client.post("/templates/v1/", json=EMAIL_TEMPLATE)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


@pytest.fixture
async def sms(client: httpx.AsyncClient) -> str:
    """An sms template of `tenant`'s service, with one placeholder, `code`."""
    made = await client.post("/templates/v1/", json=SMS_TEMPLATE)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def _csv(count: int, header: str = "to,name", bad: dict[int, str] | None = None) -> bytes:
    """A CSV of `count` valid email rows (row N to `N@example.com`); `bad` replaces row N's line."""
    lines = [header]
    for number in range(1, count + 1):
        lines.append((bad or {}).get(number, f"{number}@example.com,Name {number}"))
    return ("\n".join(lines) + "\n").encode()


async def _post(
    client: httpx.AsyncClient,
    template_id: str,
    content: bytes | AsyncIterator[bytes],
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    return await client.post(
        URL,
        params={"template_id": template_id, "name": "job", **params},
        content=content,
        headers=CSV if headers is None else headers,
    )


async def _job_rows(engine: AsyncEngine, job_id: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text('SELECT id, "to", personalization, type, job_id FROM notifications WHERE job_id = :j ORDER BY id'),
            {"j": job_id},
        )
        return [tuple(row) for row in found]


async def _counts(engine: AsyncEngine) -> tuple[int, int, int]:
    """Jobs, notifications and kept job files in Postgres."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM notifications), "
                "(SELECT count(*) FROM job_files)"
            )
        )
        jobs, notifications, files = found.one()
    return int(jobs), int(notifications), int(files)


def _assert_contiguous(rows: list[tuple[Any, ...]]) -> None:
    """One stem for every id of the job, the row's index (from 0) in the last 24 bits."""
    stems = {UUID(str(row[0])).bytes[:13] for row in rows}
    assert len(stems) == 1
    assert [UUID(str(row[0])).int & 0xFFFFFF for row in rows] == list(range(len(rows)))


@asynccontextmanager
async def _app_client(settings: Settings, tenant: Tenant, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app of its own, with `changes` to the suite's settings."""
    app = create_app(settings.model_copy(update=changes))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=tenant.headers) as client:
            yield client


async def test_a_csv_job_stores_every_row_with_its_job_and_is_readable_at_once(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, tenant: Tenant
) -> None:
    body = b'to,name,ignored\na@example.com,Ann,x\nb@example.com,"Bob, Jr",y\nc@example.com,Cy,z\n'
    sent = await _post(client, email, body, name="January")
    assert sent.status_code == 201, sent.text
    job = sent.json()
    assert set(job) == {"id", "name", "status", "rows", "template", "scheduled_for", "created_at", "notification_ids"}
    assert (job["name"], job["status"], job["rows"], job["scheduled_for"]) == ("January", "stored", 3, None)
    assert job["template"] == {"id": email, "version": 1}
    stored = await _job_rows(engine, job["id"])
    assert [row[1:] for row in stored] == [
        ("a@example.com", {"name": "Ann"}, "email", UUID(job["id"])),
        ("b@example.com", {"name": "Bob, Jr"}, "email", UUID(job["id"])),
        ("c@example.com", {"name": "Cy"}, "email", UUID(job["id"])),
    ]
    _assert_contiguous(stored)
    assert job["notification_ids"] == {"first": str(stored[0][0]), "last": str(stored[-1][0])}

    # read your write: any of the job's notifications, by id, on the native and the v2 routes
    native = await client.get(f"/notifications/v1/{stored[1][0]}")
    assert native.status_code == 200, native.text
    assert (native.json()["to"], native.json()["body"], native.json()["job_id"]) == (
        "b@example.com",
        "Hello Bob, Jr",
        job["id"],
    )
    v2 = await client.get(f"/v2/notifications/{stored[2][0]}", headers=notify_headers(notify_key(tenant)))
    assert v2.status_code == 200, v2.text
    assert (v2.json()["email_address"], v2.json()["job_id"]) == ("c@example.com", job["id"])


async def test_an_ndjson_job_stores_every_line(client: httpx.AsyncClient, sms: str, engine: AsyncEngine) -> None:
    lines = [
        {"to": "+447700900123", "personalization": {"code": "1"}},
        {"to": "+447700900124", "personalization": {"code": "2", "extra": "kept"}, "template_id": sms},
        {"to": "+447700900125", "personalization": {"code": "3"}},
    ]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n"
    sent = await _post(client, sms, body, NDJSON)
    assert sent.status_code == 201, sent.text
    assert (sent.json()["status"], sent.json()["rows"]) == ("stored", 3)
    stored = await _job_rows(engine, sent.json()["id"])
    assert [row[1:4] for row in stored] == [
        ("+447700900123", {"code": "1"}, "sms"),
        ("+447700900124", {"code": "2", "extra": "kept"}, "sms"),
        ("+447700900125", {"code": "3"}, "sms"),
    ]
    _assert_contiguous(stored)


@pytest.mark.parametrize("header", ["to", "Email Address", "email_address", " EMAIL-ADDRESS "])
async def test_the_recipient_column_is_matched_as_notify_matches_it(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, header: str
) -> None:
    sent = await _post(client, email, f"{header},Name\r\na@example.com,Ann\r\n".encode())
    assert sent.status_code == 201, sent.text
    assert [row[1:3] for row in await _job_rows(engine, sent.json()["id"])] == [("a@example.com", {"name": "Ann"})]


async def test_sms_rows_take_a_phone_number_column(client: httpx.AsyncClient, sms: str, engine: AsyncEngine) -> None:
    sent = await _post(client, sms, b"Phone Number,code\n+447700900123,42\n")
    assert sent.status_code == 201, sent.text
    assert [row[1:4] for row in await _job_rows(engine, sent.json()["id"])] == [
        ("+447700900123", {"code": "42"}, "sms")
    ]


async def test_one_bad_row_past_the_first_batch_stores_nothing(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine
) -> None:
    count = job_store.JOB_BATCH_ROWS + 1_000  # the first batch is COPYed before the bad row is read
    refused = await _post(client, email, _csv(count, bad={count - 2: f"{count - 2}@example.com,"}))
    assert refused.status_code == 422, refused.text
    assert refused.json() == {
        "detail": [{"type": "invalid_row", "loc": ["body", "row", count - 2], "msg": "`name`: Missing"}]
    }
    assert await _counts(engine) == (0, 0, 0)

    ndjson = b"".join(
        orjson.dumps({"to": f"{n}@example.com", "personalization": {"name": "N"}}) + b"\n" for n in range(count)
    )
    ndjson += b'{"to": "last@example.com"}\n'
    refused = await _post(client, email, ndjson, NDJSON)
    assert refused.status_code == 422, refused.text
    assert [(e["loc"], e["msg"]) for e in refused.json()["detail"]] == [(["body", "row", count + 1], "`name`: Missing")]
    assert await _counts(engine) == (0, 0, 0)


async def test_the_error_list_is_capped(client: httpx.AsyncClient, email: str, engine: AsyncEngine) -> None:
    refused = await _post(client, email, _csv(200, bad={n: f"{n}@example.com," for n in range(51, 201)}))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert len(detail) == 100
    assert [e["loc"] for e in detail[:99]] == [["body", "row", n] for n in range(51, 150)]
    assert {e["type"] for e in detail[:99]} == {"invalid_row"}
    assert detail[99]["type"] == "too_many_errors"
    assert "51 more" in detail[99]["msg"]
    assert await _counts(engine) == (0, 0, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"to\na@example.com\n", "Missing column headers: name"),
        (b"email,name\na@example.com,A\n", "Missing column headers"),
        (b"to,name\n", "no rows"),
        (b"to,name\n\xff\xfe,A\n", "UTF-8"),
        (b"to,name,to\na,b,c\n", "Duplicate column headers"),
    ],
)
async def test_a_file_that_cannot_be_read_is_a_400(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, body: bytes, message: str
) -> None:
    refused = await _post(client, email, body)
    assert refused.status_code == 400, refused.text
    assert message in refused.json()["detail"]
    assert await _counts(engine) == (0, 0, 0)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
async def test_a_body_neither_csv_nor_ndjson_is_a_415(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    refused = await _post(client, email, b"to,name\na@example.com,A\n", headers)
    assert refused.status_code == 415, refused.text
    assert "CSV" in refused.json()["detail"]
    assert await _counts(engine) == (0, 0, 0)


async def test_an_unknown_template_or_another_services_is_a_422(
    client: httpx.AsyncClient, app: FastAPI, engine: AsyncEngine, redis: Redis
) -> None:
    other = await make_tenant(engine, redis, "tenant-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=other.headers) as stranger:
        theirs = (await stranger.post("/templates/v1/", json=EMAIL_TEMPLATE)).json()["id"]
    for template_id in (str(uuid4()), theirs):
        refused = await _post(client, template_id, b"to,name\na@example.com,A\n")
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["query", "template_id"]
    assert (await _post(client, "not-a-uuid", b"to,name\na@example.com,A\n")).status_code == 422
    assert await _counts(engine) == (0, 0, 0)


async def test_a_body_past_max_body_bytes_is_a_job_but_not_a_multiple(
    settings: Settings, tenant: Tenant, engine: AsyncEngine
) -> None:
    async with _app_client(settings, tenant, max_body_bytes=2048) as client:
        template = (await client.post("/templates/v1/", json=EMAIL_TEMPLATE)).json()["id"]
        body = _csv(500)
        assert len(body) > 4 * 2048

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        declared = await _post(client, template, body)  # with its Content-Length
        assert declared.status_code == 201, declared.text
        streamed = await _post(client, template, chunks())  # chunked
        assert streamed.status_code == 201, streamed.text
        assert await _counts(engine) == (2, 1000, 0)

        items = [{"to": f"{n}@example.com", "personalization": {"name": "x" * 20}} for n in range(100)]
        multiple = await client.post("/notifications/v1/multiple", content=orjson.dumps(items))
        assert multiple.status_code == 413, multiple.text
        assert "larger than 2048 bytes" in multiple.json()["detail"]


async def test_more_rows_than_max_job_rows_is_a_400_and_nothing_stored(
    settings: Settings, tenant: Tenant, engine: AsyncEngine
) -> None:
    limit = job_store.JOB_BATCH_ROWS + 2  # a batch is COPYed before the row too many is read
    async with _app_client(settings, tenant, max_job_rows=limit) as client:
        template = (await client.post("/templates/v1/", json=EMAIL_TEMPLATE)).json()["id"]
        refused = await _post(client, template, _csv(limit + 1))
        assert refused.status_code == 400, refused.text
        assert f"Maximum number of rows allowed is {limit}" in refused.json()["detail"]
        lines = b"".join(
            orjson.dumps({"to": f"{n}@example.com", "personalization": {"name": "N"}}) + b"\n" for n in range(limit + 1)
        )
        refused = await _post(client, template, lines, NDJSON)
        assert refused.status_code == 400, refused.text
        assert await _counts(engine) == (0, 0, 0)
        accepted = await _post(client, template, _csv(limit))
        assert accepted.status_code == 201, accepted.text
        assert await _counts(engine) == (1, limit, 0)


async def test_a_job_larger_than_the_whole_rate_limit_is_a_413(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 2)
    refused = await _post(client, email, _csv(3))
    assert refused.status_code == 413, refused.text
    assert "rate limit of 2" in refused.json()["detail"]
    assert await _counts(engine) == (0, 0, 0)
    assert (await _post(client, email, _csv(2))).status_code == 201


async def test_a_row_rendering_past_max_rendered_length_refuses_the_job(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    made = await client.post("/templates/v1/", json={"name": "big", "subject": "s", "body": "((name))" * 6})
    assert made.status_code == 201, made.text
    body = f"to,name\na@example.com,short\nb@example.com,{'x' * 4000}\n".encode()
    refused = await _post(client, made.json()["id"], body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == [
        {
            "type": "invalid_row",
            "loc": ["body", "row", 2],
            "msg": "renders a template of 24001 characters, longer than MAX_RENDERED_LENGTH=20000",
        }
    ]
    line = orjson.dumps({"to": "b@example.com", "personalization": {"name": "x" * 4000}})
    refused = await _post(client, made.json()["id"], line, NDJSON)
    assert refused.status_code == 422, refused.text
    assert "MAX_RENDERED_LENGTH" in refused.json()["detail"][0]["msg"]
    assert await _counts(engine) == (0, 0, 0)


@pytest.mark.parametrize(
    "when",
    [
        lambda now: (now - timedelta(minutes=5)).isoformat(),
        lambda now: (now + timedelta(hours=97)).isoformat(),
        lambda now: "tomorrow",
    ],
)
async def test_scheduled_for_out_of_bounds_is_refused(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, when: Any
) -> None:
    refused = await _post(client, email, _csv(2), scheduled_for=when(datetime.now(UTC)))
    assert 400 <= refused.status_code < 500, refused.text
    assert refused.json()["detail"][0]["loc"] == ["query", "scheduled_for"]
    assert await _counts(engine) == (0, 0, 0)


async def test_a_scheduled_job_keeps_its_rows_out_of_notifications_until_cancelled(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine
) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    sent = await _post(client, email, _csv(job_store.JOB_BATCH_ROWS + 1), scheduled_for=when.isoformat())
    assert sent.status_code == 201, sent.text
    job = sent.json()
    assert (job["status"], job["rows"]) == ("scheduled", job_store.JOB_BATCH_ROWS + 1)
    assert datetime.fromisoformat(job["scheduled_for"]) == when
    assert await _counts(engine) == (1, 0, 2)  # the job and its file (two batches), none of its notifications

    got = await client.get(f"{URL}/{job['id']}")
    assert got.status_code == 200, got.text
    assert (got.json()["status"], got.json()["queued"], got.json()["stored"]) == ("scheduled", 0, 0)

    cancelled = await client.post(f"{URL}/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = await client.post(f"{URL}/{job['id']}/cancel")
    assert again.status_code == 409, again.text
    assert "cancelled" in again.json()["detail"]
    assert await _counts(engine) == (1, 0, 0)


async def test_get_counts_and_a_stored_job_cannot_be_cancelled(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine
) -> None:
    job = (await _post(client, email, _csv(7))).json()
    got = await client.get(f"{URL}/{job['id']}")
    assert got.status_code == 200, got.text
    assert got.json() == {**job, "queued": 7, "stored": 7}
    refused = await client.post(f"{URL}/{job['id']}/cancel")
    assert refused.status_code == 409, refused.text
    assert "stored" in refused.json()["detail"]
    assert (await client.get(f"{URL}/{uuid4()}")).status_code == 404
    assert (await client.post(f"{URL}/{uuid4()}/cancel")).status_code == 404
    assert await _counts(engine) == (1, 7, 0)


async def test_list_newest_first_and_older_than(client: httpx.AsyncClient, email: str) -> None:
    made = []
    for name in ("first", "second", "third"):
        sent = await _post(client, email, _csv(1), name=name)
        assert sent.status_code == 201, sent.text
        made.append(sent.json()["id"])
    listed = await client.get(URL)
    assert listed.status_code == 200, listed.text
    jobs = listed.json()["jobs"]
    assert [job["id"] for job in jobs] == made[::-1]
    assert [(job["name"], job["queued"], job["stored"]) for job in jobs] == [
        ("third", 1, 1),
        ("second", 1, 1),
        ("first", 1, 1),
    ]
    older = await client.get(URL, params={"older_than": made[1]})
    assert [job["id"] for job in older.json()["jobs"]] == [made[0]]
    assert (await client.get(URL, params={"older_than": str(uuid4())})).status_code == 404


async def test_another_service_cannot_see_or_cancel_a_job(
    client: httpx.AsyncClient, email: str, app: FastAPI, engine: AsyncEngine, redis: Redis
) -> None:
    when = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    job = (await _post(client, email, _csv(2), scheduled_for=when)).json()
    other = await make_tenant(engine, redis, "tenant-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=other.headers) as stranger:
        for response in (
            await stranger.get(f"{URL}/{job['id']}"),
            await stranger.post(f"{URL}/{job['id']}/cancel"),
            await stranger.get(URL, params={"older_than": job["id"]}),
        ):
            assert response.status_code == 404, response.text
            assert "detail" in response.json()
        assert (await stranger.get(URL)).json() == {"jobs": []}
    assert (await client.get(f"{URL}/{job['id']}")).json()["status"] == "scheduled"


async def test_an_idempotency_key_replays_the_same_job(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine
) -> None:
    keyed = {**CSV, "Idempotency-Key": "job-1"}
    first = await _post(client, email, _csv(3), keyed)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = await _post(client, email, _csv(3), keyed)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert await _counts(engine) == (1, 3, 0)

    for other_body, params in ((_csv(4), {}), (_csv(3), {"name": "renamed"})):
        mismatch = await _post(client, email, other_body, keyed, **params)
        assert mismatch.status_code == 422, mismatch.text
        assert "Idempotency-Key" in mismatch.json()["detail"]
    assert await _counts(engine) == (1, 3, 0)
    # a bad key is a 400, another key another job
    assert (await _post(client, email, _csv(1), {**CSV, "Idempotency-Key": "\x7f"})).status_code == 400
    assert (await _post(client, email, _csv(3), {**CSV, "Idempotency-Key": "job-2"})).status_code == 201
    assert await _counts(engine) == (2, 6, 0)


async def test_a_key_whose_first_upload_is_in_flight_is_a_409(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine
) -> None:
    body = _csv(job_store.JOB_BATCH_ROWS + 10)
    reading = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield body[:1000]
        reading.set()  # asked for more: the first request's transaction holds the key
        await release.wait()
        yield body[1000:]

    keyed = {**CSV, "Idempotency-Key": "slow-1"}
    first = asyncio.create_task(_post(client, email, slow(), keyed))
    try:
        await asyncio.wait_for(reading.wait(), 60)
        second = await _post(client, email, body, keyed)
        assert second.status_code == 409, second.text
        assert "Idempotency-Key" in second.json()["detail"]
    finally:
        release.set()
        answered = await first
    assert answered.status_code == 201, answered.text
    replay = await _post(client, email, body, keyed)
    assert (replay.status_code, replay.json()["id"]) == (201, answered.json()["id"])
    assert await _counts(engine) == (1, job_store.JOB_BATCH_ROWS + 10, 0)


class UploadBrokeError(Exception):
    """A client's body that fails mid-upload (raised out of the ASGI `receive` by httpx's ASGITransport)."""


async def test_a_client_failing_mid_upload_stores_nothing(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine
) -> None:
    body = _csv(job_store.JOB_BATCH_ROWS * 2)

    async def broken() -> AsyncIterator[bytes]:
        yield body[: len(body) * 3 // 4]  # more than a batch: a COPY went out
        raise UploadBrokeError

    with pytest.raises(UploadBrokeError):
        await _post(client, email, broken(), {**CSV, "Idempotency-Key": "broken"})
    assert await _counts(engine) == (0, 0, 0)
    retried = await _post(client, email, body, {**CSV, "Idempotency-Key": "broken"})
    assert retried.status_code == 201, retried.text


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_client_that_disconnects_mid_upload_stores_nothing_and_gets_no_500(
    app: FastAPI, tenant: Tenant, email: str, engine: AsyncEngine
) -> None:
    body = _csv(job_store.JOB_BATCH_ROWS * 2)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True}
        for chunk in _chunks(body[: len(body) * 3 // 4], 8192)
    ]
    messages.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "root_path": "",
        "query_string": f"template_id={email}&name=gone".encode(),
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"text/csv"),
            (b"transfer-encoding", b"chunked"),
            (b"authorization", f"Bearer {tenant.key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "app": app,
    }
    await app(scope, receive, send)  # returns: a client gone is no error of the app (the access log's 499)
    assert await _counts(engine) == (0, 0, 0)
    await wait_for(lambda: _no_open_transaction(engine), 30)


async def _no_open_transaction(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state IN ('idle in transaction', 'idle in transaction (aborted)', 'active')"
            )
        )
        return int(found.scalar_one()) == 0


async def test_an_upload_that_stalls_is_a_408_and_stores_nothing(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native_jobs, "IDLE_UPLOAD_MS", 1000)
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield _csv(job_store.JOB_BATCH_ROWS + 100)  # a batch COPYed, then nothing more
        await never.wait()

    refused = await _post(client, email, stalled())
    assert refused.status_code == 408, refused.text
    assert "nothing of this job was stored" in refused.json()["detail"]
    assert await _counts(engine) == (0, 0, 0)
    await wait_for(lambda: _no_open_transaction(engine), 30)


async def test_a_slow_steady_upload_is_not_taken_for_a_stalled_one(
    client: httpx.AsyncClient, email: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native_jobs, "IDLE_UPLOAD_MS", 2000)
    chunks = 40  # 0.1 s apart: the body takes twice the stall limit, a batch is never filled before its end

    async def steady() -> AsyncIterator[bytes]:
        yield b"to,name\n"
        for chunk in range(chunks):
            await asyncio.sleep(0.1)
            yield b"".join(f"{chunk}-{n}@example.com,N\n".encode() for n in range(10))

    sent = await _post(client, email, steady())
    assert sent.status_code == 201, sent.text
    assert await _counts(engine) == (1, chunks * 10, 0)
