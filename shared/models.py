"""SQLAlchemy tables: where the drain stores notifications, GET finds them, and tenants keep keys and templates.

The tenancy tables are classic normalized tables with foreign keys; `notifications` is shaped for ingest (one row
per notification, personalization one `jsonb` map, no foreign keys, day partitions on its UUIDv7 id:
shared/partitions.py). docs/schema.md gives the keys and the argument for 4NF; migrations in `shared/migrations`.
"""

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

services = Table(
    "services",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # notifications per minute; NULL: the RATE_LIMIT_PER_MINUTE default, 0: unlimited
    Column("rate_limit_per_minute", Integer, nullable=True),
    CheckConstraint("rate_limit_per_minute >= 0", name="services_rate_limit_check"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("prefix", Text, nullable=False),
    Column("secret_hash", Text, nullable=False, unique=True),
    # the key's secret encrypted with SECRET_KEY (to verify GOV.UK Notify JWTs); NULL for keys issued before 0004
    Column("secret_ciphertext", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

templates = Table(
    "templates",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("service_id", UUID(as_uuid=True), ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("type", Text, nullable=False, server_default="email"),
    CheckConstraint("type IN ('email', 'sms')", name="templates_type_check"),
    UniqueConstraint("service_id", "name", name="templates_service_id_name_key"),
)

template_versions = Table(
    "template_versions",
    metadata,
    Column("template_id", UUID(as_uuid=True), ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("subject", Text, nullable=True),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("version >= 1", name="template_versions_version_check"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("service_id", UUID(as_uuid=True), nullable=False),
    Column("to", Text, nullable=False),
    Column("personalization", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("template_id", UUID(as_uuid=True), nullable=True),
    Column("template_version", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    # GOV.UK Notify v2 (migration 0005): `email` or `sms`; NULL for the native routes' notifications
    Column("type", Text, nullable=True),
    Column("reference", Text, nullable=True),
    Column("status", Text, nullable=False, server_default="created"),
    CheckConstraint("(template_id IS NULL) = (template_version IS NULL)", name="notifications_template_check"),
    CheckConstraint("type IN ('email', 'sms')", name="notifications_type_check"),
    # GET /v2/notifications: a service's Notify notifications newest first, of each type, of one reference
    Index(
        "notifications_service_type_newest_idx",
        "service_id",
        "type",
        "id",
        postgresql_where=text("type IS NOT NULL"),
    ),
    Index(
        "notifications_service_reference_newest_idx",
        "service_id",
        "reference",
        "id",
        postgresql_where=text("reference IS NOT NULL"),
    ),
    postgresql_partition_by="RANGE (id)",
)
