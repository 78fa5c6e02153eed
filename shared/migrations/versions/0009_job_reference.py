"""A job's `reference` (GC Notify's bulk send has one for all its rows), kept with the job for when it runs.

A job stored at once writes its reference into each notification; a scheduled one is stored later by a worker,
which reads it from here. Nullable, no default: adding it rewrites nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `jobs.reference`."""
    op.add_column("jobs", sa.Column("reference", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop `jobs.reference` (a scheduled job's notifications are then stored without it)."""
    op.drop_column("jobs", "reference")
