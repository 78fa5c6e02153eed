"""Bulk jobs: GC Notify's `POST /v2/notifications/bulk` stored by COPY from the API, and its job routes' work.

`create_bulk_job` follows docs/jobs.md's candidate 1. The body is checked (`api.govuk.bulk.parse_bulk`), the
template found in the write path's cache, every row read and checked as a v2 send is (`shared.recipient_csv`
with `api.govuk.bulk.bulk_rules`, and each rendering within MAX_RENDERED_LENGTH): all or nothing, before Postgres
is touched. Then one transaction inserts the `jobs` row and COPYs the rows into `notifications` with the drain's
binary COPY (`shared.queries.copy_notifications`, `job_id` set), and commits: the 201 comes after Postgres's
commit, so the job is `stored` (GC's `finished`) when it is answered. The notifications' ids share one UUIDv7
stem, the row's index in the last 24 bits (`shared.ids`): a job's notifications are one id range, and GET of any of
them is a primary-key lookup (Redis holds nothing of a job).

Current limits (docs/jobs.md, "What remains"): `scheduled_for` is refused (no scheduler yet); with Postgres
unreachable the job is refused with a 503 (no Redis fallback yet); rows are not charged to the service's token
bucket (the flush charges tokens only with a stream entry), though a job larger than the whole per-minute limit is
a 413 as `/multiple` is; no Idempotency-Key.
"""

import dataclasses
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from starlette.datastructures import State

from api.errors import BadRequestError, NotifyError, RetryLaterError
from api.govuk.bulk import MAX_ROWS_LISTED, bulk_rules, file_error, job_object, parse_bulk, rows_error
from api.govuk.validation import EMAIL, SMS
from api.rate_limiter import RateLimiter
from api.template_cache import TemplateVersion
from shared import failures, ids, jobs, partitions, queries
from shared.codec import NotificationDoc
from shared.recipient_csv import InvalidRowsError, JobFileError, JobRow, JobRules, chunked, csv_rows
from shared.templating import RenderedTooLongError, render_within

#: Days whose partition this process has found or made (`partitions.ensure` asks Postgres once per day).
_KNOWN_DAYS: set[date] = set()

#: Jobs one page of `GET /v2/notifications/bulk` lists (GC Notify's API_PAGE_SIZE).
JOBS_PAGE_SIZE = 250


class JobNotFoundError(NotifyError):
    """A bulk job that is not the caller's service's (or does not exist): GC Notify's 404."""

    status_code = 404
    notify_error = "JobNotFoundError"

    def __init__(self) -> None:
        super().__init__("Job not found")


class JobAlreadyCancelledError(NotifyError):
    """`DELETE /v2/notifications/bulk/{id}` of a job cancelled before."""

    notify_error = "JobAlreadyCancelledError"

    def __init__(self) -> None:
        super().__init__("Job has already been cancelled")


class JobCancellationNotAllowedError(NotifyError):
    """`DELETE /v2/notifications/bulk/{id}` of a job that is not (or no longer) scheduled."""

    notify_error = "JobCancellationNotAllowedError"

    def __init__(self) -> None:
        super().__init__("Only a scheduled job that has not started yet can be cancelled")


def _unreachable(exc: Exception) -> RetryLaterError:
    return RetryLaterError(
        f"Postgres is unreachable ({type(exc).__name__}): nothing of this job was stored; retry later "
        "(bulk jobs are written straight to Postgres)"
    )


def _statistics(job: Any) -> list[dict[str, Any]]:
    """A job's notifications counted by status: all are `created` (this service does not deliver) once stored."""
    if job.status != jobs.STORED:
        return []
    return [{"status": "created", "count": job.notification_count}]


def job_with_statistics(job: Any) -> dict[str, Any]:
    """GC Notify's job object with its `statistics`, as the job routes answer it."""
    return {**job_object(job), "statistics": _statistics(job)}


async def _rows(request_csv: bytes, rules: JobRules) -> list[JobRow]:
    """Read and check every row of the job (at most CSV_MAX_ROWS): all of them, or Notify's 400."""
    rows: list[JobRow] = []
    try:
        async for batch in csv_rows(chunked(request_csv), rules, max_listed=MAX_ROWS_LISTED):
            rows.extend(batch)
    except JobFileError as exc:
        raise file_error(exc) from None
    except InvalidRowsError as exc:
        raise rows_error(exc) from None
    return rows


def _rules(template: TemplateVersion, max_rendered: int, rules: JobRules) -> JobRules:
    """Add the v2 send's last check to the rows' rules: the rendered subject and body within MAX_RENDERED_LENGTH."""
    check = rules.check

    def checked(to: str, values: dict[str, str]) -> list[str]:
        problems = check(to, values)
        if not problems:
            try:
                render_within((template.subject, template.body), values, max_rendered)
            except RenderedTooLongError as exc:
                problems.append(
                    f"renders a template of {exc.length} characters, longer than MAX_RENDERED_LENGTH={max_rendered}"
                )
        return problems

    return dataclasses.replace(rules, check=checked)


async def create_bulk_job(state: State, service_id: UUID, body: bytes) -> dict[str, Any]:
    """Check a bulk send, store its job and every row in one transaction, and return GC Notify's job object.

    Raises:
        NotifyError: the body, the template or a row is not valid (GC Notify's 400s); `scheduled_for` given.
        BadRequestError: more rows than the service's whole rate limit per minute (413).
        RetryLaterError: Postgres is unreachable (503, `Retry-After`): nothing was stored.
    """
    settings = state.settings
    request = parse_bulk(body, service_id, settings)
    if request.scheduled_for is not None:
        raise NotifyError(
            "scheduled_for: scheduled bulk sends are not supported yet by this service; send the job without "
            "scheduled_for to have it stored at once"
        )
    try:
        template = await state.templates.resolve(service_id, request.template_id, None)
    except Exception as exc:
        if failures.database_unreachable(exc):
            raise _unreachable(exc) from exc
        raise
    if template is None:
        raise NotifyError("Template not found")
    if template.type not in (EMAIL, SMS):
        raise NotifyError(f"{template.type} templates cannot be sent in bulk")
    rules = _rules(template, settings.max_rendered_length, bulk_rules(settings, template.type, template.placeholders))
    rows = await _rows(request.csv, rules)
    limits: RateLimiter = state.rate_limits
    per_minute = await limits.limit_for(service_id)
    if per_minute and len(rows) > per_minute:
        raise BadRequestError(
            f"the job holds {len(rows)} notifications, more than your service's whole rate limit of {per_minute} "
            "per minute: send at most that many per job",
            status_code=413,
        )
    job_id = jobs.new_job_id()
    now = datetime.now(UTC)
    created_at = now.isoformat()
    stem = ids.new_stem()
    service = str(service_id)
    template_ref = {"id": str(template.template_id), "version": template.version}
    docs: list[NotificationDoc] = [
        {
            "id": ids.notification_id_at(stem, index),
            "service_id": service,
            "to": row.to,
            "personalization": row.personalisation,
            "template": template_ref,  # type: ignore[typeddict-item]
            "subject": None,
            "body": None,
            "created_at": created_at,
            "updated_at": created_at,
            "sent_at": None,
            "type": template.type,
            "reference": request.reference,
        }
        for index, row in enumerate(rows)
    ]
    try:
        # the day's partition first, as the drain makes it (maintenance makes days ahead, but a clock step or a
        # fresh database may not have this one): a COPY into a missing partition fails
        await partitions.ensure(state.engine, {partitions.day_of(docs[0]["id"])}, _KNOWN_DAYS)
        async with state.engine.begin() as conn:
            await queries.insert_job(
                conn,
                job_id,
                request.name,
                template.template_id,
                template.version,
                len(docs),
                jobs.STORED,
                None,
                now,
                None,
            )
            raw = (await conn.get_raw_connection()).driver_connection
            await queries.copy_notifications(raw, docs, job_id)
            job = await queries.get_job(conn, service_id, job_id)
    except Exception as exc:
        if failures.database_unreachable(exc):
            raise _unreachable(exc) from exc
        raise
    assert job is not None
    return job_object(job)


async def _read(state: State, read: Any) -> Any:
    try:
        async with state.engine.begin() as conn:
            return await read(conn)
    except Exception as exc:
        if failures.database_unreachable(exc):
            raise _unreachable(exc) from exc
        raise


async def get_bulk_job(state: State, service_id: UUID, job_id: UUID) -> dict[str, Any]:
    """Return a job of the service with its statistics; GC Notify's 404 for any other."""
    job = await _read(state, lambda conn: queries.get_job(conn, service_id, job_id))
    if job is None:
        raise JobNotFoundError()
    return job_with_statistics(job)


async def list_bulk_jobs(state: State, service_id: UUID, older_than: UUID | None) -> list[dict[str, Any]]:
    """Return a page of the service's jobs, newest first, older than the job `older_than` (which must be its own)."""

    async def read(conn: Any) -> list[Any]:
        if older_than is not None and await queries.get_job(conn, service_id, older_than) is None:
            raise NotifyError("older_than Job does not exist for this service")
        return await queries.list_jobs(conn, service_id, JOBS_PAGE_SIZE, older_than)

    return [job_with_statistics(job) for job in await _read(state, read)]


async def cancel_bulk_job(state: State, service_id: UUID, job_id: UUID) -> dict[str, Any]:
    """Cancel a scheduled job of the service that has not started; GC Notify's refusals otherwise."""
    job, cancelled = await _read(state, lambda conn: queries.cancel_job(conn, service_id, job_id, datetime.now(UTC)))
    if job is None:
        raise JobNotFoundError()
    if not cancelled:
        raise JobAlreadyCancelledError() if job.status == jobs.CANCELLED else JobCancellationNotAllowedError()
    return job_with_statistics(job)
