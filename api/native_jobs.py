"""The native jobs' work (`/notifications/v1/jobs`): a streamed CSV or NDJSON body read as rows and stored.

The body's type picks the reader (`shared.recipient_csv`: CSV with the native rules, or NDJSON of native items),
the rows are checked as `POST /notifications/v1/` checks an item, and `api.jobs.store_job` stores them in one
transaction. An upload silent for IDLE_UPLOAD_MS is a 408; bad rows are the native 422 listing them.
"""

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi.exceptions import RequestValidationError
from sqlalchemy import Row
from starlette.datastructures import State

from api.errors import MAX_ERRORS_LISTED, ApiError, BadRequestError
from api.govuk.bulk import scheduled_for_error
from api.jobs import Fingerprinted, StoredJob, job_template, rendering_check, store_job, with_rendering_bound
from shared import ids, job_store, jobs
from shared.recipient_csv import InvalidRowsError, JobFileError, csv_rows, native_rules, ndjson_rows
from shared.schemas import MESSAGE_TEXT

_MESSAGE_TEXT = re.compile(MESSAGE_TEXT)

#: How long an upload may send nothing before it is refused (408) and its job rolled back (milliseconds).
IDLE_UPLOAD_MS = 60_000

#: Content types of a native job's body: CSV (a header row, then rows) or NDJSON (one native object a line).
CSV_TYPES = frozenset({"text/csv", "application/csv"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})


async def _within_stalls(chunks: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    """Pass a body's chunks on; 408 once the client sends nothing for `seconds` (the job is rolled back)."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(iterator), seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BadRequestError(
                f"the upload sent nothing for {seconds:g} seconds: nothing of this job was stored; send it again",
                status_code=408,
            ) from None
        yield chunk


def _invalid(loc: tuple[Any, ...], kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": message}])


def _native_refusal(exc: Exception) -> ApiError | RequestValidationError:
    """The native 400 for a file that cannot be read as a whole; the native 422 listing a job's bad rows."""
    if isinstance(exc, JobFileError):
        return BadRequestError(f"the job's file cannot be taken: {exc}")
    assert isinstance(exc, InvalidRowsError)
    errors: list[dict[str, Any]] = [
        {"type": "invalid_row", "loc": ["body", "row", error.number], "msg": "; ".join(error.messages)}
        for error in exc.errors
    ]
    if exc.count > len(errors):
        more = exc.count - len(errors)
        errors.append({"type": "too_many_errors", "loc": [], "msg": f"and {more} more rows with errors, not listed"})
    return RequestValidationError(errors)


async def create_native_job(
    state: State,
    service_id: UUID,
    template_id: UUID,
    name: str,
    scheduled_for: str | None,
    content_type: str | None,
    chunks: AsyncIterator[bytes],
    *,
    idempotency_key: str | None = None,
    request_mark: bytes = b"",
) -> StoredJob:
    """Store a native job from its streamed body (CSV or NDJSON), all or nothing; see `store_job`.

    `request_mark` (route and query) goes into an Idempotency-Key's fingerprint with the body.

    Raises:
        BadRequestError: a body of another type (415), a `scheduled_for` out of bounds or a file that cannot be
            read (400), more rows than the service's rate limit per minute (413), an upload that stalled (408).
        RequestValidationError: an unknown template; rows that are not valid (422, the rows listed).
        RetryLaterError: Postgres is unreachable (503).
    """
    settings = state.settings
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in CSV_TYPES | NDJSON_TYPES:
        raise BadRequestError(
            f"a job's body is CSV (Content-Type: text/csv) or NDJSON (application/x-ndjson), not {content_type!r}",
            status_code=415,
        )
    when = None
    if scheduled_for is not None:
        when, error = scheduled_for_error(scheduled_for, datetime.now(UTC), settings.jobs_max_schedule_hours_ahead)
        if error is not None:
            raise _invalid(("query", "scheduled_for"), "scheduled_for", error.removeprefix("scheduled_for "))
    if not _MESSAGE_TEXT.match(name):
        raise _invalid(("query", "name"), "string_pattern_mismatch", "a job's name may hold no control characters")
    template = await job_template(state, service_id, template_id)
    if template is None:
        raise _invalid(("query", "template_id"), "unknown_template", f"your service has no template {template_id}")
    chunks = _within_stalls(chunks, IDLE_UPLOAD_MS / 1000)
    body = Fingerprinted(chunks, request_mark) if idempotency_key is not None else None
    source = chunks if body is None else body.__aiter__()
    listed = MAX_ERRORS_LISTED - 1  # and a last entry saying how many more
    if media_type in CSV_TYPES:
        rules = with_rendering_bound(template, settings, native_rules(settings, template.type, template.placeholders))
        batches = csv_rows(source, rules, max_listed=listed, batch_rows=job_store.JOB_BATCH_ROWS)
    else:
        batches = ndjson_rows(
            source,
            settings,
            template.template_id,
            template.placeholders,
            max_listed=listed,
            batch_rows=job_store.JOB_BATCH_ROWS,
            check=rendering_check(template, settings),
        )
    return await store_job(
        state, template, name, batches, scheduled_for=when, key=idempotency_key, body=body, refusal=_native_refusal
    )


def native_job(job: Row[Any], *, counts: bool = False) -> dict[str, Any]:
    """A job in the native routes' shape; with `counts`, how many of its rows are queued and stored."""
    shown: dict[str, Any] = {
        "id": str(job.id),
        "name": job.name,
        "status": jobs.NATIVE_JOB_STATUS[job.status],
        "rows": job.notification_count,
        "template": {"id": str(job.template_id), "version": job.template_version},
        "scheduled_for": None if job.scheduled_for is None else job.scheduled_for.astimezone(UTC).isoformat(),
        "created_at": job.created_at.astimezone(UTC).isoformat(),
    }
    if job.status == jobs.STORED and job.scheduled_for is None:
        # stored at once: its notifications' ids are its own id with the row's index (from 0) in the last 24 bits
        stem = job.id.hex[: 2 * ids.STEM_BYTES]
        shown["notification_ids"] = {
            "first": ids.notification_id_at(stem, 0),
            "last": ids.notification_id_at(stem, job.notification_count - 1),
        }
    if counts:  # a job's rows are queued and stored in one transaction: all of them, or none yet
        done = job.notification_count if job.status in (jobs.QUEUED, jobs.STORED) else 0
        shown["queued"] = done
        shown["stored"] = job.notification_count if job.status == jobs.STORED else 0
    return shown
