"""Services (tenants), API keys, versioned templates; notifications belong to a service.

Existing notifications are given the service named `default` (id DEFAULT_SERVICE_ID), created here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_SERVICE_ID = "00000000-0000-7000-8000-000000000001"
UUID = postgresql.UUID(as_uuid=True)
TIMESTAMPTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tenancy tables and attach every existing notification to the default service."""
    op.create_table(
        "services",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("name", sa.Text(), nullable=False, unique=True),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("service_id", UUID, sa.ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False, unique=True),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False),
        sa.Column("revoked_at", TIMESTAMPTZ, nullable=True),
    )
    op.create_index("api_keys_service_id_idx", "api_keys", ["service_id"])
    op.create_table(
        "templates",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("service_id", UUID, sa.ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False),
        sa.UniqueConstraint("service_id", "name", name="templates_service_id_name_key"),
    )
    op.create_table(
        "template_versions",
        sa.Column("template_id", UUID, sa.ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False),
        sa.CheckConstraint("version >= 1", name="template_versions_version_check"),
    )
    op.execute(f"INSERT INTO services (id, name, created_at) VALUES ('{DEFAULT_SERVICE_ID}', 'default', now())")
    op.add_column(
        "notifications",
        sa.Column("service_id", UUID, nullable=False, server_default=sa.text(f"'{DEFAULT_SERVICE_ID}'::uuid")),
    )
    op.alter_column("notifications", "service_id", server_default=None)
    op.create_foreign_key(
        "notifications_service_id_fkey", "notifications", "services", ["service_id"], ["id"], ondelete="CASCADE"
    )
    # No index on notifications.service_id: every index costs the drain on each row, and lookups go by id.
    op.create_table(
        "notification_templates",
        sa.Column("notification_id", UUID, sa.ForeignKey("notifications.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("template_id", UUID, nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["template_id", "template_version"],
            ["template_versions.template_id", "template_versions.version"],
            name="notification_templates_template_fkey",
        ),
    )


def downgrade() -> None:
    """Drop the tenancy tables (notifications lose their service)."""
    op.drop_table("notification_templates")
    op.drop_constraint("notifications_service_id_fkey", "notifications", type_="foreignkey")
    op.drop_column("notifications", "service_id")
    op.drop_table("template_versions")
    op.drop_table("templates")
    op.drop_index("api_keys_service_id_idx", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("services")
