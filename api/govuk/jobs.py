"""GC Notify's bulk jobs (`/v2/notifications/bulk`): its send, read, list and cancel, in GC's shapes and words.

The work is the native jobs' (`api.jobs`): `create_bulk_job` checks GC's body (`api.govuk.bulk.parse_bulk`) and
each row as a v2 send (`bulk_rules`), then stores the job with `api.jobs.store_job`, as the native route does.
"""

from typing import Any
from uuid import UUID

from starlette.datastructures import State

from api.errors import NotifyError
from api.govuk.bulk import (
    MAX_ROWS_LISTED,
    bulk_rules,
    file_error,
    job_object,
    parse_bulk,
    rows_error,
)
from api.jobs import cancel_job, get_job, job_template, list_jobs, store_job, with_rendering_bound
from shared import job_store, jobs
from shared.recipient_csv import JobFileError, chunked, csv_rows

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


def _statistics(job: Any) -> list[dict[str, Any]]:
    """A job's notifications counted by status: all are `created` (this service does not deliver) once stored."""
    if job.status != jobs.STORED:
        return []
    return [{"status": "created", "count": job.notification_count}]


def job_with_statistics(job: Any) -> dict[str, Any]:
    """GC Notify's job object with its `statistics`, as the job routes answer it."""
    return {**job_object(job), "statistics": _statistics(job)}


async def create_bulk_job(state: State, service_id: UUID, body: bytes) -> dict[str, Any]:
    """Check a bulk send, store its job and every row (or keep them until `scheduled_for`); GC Notify's job object.

    Raises:
        NotifyError: the body, the template or a row is not valid (GC Notify's 400s).
        BadRequestError: more rows than the service's whole rate limit per minute (413).
        RetryLaterError: Postgres is unreachable (503, `Retry-After`): nothing was stored.
    """
    settings = state.settings
    request = parse_bulk(body, service_id, settings)
    template = await job_template(state, service_id, request.template_id)
    if template is None:
        raise NotifyError("Template not found")
    rules = with_rendering_bound(template, settings, bulk_rules(settings, template.type, template.placeholders))
    batches = csv_rows(chunked(request.csv), rules, max_listed=MAX_ROWS_LISTED, batch_rows=job_store.JOB_BATCH_ROWS)

    def refusal(exc: Exception) -> Exception:
        return file_error(exc) if isinstance(exc, JobFileError) else rows_error(exc)  # type: ignore[arg-type]

    stored = await store_job(
        state,
        template,
        request.name,
        batches,
        reference=request.reference,
        scheduled_for=request.scheduled_for,
        refusal=refusal,
    )
    return job_object(stored.job)


async def get_bulk_job(state: State, service_id: UUID, job_id: UUID) -> dict[str, Any]:
    """Return a job of the service with its statistics; GC Notify's 404 for any other."""
    job = await get_job(state, service_id, job_id)
    if job is None:
        raise JobNotFoundError()
    return job_with_statistics(job)


async def list_bulk_jobs(state: State, service_id: UUID, older_than: UUID | None) -> list[dict[str, Any]]:
    """Return a page of the service's jobs, newest first, older than the job `older_than` (which must be its own)."""
    found = await list_jobs(state, service_id, JOBS_PAGE_SIZE, older_than)
    if found is None:
        raise NotifyError("older_than Job does not exist for this service")
    return [job_with_statistics(job) for job in found]


async def cancel_bulk_job(state: State, service_id: UUID, job_id: UUID) -> dict[str, Any]:
    """Cancel a scheduled job of the service that has not started; GC Notify's refusals otherwise."""
    job, cancelled = await cancel_job(state, service_id, job_id)
    if job is None:
        raise JobNotFoundError()
    if not cancelled:
        raise JobAlreadyCancelledError() if job.status == jobs.CANCELLED else JobCancellationNotAllowedError()
    return job_with_statistics(job)
