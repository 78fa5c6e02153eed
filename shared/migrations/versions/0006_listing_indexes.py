"""Indexes that serve every filter of `GET /v2/notifications`, newest first, at no more cost to the drain.

The list is `ORDER BY id DESC LIMIT 250` under filters. 0005's `(service_id, id) WHERE type IS NOT NULL` served the
unfiltered list, but a filter that matches few of a service's rows made it walk the service's whole index and heap
(a parallel seq scan of the day partition at 1M rows). Now:

- `(service_id, type, id) WHERE type IS NOT NULL` replaces `(service_id, id)`: one `template_type` is one backward
  range scan; the unfiltered list is one such scan per type (two), each stopping after a page, merged
  (`shared.queries.listing_query`).
- `(service_id, reference, id) WHERE reference IS NOT NULL` replaces `(service_id, reference)`: a reference shared
  by many notifications is read newest first and stops after a page, instead of reading all of them to sort.

Still two B-trees per v2 row for the drain (a third would cost it about as much again as each of these:
loadtest/RESULTS.md §9); the native routes' notifications (type and reference NULL) enter neither. A `status` or
`template_type` no stored notification can have is answered without a query, and every stored notification is
`created`, so a status needs no index. Made on the partitioned table, they are made on every partition and on each
partition made later; like 0005's, `CREATE INDEX` on a partitioned table holds writes (the drain) while it builds;
the API keeps accepting into Redis meanwhile.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Replace 0005's two listing indexes with ones that end in the id."""
    op.execute(
        "CREATE INDEX notifications_service_type_newest_idx ON notifications (service_id, type, id) "
        "WHERE type IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX notifications_service_reference_newest_idx ON notifications (service_id, reference, id) "
        "WHERE reference IS NOT NULL"
    )
    op.execute("DROP INDEX notifications_service_newest_idx")
    op.execute("DROP INDEX notifications_service_reference_idx")


def downgrade() -> None:
    """Back to 0005's two listing indexes."""
    op.execute("CREATE INDEX notifications_service_newest_idx ON notifications (service_id, id) WHERE type IS NOT NULL")
    op.execute(
        "CREATE INDEX notifications_service_reference_idx ON notifications (service_id, reference) "
        "WHERE reference IS NOT NULL"
    )
    op.execute("DROP INDEX notifications_service_reference_newest_idx")
    op.execute("DROP INDEX notifications_service_type_newest_idx")
