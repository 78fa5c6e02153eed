"""Jobs: one request carrying many notifications, stored all or nothing. The native routes' work, and both's path.

GC Notify's `POST /v2/notifications/bulk` (`api.govuk.jobs.create_bulk_job`, its body in memory: at most 50,000
rows) and the native streamed `POST /notifications/v1/jobs` (`create_native_job`, CSV or NDJSON of up to
MAX_JOB_ROWS rows, read as it arrives) take one path, `store_job` (docs/jobs.md): in ONE Postgres transaction, an
Idempotency-Key is taken (`job_keys`, so a retry stores the job once), every row is read and checked as it arrives
and COPYed into `notifications` with its `job_id` (`shared.job_store.copy_rows`) — or, for a scheduled job, kept
in `job_files` until the worker's scheduler queues it —, then the `jobs` row is written with its count, and the
transaction commits. The 201 comes after the commit: the job is durable (`stored`, or `scheduled`). A bad row, a
file fault, too many rows for the service's rate limit, or the client gone (or silent for IDLE_UPLOAD_MS: 408) roll
everything back; so does a process killed mid-upload (Postgres drops the transaction with the connection). Redis
holds nothing of a job.

A job of a rate-limited service is charged its rows, as a `/multiple` of as many items is, once they are all read
and before the commit (a job the bucket cannot hold yet is a 429, one larger than the whole limit a 413: nothing
stored; one past the whole limit is refused as soon as its rows read pass it). Jobs need Postgres: while it is
unreachable a job is a 503 (docs/jobs.md says why there is no Redis fallback).
"""

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from fastapi.exceptions import RequestValidationError
from sqlalchemy import Row, text
from starlette.datastructures import State

from api.errors import (
    MAX_ERRORS_LISTED,
    ApiError,
    BadRequestError,
    ConflictError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyMismatchError,
    RetryLaterError,
    WriteOutcomeUnknownError,
)
from api.flush import RateLimit
from api.govuk.bulk import (
    scheduled_for_error,
)
from api.govuk.validation import EMAIL, SMS
from api.ingest import rate_limited_error
from api.template_cache import TemplateVersion
from api.writer import RedisWriter
from shared import failures, ids, job_store, jobs, queries
from shared.recipient_csv import (
    InvalidRowsError,
    JobFileError,
    JobRow,
    JobRules,
    RowCheck,
    csv_rows,
    native_rules,
    ndjson_rows,
)
from shared.schemas import MESSAGE_TEXT
from shared.settings import Settings
from shared.templating import Measure

T = TypeVar("T")
_MESSAGE_TEXT = re.compile(MESSAGE_TEXT)

#: How long an upload may send nothing before it is refused (408) and its job rolled back (milliseconds).
IDLE_UPLOAD_MS = 60_000


def _unreachable(exc: Exception) -> RetryLaterError:
    return RetryLaterError(
        f"Postgres is unreachable ({type(exc).__name__}): nothing of this job was stored; retry later "
        "(jobs are written straight to Postgres)"
    )


def rendering_check(template: TemplateVersion, settings: Settings) -> RowCheck | None:
    """A send's last check of a row: the template's rendered subject and body within MAX_RENDERED_LENGTH.

    None when no row can fail it: a row reaches this check with every value within
    MAX_PERSONALIZATION_VALUE_LENGTH, so a template whose longest rendering is within the bound needs no check.
    """
    measure = Measure(template.subject, template.body)  # the template split once per job, not per row
    max_rendered = settings.max_rendered_length
    if measure.longest(settings.max_personalization_value_length) <= max_rendered:
        return None

    def check(to: str, values: dict[str, str]) -> list[str]:
        length = measure(values)
        if length > max_rendered:
            return [f"renders a template of {length} characters, longer than MAX_RENDERED_LENGTH={max_rendered}"]
        return []

    return check


def with_rendering_bound(template: TemplateVersion, settings: Settings, rules: JobRules) -> JobRules:
    """Add `rendering_check` to the rows' rules (if it can fail), for rows that pass the others."""
    check, rendered = rules.check, rendering_check(template, settings)
    if rendered is None:
        return rules

    def checked(to: str, values: dict[str, str]) -> list[str]:
        return check(to, values) or rendered(to, values)

    return JobRules(rules.recipient_columns, rules.placeholders, checked, rules.max_rows, rules.max_record_chars)


async def job_template(state: State, service_id: UUID, template_id: UUID) -> TemplateVersion | None:
    """Return the service's template (its latest version) for a job, or None; 503 when Postgres is unreachable."""
    try:
        template = await state.templates.resolve(service_id, template_id, None)
    except Exception as exc:
        if failures.database_unreachable(exc):
            raise _unreachable(exc) from exc
        raise
    return template if template is not None and template.type in (EMAIL, SMS) else None


class Fingerprinted:
    """A body's chunks passed on as they come, hashed with the route and query into an Idempotency-Key's fingerprint."""

    def __init__(self, chunks: AsyncIterator[bytes], route_and_query: bytes) -> None:
        self.chunks = chunks
        self.hash = hashlib.sha256(route_and_query + b"\n")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks, each hashed first."""
        async for chunk in self.chunks:
            self.hash.update(chunk)
            yield chunk

    async def drain(self) -> bytes:
        """Read what is left of the body; return the whole request's fingerprint."""
        async for _ in self:
            pass
        return self.hash.digest()


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job's row as stored, and whether it was stored by an earlier request with the same Idempotency-Key."""

    job: Row[Any]
    replayed: bool


async def store_job(
    state: State,
    template: TemplateVersion,
    name: str,
    batches: AsyncIterator[list[JobRow]],
    *,
    reference: str | None = None,
    scheduled_for: datetime | None = None,
    key: str | None = None,
    body: Fingerprinted | None = None,
    refusal: Callable[[Exception], Exception] | None = None,
) -> StoredJob:
    """Store a job in one transaction: its rows as they are read (COPYed, or kept when scheduled), then its row.

    With `key` (and `body`, the request being read, for its fingerprint): the service's Idempotency-Key, taken in
    the same transaction. A key already stored with the same request gives back that job (`replayed`), with
    another request a 422; a key whose first request is still being stored, a 409.

    Raises:
        JobFileError, InvalidRowsError: from reading the rows (nothing stored); `refusal` turns them into the
            route's error first, when given.
        BadRequestError: more rows than the service's whole rate limit per minute (413).
        RateLimitedError: the service's bucket cannot hold the rows yet (429).
        RetryLaterError: Postgres is unreachable, or MAX_CONCURRENT_JOBS jobs are being stored (503): nothing was
            stored.
    """
    active: int = getattr(state, "jobs_in_progress", 0)
    if active >= state.settings.max_concurrent_jobs:
        raise RetryLaterError(
            f"this API process is storing {active} jobs already (MAX_CONCURRENT_JOBS); nothing of this one was "
            "read: retry later"
        )
    state.jobs_in_progress = active + 1
    try:
        return await _store_job(state, template, name, batches, reference, scheduled_for, key, body, refusal)
    finally:
        state.jobs_in_progress -= 1


async def _store_job(
    state: State,
    template: TemplateVersion,
    name: str,
    batches: AsyncIterator[list[JobRow]],
    reference: str | None,
    scheduled_for: datetime | None,
    key: str | None,
    body: Fingerprinted | None,
    refusal: Callable[[Exception], Exception] | None,
) -> StoredJob:
    service_id = template.service_id
    now = datetime.now(UTC)
    committing = False
    job_id = None
    try:
        # a job stored at once shares its id's stem with its notifications: the job's id is its first row's
        stem = None if scheduled_for is not None else await job_store.new_stem(state.engine)
        job_id = jobs.new_job_id() if stem is None else UUID(ids.notification_id_at(stem, 0))
        target = job_store.JobTarget(
            job_id, service_id, template.template_id, template.version, template.type, reference
        )
        async with state.engine.begin() as conn:
            # the first statement opens the transaction (SQLAlchemy begins it lazily: a COPY on the raw connection
            # before any statement would commit on its own). The transaction is idle while a batch is read, however
            # long a steady upload takes to fill it: a stalled upload is ended by the API (`_within_stalls`), not by
            # a Postgres timeout that would also end slow ones (and answer them as if Postgres were unreachable)
            await conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
            if key is not None:
                assert body is not None
                earlier = await _take_key(conn, service_id, key, job_id, state.settings.idempotency_ttl_seconds)
                if earlier is not None:
                    return await _replay(conn, service_id, earlier, await body.drain())
            per_minute = await state.rate_limits.limit_for(service_id)
            if per_minute:  # a job that can never fit is refused as soon as it is seen to, not once all is read
                batches = _within_limit(batches, per_minute)
            if stem is None:
                count = await job_store.save_file(conn, job_id, batches)
                status = jobs.SCHEDULED
            else:
                raw = (await conn.get_raw_connection()).driver_connection
                count = await job_store.copy_rows(raw, target, stem, batches, now)
                status = jobs.STORED
            if per_minute:
                await _charge(state, service_id, job_id, count, per_minute)
            await queries.insert_job(
                conn,
                job_id,
                name,
                template.template_id,
                template.version,
                count,
                status,
                scheduled_for,
                now,
                None,
                reference,
            )
            if key is not None:
                assert body is not None
                await queries.insert_job_key(conn, service_id, key, job_id, await body.drain())
            job = await queries.get_job(conn, service_id, job_id)
            committing = True  # what fails from here on failed the commit: it may have been applied
    except (JobFileError, InvalidRowsError) as exc:
        if refusal is None:
            raise
        raise refusal(exc) from None
    except Exception as exc:
        if committing and failures.database_unreachable(exc):
            raise WriteOutcomeUnknownError(
                f"Postgres did not confirm the commit of job {job_id} ({type(exc).__name__}): it may or may not be "
                f"stored. GET /notifications/v1/jobs/{job_id} answers 200 once it is and 404 if it is not; a "
                "retry with the same Idempotency-Key is safe, a plain retry may store it twice"
            ) from exc
        if failures.database_unreachable(exc):
            raise _unreachable(exc) from exc
        raise
    assert job is not None
    return StoredJob(job, False)


async def _take_key(conn: Any, service_id: UUID, key: str, job_id: UUID, ttl_seconds: int) -> Row[Any] | None:
    """Take the service's Idempotency-Key for this transaction; return the job it already names, if any."""
    if not await queries.lock_job_key(conn, service_id, key):
        raise IdempotencyKeyInFlightError(
            "a job with this Idempotency-Key is still being stored; retry once it is answered"
        )
    return await queries.get_job_key(conn, service_id, key, ttl_seconds)


async def _replay(conn: Any, service_id: UUID, earlier: Row[Any], fingerprint: bytes) -> StoredJob:
    if earlier.fingerprint != fingerprint:
        raise IdempotencyKeyMismatchError(
            "this Idempotency-Key was used with another job (another body, template or name): use a new key"
        )
    job = await queries.get_job(conn, service_id, earlier.job_id)
    if job is None:  # cannot be: the key goes with its job
        raise ConflictError("the job this Idempotency-Key stored is gone")
    return StoredJob(job, True)


def _too_many(count: int, per_minute: int) -> BadRequestError:
    return BadRequestError(
        f"the job holds {count} notifications or more, more than your service's whole rate limit of {per_minute} "
        "per minute: send at most that many per job",
        status_code=413,
    )


async def _within_limit(batches: AsyncIterator[list[JobRow]], per_minute: int) -> AsyncIterator[list[JobRow]]:
    """Pass a job's batches on; 413 as soon as they hold more rows than the service's whole limit per minute."""
    count = 0
    async for batch in batches:
        count += len(batch)
        if count > per_minute:
            raise _too_many(count, per_minute)
        yield batch


async def _charge(state: State, service_id: UUID, job_id: UUID, count: int, per_minute: int) -> None:
    """Take a job's rows from the service's token bucket, as a `/multiple` of `count` items would be taken.

    Raises:
        RateLimitedError: the bucket holds fewer tokens than the job has rows (429, Retry-After): nothing is stored.
    """
    writer: RedisWriter = state.writer
    shard = writer.layout.shard_of_stem(job_id.hex[: 2 * ids.STEM_BYTES])
    rate = RateLimit(shard.bucket_key(str(service_id)), per_minute, count, per_minute / writer.layout.count)
    sent_at = time.monotonic()
    try:
        state_ = await writer.charge(rate, shard.index)
    except WriteOutcomeUnknownError as exc:  # the job is rolled back whatever Redis did: retrying it is safe
        raise RetryLaterError(
            "Redis did not confirm the job's rate-limit charge: nothing of this job was stored; a retry is safe"
        ) from exc
    state.rate_limits.note(state_, service_id, sent_at, shard.index)
    if not state_.allowed:
        raise rate_limited_error(state_, count)


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


async def _read(state: State, read: Callable[[Any], Awaitable[T]]) -> T:
    try:
        async with state.engine.begin() as conn:
            return await read(conn)
    except Exception as exc:
        if failures.database_unreachable(exc):
            raise _unreachable(exc) from exc
        raise


async def get_job(state: State, service_id: UUID, job_id: UUID) -> Row[Any] | None:
    """Return a job of the service (made through either route), or None."""
    return await _read(state, lambda conn: queries.get_job(conn, service_id, job_id))


async def list_jobs(state: State, service_id: UUID, limit: int, older_than: UUID | None) -> list[Row[Any]] | None:
    """Return a page of the service's jobs, newest first, older than `older_than`; None when that is not its job."""

    async def read(conn: Any) -> list[Row[Any]] | None:
        if older_than is not None and await queries.get_job(conn, service_id, older_than) is None:
            return None
        return await queries.list_jobs(conn, service_id, limit, older_than)

    return await _read(state, read)


async def cancel_job(state: State, service_id: UUID, job_id: UUID) -> tuple[Row[Any] | None, bool]:
    """Cancel a scheduled job of the service that is not yet due (its kept rows deleted); see `queries.cancel_job`."""
    return await _read(state, lambda conn: queries.cancel_job(conn, service_id, job_id))
