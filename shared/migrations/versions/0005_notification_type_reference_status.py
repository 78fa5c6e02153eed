"""Notifications keep their GOV.UK Notify type, reference and status; indexes to list them.

- `notifications.type`: `email` or `sms` for notifications sent through the Notify v2 routes; NULL for those of the
  native `/notifications/v1/` routes (their `to` is any recipient string: the service cannot tell the channel), and
  for every notification stored before.
- `notifications.reference`: the producer's own reference (Notify's `reference`), NULL when none was given.
- `notifications.status`: `created` (the default): this service accepts and stores, it does not deliver.
- Two partial indexes, for `GET /v2/notifications` only, so notifications of the native routes (type NULL) cost
  the drain nothing: `(service_id, id) WHERE type IS NOT NULL` lists a service's notifications newest first by a
  backward scan (ids are UUIDv7: id order is creation order; ascending, the index takes new ids at its right edge,
  where B-tree inserts are cheapest: loadtest/RESULTS.md §9), `(service_id, reference) WHERE reference IS NOT NULL`
  finds them by reference. Made on the partitioned table, they are made on every partition, and on each
  partition made later (`ATTACH PARTITION` builds them). `CREATE INDEX` on a partitioned table cannot be
  CONCURRENTLY: it holds writes (the drain) while it builds over the partitions that exist; the API keeps
  accepting into Redis meanwhile.

Adding the columns rewrites nothing (nullable, or a constant default).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add type, reference and status, and the two listing indexes."""
    op.add_column("notifications", sa.Column("type", sa.Text(), nullable=True))
    op.add_column("notifications", sa.Column("reference", sa.Text(), nullable=True))
    op.add_column("notifications", sa.Column("status", sa.Text(), nullable=False, server_default="created"))
    op.create_check_constraint("notifications_type_check", "notifications", "type IN ('email', 'sms')")
    op.execute("CREATE INDEX notifications_service_newest_idx ON notifications (service_id, id) WHERE type IS NOT NULL")
    op.execute(
        "CREATE INDEX notifications_service_reference_idx ON notifications (service_id, reference) "
        "WHERE reference IS NOT NULL"
    )


def downgrade() -> None:
    """Drop the indexes and the three columns (types, references and statuses are lost)."""
    op.execute("DROP INDEX notifications_service_reference_idx")
    op.execute("DROP INDEX notifications_service_newest_idx")
    op.drop_constraint("notifications_type_check", "notifications")
    op.drop_column("notifications", "status")
    op.drop_column("notifications", "reference")
    op.drop_column("notifications", "type")
