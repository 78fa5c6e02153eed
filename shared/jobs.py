"""A job's status: the one internal set both processes use, and the words each route shows for it.

| internal    | meaning                                                        | GC Notify     | native      |
|-------------|----------------------------------------------------------------|---------------|-------------|
| `scheduled` | waits for `scheduled_for`; its rows are kept, none queued yet  | `scheduled`   | `scheduled` |
| `pending`   | due: its rows are being queued; it can no longer be cancelled  | `pending`     | `scheduled` |
| `queued`    | every row is durably queued (a GET of any of them answers)     | `in progress` | `queued`    |
| `stored`    | every row is in Postgres                                       | `finished`    | `stored`    |
| `cancelled` | cancelled before it started (`cancelled_at` says when)         | `cancelled`   | `cancelled` |

Only a `scheduled` job that is not yet due can be cancelled. A job accepted to run at once is `queued` when its
201 is sent (its rows are durable by then). The table's CHECK constraint (migration 0007) holds the same set.
"""

from uuid import UUID

from shared import ids

SCHEDULED, PENDING, QUEUED, STORED, CANCELLED = "scheduled", "pending", "queued", "stored", "cancelled"
JOB_STATUSES = (SCHEDULED, PENDING, QUEUED, STORED, CANCELLED)
GC_JOB_STATUS = {
    SCHEDULED: "scheduled", PENDING: "pending", QUEUED: "in progress", STORED: "finished", CANCELLED: "cancelled",
}  # fmt: skip
NATIVE_JOB_STATUS = {
    SCHEDULED: "scheduled", PENDING: "scheduled", QUEUED: "queued", STORED: "stored", CANCELLED: "cancelled",
}  # fmt: skip


def new_job_id() -> UUID:
    """Return a new job's id: a UUIDv7 (time-ordered, so a service's jobs list newest first by id)."""
    return UUID(ids.notification_id_at(ids.new_stem(), 0))
