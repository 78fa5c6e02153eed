"""Ingest-shaped notifications: one row each (personalization a jsonb map), no foreign keys, day partitions on id.

Replaces `notifications` + `notification_personalization` + `notification_templates` with one `notifications`
table partitioned by range on its UUIDv7 id (shared/partitions.py). Every stored row is carried over: a partition
is made for each day the existing ids fall on (and yesterday to DAYS_AHEAD days ahead), the rows are copied with
their personalization folded into a map and their template reference into two columns, then the old tables are
dropped. Existing ids must be UUIDv7 (this service has only ever issued those); the upgrade stops, changing
nothing, if one is not. Retention applies from the first maintenance on: set RETENTION_DAYS=0 before upgrading to
keep older days.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence
from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op

from shared.partitions import DAYS_AHEAD, first_id, name_of, today

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EPOCH = date(1970, 1, 1)
#: The UTC day number of a UUIDv7 id, from its 48-bit millisecond prefix.
_DAY_OF_ID = "(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint / 86400000)"


def _create_partition(day: date) -> None:
    low, high = first_id(day), first_id(day + timedelta(days=1))
    op.execute(f"CREATE TABLE {name_of(day)} PARTITION OF notifications FOR VALUES FROM ('{low}') TO ('{high}')")


def upgrade() -> None:
    """Create the partitioned table, copy every notification into it, drop the old tables."""
    conn = op.get_bind()
    not_v7 = conn.execute(sa.text("SELECT id FROM notifications WHERE substr(id::text, 15, 1) <> '7' LIMIT 1")).first()
    if not_v7 is not None:
        raise RuntimeError(f"notification id {not_v7[0]} is not a UUIDv7: it cannot be placed in a day partition")
    op.execute("ALTER TABLE notifications RENAME TO notifications_0002")
    op.execute("ALTER TABLE notifications_0002 RENAME CONSTRAINT notifications_pkey TO notifications_0002_pkey")
    op.execute(
        """
        CREATE TABLE notifications (
            id uuid NOT NULL,
            service_id uuid NOT NULL,
            "to" text NOT NULL,
            personalization jsonb NOT NULL DEFAULT '{}'::jsonb,
            template_id uuid,
            template_version integer,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            sent_at timestamptz,
            CONSTRAINT notifications_pkey PRIMARY KEY (id),
            CONSTRAINT notifications_template_check CHECK ((template_id IS NULL) = (template_version IS NULL))
        ) PARTITION BY RANGE (id)
        """
    )
    stored_days = conn.execute(sa.text(f"SELECT DISTINCT {_DAY_OF_ID} FROM notifications_0002"))
    days = {_EPOCH + timedelta(days=int(n)) for (n,) in stored_days}
    start = today()
    days |= {start + timedelta(days=offset) for offset in range(-1, DAYS_AHEAD + 1)}
    for day in sorted(days):
        _create_partition(day)
    op.execute(
        """
        INSERT INTO notifications (id, service_id, "to", personalization, template_id, template_version,
                                   created_at, updated_at, sent_at)
        SELECT n.id, n.service_id, n."to",
               coalesce((SELECT jsonb_object_agg(p.key, p.value) FROM notification_personalization AS p
                          WHERE p.notification_id = n.id), '{}'::jsonb),
               t.template_id, t.template_version, n.created_at, n.updated_at, n.sent_at
        FROM notifications_0002 AS n LEFT JOIN notification_templates AS t ON t.notification_id = n.id
        """
    )
    op.execute("DROP TABLE notification_templates, notification_personalization, notifications_0002")


def downgrade() -> None:
    """Back to three unpartitioned tables with foreign keys; every row is carried back."""
    op.execute("ALTER TABLE notifications RENAME TO notifications_0003")
    op.execute("ALTER TABLE notifications_0003 RENAME CONSTRAINT notifications_pkey TO notifications_0003_pkey")
    uuid = sa.dialects.postgresql.UUID(as_uuid=True)
    op.create_table(
        "notifications",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("to", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("service_id", uuid, sa.ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_table(
        "notification_personalization",
        sa.Column("notification_id", uuid, sa.ForeignKey("notifications.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "notification_templates",
        sa.Column("notification_id", uuid, sa.ForeignKey("notifications.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("template_id", uuid, nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id", "template_version"],
            ["template_versions.template_id", "template_versions.version"],
            name="notification_templates_template_fkey",
        ),
    )
    op.execute(
        'INSERT INTO notifications (id, "to", created_at, updated_at, sent_at, service_id) '
        'SELECT id, "to", created_at, updated_at, sent_at, service_id FROM notifications_0003'
    )
    op.execute(
        "INSERT INTO notification_personalization (notification_id, key, value) "
        "SELECT n.id, p.key, p.value FROM notifications_0003 AS n, jsonb_each_text(n.personalization) AS p(key, value)"
    )
    op.execute(
        "INSERT INTO notification_templates (notification_id, template_id, template_version) "
        "SELECT id, template_id, template_version FROM notifications_0003 WHERE template_id IS NOT NULL"
    )
    op.execute("DROP TABLE notifications_0003")
