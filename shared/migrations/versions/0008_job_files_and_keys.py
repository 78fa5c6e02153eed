"""Jobs' stored files and Idempotency-Keys: `job_files` (a scheduled job's rows until its time), `job_keys`.

`job_files (job_id, seq, chunk)`: a scheduled job's validated rows, one chunk a batch (`shared.job_store`'s
format), kept until the scheduler queues them and deletes them in the same transaction. `notifications` holds
nothing of a job before its time.

`job_keys (service_id, key, job_id, fingerprint)`: an Idempotency-Key given with a job, inserted in the job's own
transaction, so a retried job is stored once however the first attempt ended: committed (the retry finds the key
and gets the same job), rolled back or killed (no key, the retry stores it). The primary key makes a concurrent
retry wait for the first attempt's commit. `fingerprint` is a hash of the request (route, query and body): the same
key with another request is refused.

Both reference `jobs` with foreign keys checked at commit (`DEFERRABLE INITIALLY DEFERRED`): a job's rows are
written as they are read, before the `jobs` row, whose count is known only at the end.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = PG_UUID(as_uuid=True)


def upgrade() -> None:
    """Create `job_files` and `job_keys`."""
    op.create_table(
        "job_files",
        sa.Column("job_id", UUID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("chunk", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "seq"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="job_files_job_fkey", ondelete="CASCADE", deferrable=True,
            initially="DEFERRED",
        ),
    )  # fmt: skip
    op.create_table(
        "job_keys",
        sa.Column("service_id", UUID, sa.ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("job_id", UUID, nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("service_id", "key"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="job_keys_job_fkey", ondelete="CASCADE", deferrable=True,
            initially="DEFERRED",
        ),
    )  # fmt: skip


def downgrade() -> None:
    """Drop `job_keys` and `job_files` (a scheduled job's rows are lost with it)."""
    op.drop_table("job_keys")
    op.drop_table("job_files")
