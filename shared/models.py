"""SQLAlchemy tables: where the drain stores notifications and where GET finds them once drained.

Personalization is not a JSON column: one row per (notification, key) keeps `notifications` free of the
multi-valued dependency the brief calls out (4NF). Alembic migrations in `shared/migrations` create these.
"""

from sqlalchemy import Column, DateTime, ForeignKey, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import UUID

metadata = MetaData()

notifications = Table(
    "notifications",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("to", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
)

notification_personalization = Table(
    "notification_personalization",
    metadata,
    Column(
        "notification_id",
        UUID(as_uuid=True),
        ForeignKey("notifications.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
