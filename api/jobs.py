"""Jobs: one request carrying many notifications, stored all or nothing. The path both job routes take.

GC Notify's `POST /v2/notifications/bulk` (`api.govuk.jobs.create_bulk_job`, its body in memory: at most 50,000
rows) and the native streamed `POST /notifications/v1/jobs` (`api.native_jobs.create_native_job`, CSV or NDJSON of up to
MAX_JOB_ROWS rows, read as it arrives) take one path, `store_job` (docs/jobs.md): in ONE Postgres transaction, an
Idempotency-Key is taken (`job_keys`, so a retry stores the job once), every row is read and checked as it arrives
and COPYed into `notifications` with its `job_id` (`shared.job_store.copy_rows`) — or, for a scheduled job, kept
in `job_files` until the worker's scheduler queues it —, then the `jobs` row is written with its count, and the
transaction commits. The 201 comes after the commit: the job is durable (`stored`, or `scheduled`). A bad row, a
file fault, too many rows for the service's rate limit, or the client gone (or silent: a 408) roll
everything back; so does a process killed mid-upload (Postgres drops the transaction with the connection). Redis
holds nothing of a job.

A job of a rate-limited service is charged its rows, as a `/multiple` of as many items is, once they are all read
and before the commit (a job the bucket cannot hold yet is a 429, one larger than the whole limit a 413: nothing
stored; one past the whole limit is refused as soon as its rows read pass it). Jobs need Postgres: while it is
unreachable a job is a 503 (docs/jobs.md says why there is no Redis fallback).
"""

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Row, text
from starlette.datastructures import State

from api.errors import (
    BadRequestError,
    ConflictError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyMismatchError,
    RetryLaterError,
    WriteOutcomeUnknownError,
)
from api.flush import RateLimit
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
)
from shared.settings import Settings
from shared.templating import Measure

T = TypeVar("T")


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
