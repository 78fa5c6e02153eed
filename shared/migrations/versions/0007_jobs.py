"""Jobs (bulk sends): a `jobs` table, and each notification's job (`notifications.job_id`, NULL outside jobs).

A job names its template version (a foreign key to `template_versions`); its service and template type are the
template's (`templates.service_id`, `templates.type`), read by a join rather than stored twice (docs/schema.md).
`status` is the one internal status set (`shared.queries.JOB_STATUSES`, each route shows it in its own words);
`scheduled_for` is set for a job that waited for its time, `cancelled_at` exactly when it was cancelled.
Jobs are listed newest first by `(template_id, id)`: ids are UUIDv7, so id order is creation order; the jobs a
scheduler may start are found by `(scheduled_for, id) WHERE status = 'scheduled'`.

`notifications.job_id` is nullable without a default: adding it to the partitioned table rewrites nothing (each
partition's catalogue entry only). No index and no foreign key on it, as on the table's other references (each
would cost the drain on every row); the job routes will decide what reading a job's notifications needs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = PG_UUID(as_uuid=True)
TIMESTAMPTZ = TIMESTAMP(timezone=True)


def upgrade() -> None:
    """Create `jobs` and add `notifications.job_id`."""
    op.create_table(
        "jobs",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("template_id", UUID, nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("notification_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("scheduled_for", TIMESTAMPTZ, nullable=True),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False),
        sa.Column("api_key_id", UUID, sa.ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True),
        sa.Column("cancelled_at", TIMESTAMPTZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["template_id", "template_version"],
            ["template_versions.template_id", "template_versions.version"],
            name="jobs_template_version_fkey",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('scheduled', 'pending', 'queued', 'stored', 'cancelled')", name="jobs_status_check"
        ),
        sa.CheckConstraint("notification_count >= 1", name="jobs_notification_count_check"),
        sa.CheckConstraint("(status = 'cancelled') = (cancelled_at IS NOT NULL)", name="jobs_cancelled_at_check"),
        sa.CheckConstraint("status <> 'scheduled' OR scheduled_for IS NOT NULL", name="jobs_scheduled_for_check"),
    )
    op.create_index("jobs_template_newest_idx", "jobs", ["template_id", "id"])
    op.execute("CREATE INDEX jobs_due_idx ON jobs (scheduled_for, id) WHERE status = 'scheduled'")
    op.add_column("notifications", sa.Column("job_id", UUID, nullable=True))


def downgrade() -> None:
    """Drop `notifications.job_id` and `jobs` (jobs and their links are lost; their notifications stay)."""
    op.drop_column("notifications", "job_id")
    op.drop_index("jobs_due_idx", table_name="jobs")
    op.drop_index("jobs_template_newest_idx", table_name="jobs")
    op.drop_table("jobs")
