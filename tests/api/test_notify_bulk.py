"""GC Notify's bulk send body: its schema, GC's messages, and its rows checked as v2 sends are."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import NotifyError, NotifyValidationError
from api.govuk.bulk import CSV_MAX_ROWS, BulkRequest, bulk_rules, file_error, job_object, parse_bulk, rows_error
from shared import jobs, queries, tenancy
from shared.recipient_csv import InvalidRowsError, JobFileError, JobRow, chunked, csv_rows
from shared.settings import Settings
from tests.helpers import Tenant

SETTINGS = Settings(database_url=None, redis_url=None)
SERVICE = uuid4()
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
TEMPLATE = str(uuid4())


def _parse(**body: Any) -> BulkRequest:
    return parse_bulk(orjson.dumps(body), SERVICE, SETTINGS, now=NOW)


def _messages(**body: Any) -> list[str]:
    with pytest.raises(NotifyValidationError) as caught:
        _parse(**body)
    return caught.value.messages


def test_rows_become_csv_and_csv_is_taken_as_sent() -> None:
    rows = [["email address", "name"], ["a@example.com", "Smith, Jane"]]
    parsed = _parse(name="January", template_id=TEMPLATE, rows=rows, reference="r1")
    text = b'email address,name\r\na@example.com,"Smith, Jane"\r\n'
    assert parsed == BulkRequest("January", UUID(TEMPLATE), text, None, "r1")
    assert _parse(name="j", template_id=TEMPLATE, csv="email address\na@x.com").csv == b"email address\na@x.com"


@pytest.mark.parametrize(
    "sources",
    [{}, {"rows": [["email address"], ["a@x.com"]], "csv": "email address\na@x.com"}, {"csv": ""}],
    ids=["neither", "both", "empty csv"],
)
def test_exactly_one_of_rows_and_csv(sources: dict[str, Any]) -> None:
    with pytest.raises(NotifyError) as caught:
        _parse(name="j", template_id=TEMPLATE, **sources)
    assert type(caught.value) is NotifyError
    assert caught.value.message == "You should specify either rows or csv"


def test_every_schema_problem_is_listed_in_gcs_words() -> None:
    assert _messages(rows=[["email address"], ["a@x.com"]], colour="red") == [
        "Additional properties are not allowed (colour was unexpected)",
        "name is a required property",
        "template_id is a required property",
    ]
    assert _messages(name=5, template_id="nope", csv=7, reference=["x"], reply_to_id="foo", scheduled_for=42) == [
        "name 5 is not of type string",
        "template_id is not a valid UUID",
        "csv 7 is not of type string",
        'reference ["x"] is not of type string',
        "reply_to_id is not a valid UUID",
        "scheduled_for 42 is not of type string, null",
    ]


def test_rows_hold_a_header_and_1_to_50000_rows_of_strings() -> None:
    job = {"name": "j", "template_id": TEMPLATE}
    assert _messages(**job, rows=[["email address"]]) == ['rows [["email address"]] is too short']
    assert _messages(**job, rows="email address") == ["rows email address is not of type array"]
    assert _messages(**job, rows=[["email address"], ["a@x.com", 5]]) == [
        'rows ["a@x.com",5] is not of type array of strings'
    ]
    too_many = [["email address"]] + [["a@x.com"]] * (CSV_MAX_ROWS + 1)
    assert _messages(name="j", template_id=TEMPLATE, rows=too_many) == [
        "rows has 50001 rows: Too many rows. Maximum number of rows allowed is 50000"
    ]
    assert _parse(name="j", template_id=TEMPLATE, rows=too_many[:-1]).csv.count(b"\r\n") == CSV_MAX_ROWS + 1


def test_scheduled_for_with_gcs_three_messages() -> None:
    base = {"name": "j", "template_id": TEMPLATE, "csv": "email address\na@x.com"}
    assert _parse(**base, scheduled_for="2026-12-04T09:30:00+01:00").scheduled_for == datetime(
        2026, 12, 4, 8, 30, tzinfo=UTC
    )
    assert _parse(**base, scheduled_for="2026-12-03 13:00").scheduled_for == NOW + timedelta(hours=1)  # no zone: UTC
    assert _parse(**base, scheduled_for=None).scheduled_for is None
    assert _messages(**base, scheduled_for="2026-12-03T11:59:59Z") == ["scheduled_for datetime cannot be in the past"]
    assert _messages(**base, scheduled_for=(NOW + timedelta(hours=96, seconds=1)).isoformat()) == [
        "scheduled_for datetime can only be up to 96 hours in the future"
    ]
    assert _parse(**base, scheduled_for=(NOW + timedelta(hours=96)).isoformat()).scheduled_for is not None
    assert _messages(**base, scheduled_for="tomorrow") == [
        "scheduled_for datetime format is invalid. It must be a valid ISO8601 date time format, "
        "https://en.wikipedia.org/wiki/ISO_8601"
    ]
    later = Settings(database_url=None, redis_url=None, jobs_max_schedule_hours_ahead=120)
    body = orjson.dumps(base | {"scheduled_for": (NOW + timedelta(hours=100)).isoformat()})
    assert parse_bulk(body, SERVICE, later, now=NOW).scheduled_for == NOW + timedelta(hours=100)


def test_what_cannot_be_honoured_or_read_is_notifys_bad_request() -> None:
    with pytest.raises(NotifyError, match="Invalid JSON supplied in POST data"):
        parse_bulk(b"{", SERVICE, SETTINGS)
    reply_to = str(uuid4())
    with pytest.raises(NotifyError) as caught:
        _parse(name="j", template_id=TEMPLATE, csv="email address\na@x.com", reply_to_id=reply_to)
    assert caught.value.message == f"reply_to_id {reply_to} does not exist in database for service id {SERVICE}"
    assert _messages(name="", template_id=TEMPLATE, csv="x") == [
        "name must be 1 to 200 characters, without control characters"
    ]


async def _rows(parsed: BulkRequest, template_type: str, *placeholders: str) -> list[JobRow]:
    rows: list[JobRow] = []
    rules = bulk_rules(SETTINGS, template_type, placeholders)
    async for batch in csv_rows(chunked(parsed.csv, 1024), rules, max_listed=100):
        rows.extend(batch)
    return rows


async def test_rows_are_checked_as_v2_sends_and_refused_in_gcs_words() -> None:
    csv = "Phone Number,code\n07700 900123,1\n+447700900124,2\n"
    rows = await _rows(_parse(name="j", template_id=TEMPLATE, csv=csv), "sms", "code")
    assert [row.to for row in rows] == ["07700 900123", "+447700900124"]
    bad = "email address,name\na@x.com,A\nnot-an-address,B\nb@x.com,\nc@x.com," + "x" * 5000 + "\n"
    with pytest.raises(InvalidRowsError) as caught:
        await _rows(_parse(name="j", template_id=TEMPLATE, csv=bad), "email", "name")
    assert rows_error(caught.value).message == (
        "Some rows have errors. Row 1 - `email address`: invalid recipient. Row 2 - `name`: Missing. "
        "Row 3 - personalisation name must be at most 4096 characters, without control characters."
    )
    with pytest.raises(JobFileError) as missing:
        await _rows(_parse(name="j", template_id=TEMPLATE, csv="to,name\na@x.com,A\n"), "email", "name")
    assert file_error(missing.value).message == "Missing column headers: email address"


async def test_a_refusal_lists_100_rows_then_how_many_more() -> None:
    csv = "email address\n" + "bad\n" * 250
    with pytest.raises(InvalidRowsError) as caught:
        await _rows(_parse(name="j", template_id=TEMPLATE, csv=csv), "email")
    message = rows_error(caught.value).message
    assert message.count("invalid recipient") == 100
    assert message.endswith("Row 99 - `email address`: invalid recipient. And 150 more rows with errors, not listed.")


async def test_a_job_in_gc_notifys_shape(engine: AsyncEngine, tenant: Tenant) -> None:
    template_id, job_id = tenancy.new_id(), jobs.new_job_id()
    async with engine.begin() as conn:
        await queries.insert_template(conn, template_id, tenant.service_id, "t", "s", "((name))", NOW, "email")
        await queries.insert_job(
            conn, job_id, "January", template_id, 1, 2, jobs.SCHEDULED, NOW + timedelta(hours=1), NOW, tenant.key_id
        )
        job = await queries.get_job(conn, tenant.service_id, job_id)
    assert job is not None
    assert job_object(job) == {
        "id": str(job_id),
        "original_file_name": "January",
        "notification_count": 2,
        "job_status": "scheduled",
        "template": str(template_id),
        "template_version": 1,
        "template_type": "email",
        "scheduled_for": "2026-12-03T13:00:00+00:00",
        "created_at": "2026-12-03T12:00:00+00:00",
        "updated_at": None,
        "processing_started": None,
        "processing_finished": None,
        "api_key": {"id": str(tenant.key_id), "name": "test", "key_type": "normal"},
        "created_by": None,
        "service": str(tenant.service_id),
        "service_name": {"name": "tenant-a"},
        "sender_id": None,
    }
    async with engine.begin() as conn:
        cancelled, _ = await queries.cancel_job(conn, tenant.service_id, job_id, NOW)
    assert cancelled is not None
    assert (job_object(cancelled)["job_status"], job_object(cancelled)["updated_at"]) == (
        "cancelled",
        "2026-12-03T12:00:00+00:00",
    )
