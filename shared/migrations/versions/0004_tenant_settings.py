"""Per-service rate limits, API key secrets kept for JWT checks, and template types.

- `services.rate_limit_per_minute`: the service's own limit in notifications per minute (NULL: the
  RATE_LIMIT_PER_MINUTE default; 0: unlimited).
- `api_keys.secret_ciphertext`: the key's secret, encrypted with the server's SECRET_KEY, so that GOV.UK Notify's
  JWTs (HMAC signed with the secret) can be verified. NULL for keys issued before, which only work as bearer keys.
- `templates.type`: `email` (a subject is required) or `sms` (no subject); existing templates become `email`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the three columns (no table rewrite: the new columns are nullable or have a constant default)."""
    op.add_column("services", sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
    op.create_check_constraint("services_rate_limit_check", "services", "rate_limit_per_minute >= 0")
    op.add_column("api_keys", sa.Column("secret_ciphertext", sa.Text(), nullable=True))
    op.add_column("templates", sa.Column("type", sa.Text(), nullable=False, server_default="email"))
    op.create_check_constraint("templates_type_check", "templates", "type IN ('email', 'sms')")


def downgrade() -> None:
    """Drop the three columns (per-service limits, key secrets and template types are lost)."""
    op.drop_column("templates", "type")
    op.drop_column("api_keys", "secret_ciphertext")
    op.drop_column("services", "rate_limit_per_minute")
