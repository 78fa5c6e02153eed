"""GC Notify's bulk send over HTTP: every row stored with its job in one transaction, or nothing; the job routes."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import job_store, keys, partitions, ratelimits
from shared.db import create_engine
from shared.settings import Settings
from tests.helpers import TEST_SECRET_KEY, Tenant, make_tenant, notify_headers, notify_key

EMAIL_TEMPLATE = {"name": "welcome", "subject": "Hi ((name))", "body": "Hello ((name))"}
URL = "/v2/notifications/bulk"
SMS_TEMPLATE = {"name": "code", "type": "sms", "body": "Your code is ((code))"}


def _message(response: httpx.Response) -> str:
    body = response.json()
    assert body["status_code"] == response.status_code
    return str(body["errors"][0]["message"])


@pytest.fixture
async def templates(client: httpx.AsyncClient, tenant: Tenant) -> tuple[str, str]:
    """An email and an sms template of `tenant`'s service."""
    native = {"Authorization": f"Bearer {tenant.key}"}
    email = await client.post("/templates/v1/", json=EMAIL_TEMPLATE, headers=native)
    sms = await client.post("/templates/v1/", json=SMS_TEMPLATE, headers=native)
    return email.json()["id"], sms.json()["id"]


async def _job_rows(engine: AsyncEngine, job_id: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text('SELECT id, "to", personalization, type, reference FROM notifications WHERE job_id = :j ORDER BY id'),
            {"j": job_id},
        )
        return [tuple(row) for row in found]


async def _counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        jobs = (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one()
        rows = (await conn.execute(text("SELECT count(*) FROM notifications"))).scalar_one()
    return int(jobs), int(rows)


async def test_rows_and_csv_store_every_row_with_its_job(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine, tenant: Tenant
) -> None:
    email, sms = templates
    rows = [["Email Address", "name"], ["a@example.com", "Ann"], ["b@example.com", "Bob, Jr"]]
    sent = await notify.post(
        "/v2/notifications/bulk", json={"name": "January", "template_id": email, "rows": rows, "reference": "r1"}
    )
    assert sent.status_code == 201, sent.text
    job = sent.json()["data"]
    assert (job["original_file_name"], job["notification_count"], job["job_status"]) == ("January", 2, "finished")
    assert (job["template"], job["template_version"], job["template_type"]) == (email, 1, "email")
    assert (job["service"], job["scheduled_for"]) == (str(tenant.service_id), None)
    stored = await _job_rows(engine, job["id"])
    assert [row[1:] for row in stored] == [
        ("a@example.com", {"name": "Ann"}, "email", "r1"),
        ("b@example.com", {"name": "Bob, Jr"}, "email", "r1"),
    ]
    # one id range: the rows' ids share a stem, the row's index last
    assert [UUID(str(row[0])).bytes[:13] for row in stored] == [UUID(str(stored[0][0])).bytes[:13]] * 2
    assert [UUID(str(row[0])).int & 0xFFFFFF for row in stored] == [0, 1]

    by_csv = await notify.post(
        "/v2/notifications/bulk",
        json={"name": "codes.csv", "template_id": sms, "csv": "phone_number,code\n+447700900123,1\n+447700900124,2\n"},
    )
    assert by_csv.status_code == 201, by_csv.text
    assert [row[1:3] for row in await _job_rows(engine, by_csv.json()["data"]["id"])] == [
        ("+447700900123", {"code": "1"}),
        ("+447700900124", {"code": "2"}),
    ]

    # a job's notification is readable by id (v2 and native), carrying its job
    got = await notify.get(f"/v2/notifications/{stored[1][0]}")
    assert got.status_code == 200, got.text
    assert (got.json()["email_address"], got.json()["body"], got.json()["job_id"]) == (
        "b@example.com",
        "Hello Bob, Jr",
        job["id"],
    )
    native = await notify.get(f"/notifications/v1/{stored[1][0]}", headers={"Authorization": f"Bearer {tenant.key}"})
    assert native.status_code == 200, native.text
    assert native.json()["job_id"] == job["id"]

    # the listing leaves jobs out unless include_jobs=true
    assert (await notify.get("/v2/notifications")).json()["notifications"] == []
    listed = (await notify.get("/v2/notifications", params={"include_jobs": "true"})).json()["notifications"]
    assert len(listed) == 4
    assert {n["job_id"] for n in listed} == {job["id"], by_csv.json()["data"]["id"]}


async def test_one_bad_row_refuses_the_whole_job(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine
) -> None:
    email, _ = templates
    rows = [["email address", "name"], ["a@example.com", "Ann"], ["not an email", "Bob"], ["c@example.com", ""]]
    refused = await notify.post("/v2/notifications/bulk", json={"name": "j", "template_id": email, "rows": rows})
    assert refused.status_code == 400, refused.text
    assert _message(refused) == (
        "Some rows have errors. Row 1 - `email address`: invalid recipient. Row 2 - `name`: Missing."
    )
    missing = await notify.post(
        "/v2/notifications/bulk", json={"name": "j", "template_id": email, "csv": "email address\na@example.com"}
    )
    assert (missing.status_code, _message(missing)) == (400, "Missing column headers: name")
    assert await _counts(engine) == (0, 0)  # no job, no notification


@pytest.mark.parametrize("sources", [{}, {"rows": [["email address"], ["a@x.com"]], "csv": "email address\na@x.com"}])
async def test_neither_or_both_of_rows_and_csv(
    notify: httpx.AsyncClient, templates: tuple[str, str], sources: dict[str, Any]
) -> None:
    refused = await notify.post("/v2/notifications/bulk", json={"name": "j", "template_id": templates[0], **sources})
    assert (refused.status_code, _message(refused)) == (400, "You should specify either rows or csv")


async def test_a_scheduled_job_keeps_its_rows_out_of_notifications_and_can_be_cancelled(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine
) -> None:
    body = {
        "name": "later",
        "template_id": templates[1],
        "rows": [["phone number", "code"], ["+447700900123", "1"], ["+447700900124", "2"]],
        "scheduled_for": "2099-01-01T00:00:00",
    }
    past = await notify.post("/v2/notifications/bulk", json=body)
    assert _message(past) == "scheduled_for datetime can only be up to 96 hours in the future"
    when = datetime.now(UTC) + timedelta(hours=1)
    body["scheduled_for"] = when.isoformat()
    sent = await notify.post("/v2/notifications/bulk", json=body)
    assert sent.status_code == 201, sent.text
    job = sent.json()["data"]
    assert (job["job_status"], job["notification_count"]) == ("scheduled", 2)
    assert datetime.fromisoformat(job["scheduled_for"]) == when
    assert await _counts(engine) == (1, 0)  # the job, none of its notifications
    async with engine.connect() as conn:
        kept = (await conn.execute(text("SELECT count(*) FROM job_files WHERE job_id = :j"), {"j": job["id"]})).one()
    assert kept == (1,)
    got = (await notify.get(f"{URL}/{job['id']}")).json()["data"]
    assert (got["job_status"], got["statistics"]) == ("scheduled", [])

    cancelled = await notify.delete(f"{URL}/{job['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["data"]["job_status"] == "cancelled"
    again = await notify.delete(f"{URL}/{job['id']}")
    assert again.json()["errors"][0]["error"] == "JobAlreadyCancelledError"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM job_files"))).scalar_one() == 0
    assert await _counts(engine) == (1, 0)


async def test_more_than_50000_rows_is_a_400(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine
) -> None:
    rows = [["phone number", "code"], *[["+447700900123", "1"]] * 50_001]
    by_rows = await notify.post("/v2/notifications/bulk", json={"name": "b", "template_id": templates[1], "rows": rows})
    assert by_rows.status_code == 400, by_rows.text
    assert "Maximum number of rows allowed is 50000" in _message(by_rows)
    csv = "phone number,code\n" + "+447700900123,1\n" * 50_001
    by_csv = await notify.post("/v2/notifications/bulk", json={"name": "big", "template_id": templates[1], "csv": csv})
    assert (by_csv.status_code, _message(by_csv)) == (400, "Too many rows. Maximum number of rows allowed is 50000")
    assert await _counts(engine) == (0, 0)


async def test_get_list_and_cancel_jobs_of_the_service_only(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine, redis: Redis, app: Any
) -> None:
    made = []
    rows = [["phone number", "code"], ["+447700900123", "1"]]
    for name in ("first", "second"):
        sent = await notify.post(URL, json={"name": name, "template_id": templates[1], "rows": rows})
        assert sent.status_code == 201, sent.text
        made.append(sent.json()["data"])

    one = await notify.get(f"/v2/notifications/bulk/{made[0]['id']}")
    assert one.status_code == 200, one.text
    assert one.json()["data"] == {**made[0], "statistics": [{"status": "created", "count": 1}]}

    listed = await notify.get("/v2/notifications/bulk")
    assert listed.status_code == 200, listed.text
    assert [job["id"] for job in listed.json()["bulk_jobs"]] == [made[1]["id"], made[0]["id"]]  # newest first
    assert listed.json()["links"] == {
        "current": "http://localhost:8000/v2/notifications/bulk",
        "next": f"http://localhost:8000/v2/notifications/bulk?older_than={made[0]['id']}",
    }
    older = (await notify.get("/v2/notifications/bulk", params={"older_than": made[1]["id"]})).json()
    assert [job["id"] for job in older["bulk_jobs"]] == [made[0]["id"]]
    unknown = await notify.get("/v2/notifications/bulk", params={"older_than": str(uuid4())})
    assert (unknown.status_code, _message(unknown)) == (400, "older_than Job does not exist for this service")

    cancel = await notify.delete(f"/v2/notifications/bulk/{made[0]['id']}")
    assert cancel.status_code == 400, cancel.text
    assert cancel.json()["errors"][0]["error"] == "JobCancellationNotAllowedError"

    other = await make_tenant(engine, redis, "tenant-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000") as stranger:
        stranger.headers.update(notify_headers(notify_key(other)))
        for response in (
            await stranger.get(f"/v2/notifications/bulk/{made[0]['id']}"),
            await stranger.delete(f"/v2/notifications/bulk/{made[0]['id']}"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["errors"][0] == {"error": "JobNotFoundError", "message": "Job not found"}
        assert (await stranger.get("/v2/notifications/bulk")).json()["bulk_jobs"] == []
    assert (await notify.get("/v2/notifications/bulk/not-a-uuid")).status_code == 400


async def test_postgres_down_is_a_503_and_nothing_stored(own_servers: Any) -> None:
    pg, redis_server = own_servers
    settings = Settings(
        database_url=pg.url,
        redis_url=redis_server.url,
        secret_key=TEST_SECRET_KEY,
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = create_engine(pg.url)
    redis = Redis.from_url(redis_server.url)
    try:
        tenant = await make_tenant(engine, redis, "bulk-during-outage")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                made = await client.post("/templates/v1/", headers=tenant.headers, json=SMS_TEMPLATE)
                assert made.status_code == 201, made.text
                rows = [["phone number", "code"], ["+447700900123", "1"]]
                body = {"name": "j", "template_id": made.json()["id"], "rows": rows}
                headers = notify_headers(notify_key(tenant))
                # the token is checked once while Postgres is up: during the outage its key is known
                assert (await client.get("/v2/notifications/bulk", headers=headers)).status_code == 200
                pg.stop(mode="immediate")
                refused = await client.post("/v2/notifications/bulk", headers=headers, json=body)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"]
                assert "nothing of this job was stored" in _message(refused)
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_a_job_larger_than_the_whole_rate_limit_is_a_413(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 2)
    rows = [["phone number", "code"], *[["+447700900123", "1"]] * 3]
    refused = await notify.post(URL, json={"name": "j", "template_id": templates[1], "rows": rows})
    assert refused.status_code == 413, refused.text
    assert "more than your service's whole rate limit of 2" in _message(refused)
    assert await _counts(engine) == (0, 0)
    accepted = await notify.post(URL, json={"name": "j", "template_id": templates[1], "rows": rows[:3]})
    assert accepted.status_code == 201, accepted.text


async def test_a_job_takes_its_rows_from_the_rate_limit_and_one_that_does_not_fit_is_a_429(
    notify: httpx.AsyncClient,
    client: httpx.AsyncClient,
    templates: tuple[str, str],
    engine: AsyncEngine,
    redis: Redis,
    tenant: Tenant,
) -> None:
    await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 10)
    rows = [["phone number", "code"], *[["+447700900123", "1"]] * 6]
    first = await notify.post(URL, json={"name": "six", "template_id": templates[1], "rows": rows})
    assert first.status_code == 201, first.text
    second = await notify.post(URL, json={"name": "six more", "template_id": templates[1], "rows": rows})
    assert second.status_code == 429, second.text
    assert int(second.headers["retry-after"]) >= 1
    assert await _counts(engine) == (1, 6)  # nothing of the refused job
    assert await redis.xlen(keys.STREAM) == 0  # a job's charge queues nothing
    # the job's six tokens are the ones /multiple counts: four are left, not five
    native = {"Authorization": f"Bearer {tenant.key}"}
    item = {"to": "+447700900123", "personalization": {}}
    five = await client.post("/notifications/v1/multiple", json=[item] * 5, headers=native)
    assert five.status_code == 429, five.text
    four = await client.post("/notifications/v1/multiple", json=[item] * 4, headers=native)
    assert four.status_code == 201, four.text
    assert await redis.xlen(keys.STREAM) == 1


async def test_a_row_rendering_past_max_rendered_length_refuses_the_job(
    notify: httpx.AsyncClient, client: httpx.AsyncClient, tenant: Tenant, engine: AsyncEngine
) -> None:
    native = {"Authorization": f"Bearer {tenant.key}"}
    big = {"name": "big", "subject": "s", "body": "((name))" * 6}
    made = await client.post("/templates/v1/", json=big, headers=native)
    assert made.status_code == 201, made.text
    rows = [["email address", "name"], ["a@example.com", "short"], ["b@example.com", "x" * 4000]]
    refused = await notify.post(URL, json={"name": "j", "template_id": made.json()["id"], "rows": rows})
    assert refused.status_code == 400, refused.text
    assert _message(refused) == (
        "Some rows have errors. Row 1 - renders a template of 24001 characters, longer than MAX_RENDERED_LENGTH=20000."
    )
    assert await _counts(engine) == (0, 0)
    bad_flag = await notify.get("/v2/notifications", params={"include_jobs": "maybe"})
    assert (bad_flag.status_code, _message(bad_flag)) == (400, "include_jobs maybe is not of type boolean")


async def test_a_job_on_a_day_without_its_partition_makes_it_and_is_stored(
    notify: httpx.AsyncClient, templates: tuple[str, str], engine: AsyncEngine
) -> None:
    today = partitions.today()
    async with engine.begin() as conn:  # as a fresh database or a clock step leaves it: today's partition is missing
        await conn.execute(text(f"DROP TABLE IF EXISTS {partitions.name_of(today)}"))
    job_store._KNOWN_DAYS.clear()

    sent = await notify.post(
        "/v2/notifications/bulk",
        json={
            "name": "today",
            "template_id": templates[0],
            "rows": [["email address", "name"], ["a@example.com", "A"]],
        },
    )

    assert sent.status_code == 201, sent.text
    assert len(await _job_rows(engine, sent.json()["data"]["id"])) == 1
