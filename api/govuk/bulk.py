"""GC Notify's bulk send: the body of `POST /v2/notifications/bulk` checked as GC Notify checks it.

`parse_bulk` checks the JSON body (GC's `post_bulk_request` schema, `additionalProperties: false`; exactly one of
`rows` / `csv`; `scheduled_for` within JOBS_MAX_SCHEDULE_HOURS_AHEAD) and returns the job's CSV as bytes (`rows` are
written as CSV, so both forms take one path). Its rows are then read by `shared.recipient_csv.csv_rows` with
`bulk_rules`, which checks each row as a v2 send is checked (`api.govuk.validation`: the recipient's email or
phone check, the personalisation limits); `rows_error` and `file_error` turn the reader's refusals into GC's 400s.
Every refusal is Notify's shape: schema problems as `ValidationError`s (all at once), the rest a `BadRequestError`.
"""

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Row

from api.errors import NotifyError, NotifyValidationError
from api.govuk.validation import (
    EMAIL,
    SMS,
    _shown,
    email_error,
    json_object,
    personalisation_values,
    phone_error,
    reference_error,
)
from shared.jobs import GC_JOB_STATUS
from shared.recipient_csv import InvalidRowsError, JobFileError, JobRules, max_record_chars
from shared.schemas import MESSAGE_TEXT
from shared.settings import Settings

#: GC Notify's CSV_MAX_ROWS: most rows of one bulk send (a header row, then up to this many).
CSV_MAX_ROWS = 50_000
PROPERTIES = frozenset({"name", "template_id", "rows", "csv", "scheduled_for", "reply_to_id", "reference"})
#: Longest job name (as every name of this service: services, keys, templates).
MAX_NAME_LENGTH = 200
#: Bad rows one refusal lists (GC lists each row's problems in one message).
MAX_ROWS_LISTED = 100
_MESSAGE_TEXT = re.compile(MESSAGE_TEXT)
BAD_ISO_DATE = (
    "datetime format is invalid. It must be a valid ISO8601 date time format, https://en.wikipedia.org/wiki/ISO_8601"
)


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """A valid bulk send: the job's name, template, CSV text (as bytes), time and reference."""

    name: str
    template_id: UUID
    csv: bytes
    scheduled_for: datetime | None
    reference: str | None


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def scheduled_for_error(value: str, now: datetime, hours_ahead: int) -> tuple[datetime | None, str | None]:
    """Parse a job's `scheduled_for` (ISO 8601; no zone: UTC) and return it in UTC, or GC Notify's message."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None, f"scheduled_for {BAD_ISO_DATE}"
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when < now:
        return None, "scheduled_for datetime cannot be in the past"
    if when > now + timedelta(hours=hours_ahead):
        return None, f"scheduled_for datetime can only be up to {hours_ahead} hours in the future"
    return when, None


def _rows_errors(rows: Any, errors: list[str]) -> None:
    """Check `rows`: an array of 2 to CSV_MAX_ROWS + 1 arrays of strings (a header row, then data rows)."""
    if not isinstance(rows, list):
        errors.append(f"rows {_shown(rows)} is not of type array")
    elif len(rows) < 2:
        errors.append(f"rows {_shown(rows)} is too short")
    elif len(rows) > CSV_MAX_ROWS + 1:
        errors.append(f"rows has {len(rows) - 1} rows: Too many rows. Maximum number of rows allowed is {CSV_MAX_ROWS}")
    else:
        for row in rows:
            if not isinstance(row, list) or not all(isinstance(cell, str) for cell in row):
                errors.append(f"rows {_shown(row)} is not of type array of strings")
                return


def _as_csv(rows: list[list[str]]) -> bytes:
    """Write `rows` as CSV text, as GC Notify does before reading it back as a file."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def parse_bulk(body: bytes, service_id: UUID, settings: Settings, now: datetime | None = None) -> BulkRequest:
    """Check the body of `POST /v2/notifications/bulk` and return what it asks for (its rows not yet read).

    Raises:
        NotifyValidationError: the body breaks GC Notify's schema (400 `ValidationError`s, every problem listed).
        NotifyError: not JSON; neither or both of `rows` and `csv` ("You should specify either rows or csv"); a
            `reply_to_id` (this service keeps no reply-to addresses or senders).
    """
    data = json_object(body)
    errors: list[str] = []
    unexpected = [name for name in data if name not in PROPERTIES]
    if unexpected:
        were = "was" if len(unexpected) == 1 else "were"
        errors.append(f"Additional properties are not allowed ({', '.join(unexpected)} {were} unexpected)")
    errors.extend(f"{required} is a required property" for required in ("name", "template_id") if required not in data)
    name = data.get("name")
    if "name" in data and not isinstance(name, str):
        errors.append(f"name {_shown(name)} is not of type string")
    elif isinstance(name, str) and not (0 < len(name) <= MAX_NAME_LENGTH and _MESSAGE_TEXT.match(name)):
        errors.append(f"name must be 1 to {MAX_NAME_LENGTH} characters, without control characters")
    template_id = _uuid(data.get("template_id"))
    if "template_id" in data and template_id is None:
        errors.append("template_id is not a valid UUID")
    if "rows" in data:
        _rows_errors(data["rows"], errors)
    if "csv" in data and not isinstance(data["csv"], str):
        errors.append(f"csv {_shown(data['csv'])} is not of type string")
    reference = data.get("reference")
    if "reference" in data and not isinstance(reference, str):
        errors.append(f"reference {_shown(reference)} is not of type string")
    elif isinstance(reference, str) and (error := reference_error(reference)):
        errors.append(error)
    reply_to_id = data.get("reply_to_id")
    if reply_to_id is not None and _uuid(reply_to_id) is None:
        errors.append("reply_to_id is not a valid UUID")
    scheduled_for = data.get("scheduled_for")
    when = None
    if scheduled_for is not None and not isinstance(scheduled_for, str):
        errors.append(f"scheduled_for {_shown(scheduled_for)} is not of type string, null")
    elif isinstance(scheduled_for, str):
        when, error = scheduled_for_error(
            scheduled_for, now or datetime.now(UTC), settings.jobs_max_schedule_hours_ahead
        )
        if error:
            errors.append(error)
    if errors:
        raise NotifyValidationError(errors)
    sources = [source for source in (data.get("rows"), data.get("csv")) if source]
    if len(sources) != 1:
        raise NotifyError("You should specify either rows or csv")
    if reply_to_id is not None:  # Notify's own message: this service keeps no reply-to addresses or SMS senders
        raise NotifyError(f"reply_to_id {reply_to_id} does not exist in database for service id {service_id}")
    assert isinstance(name, str)
    assert template_id is not None
    text = sources[0].encode() if isinstance(sources[0], str) else _as_csv(sources[0])
    return BulkRequest(name, template_id, text, when, reference)


def bulk_rules(settings: Settings, template_type: str, placeholders: Sequence[str]) -> JobRules:
    """Return the rules of a bulk send's rows: each row is checked as a v2 send of `template_type` is."""
    recipient = "email address" if template_type == EMAIL else "phone number"
    recipient_error = email_error if template_type == EMAIL else phone_error
    assert template_type in (EMAIL, SMS)

    def check(to: str, values: dict[str, str]) -> list[str]:
        problems: list[str] = []
        if recipient_error(to) is not None:
            problems.append(f"`{recipient}`: invalid recipient")
        personalisation_values(values, settings, problems)
        return problems

    return JobRules((recipient,), tuple(placeholders), check, CSV_MAX_ROWS, max_record_chars(settings))


def file_error(exc: JobFileError) -> NotifyError:
    """GC Notify's 400 for a file that cannot be taken as a whole (`Missing column headers: ...`)."""
    return NotifyError(str(exc))


def rows_error(exc: InvalidRowsError) -> NotifyError:
    """GC Notify's 400 for rows with errors: `Some rows have errors. Row 0 - ...` (rows counted from 0, as GC's)."""
    listed = ". ".join(f"Row {error.number - 1} - {','.join(error.messages)}" for error in exc.errors[:MAX_ROWS_LISTED])
    more = exc.count - min(len(exc.errors), MAX_ROWS_LISTED)
    tail = f". And {more} more rows with errors, not listed" if more else ""
    return NotifyError(f"Some rows have errors. {listed}{tail}.")


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def job_object(job: Row[Any]) -> dict[str, Any]:
    """A job (`shared.queries.get_job`'s row) in GC Notify's shape (its `JobSchema`), as `{"data": job}` holds it.

    What this service does not keep is null: `created_by` (no users), `sender_id` (no senders),
    `processing_started` / `processing_finished`; `updated_at` is when it was cancelled, if it was.
    """
    api_key = None
    if job.api_key_id is not None:
        api_key = {"id": str(job.api_key_id), "name": job.api_key_name, "key_type": "normal"}
    return {
        "id": str(job.id),
        "original_file_name": job.name,
        "notification_count": job.notification_count,
        "job_status": GC_JOB_STATUS[job.status],
        "template": str(job.template_id),
        "template_version": job.template_version,
        "template_type": job.template_type,
        "scheduled_for": _time(job.scheduled_for),
        "created_at": _time(job.created_at),
        "updated_at": _time(job.cancelled_at),
        "processing_started": None,
        "processing_finished": None,
        "api_key": api_key,
        "created_by": None,
        "service": str(job.service_id),
        "service_name": {"name": job.service_name},
        "sender_id": None,
    }
