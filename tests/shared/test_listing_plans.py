"""`GET /v2/notifications`'s plans at 1M rows: every filter read newest first from an index that serves it.

A filter matching few of a service's rows once walked the service's whole `(service_id, id)` index and heap (a
parallel seq scan of the day partition at 1M rows); one that cannot match (`status=delivered`) ran a query at all.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import partitions, queries
from shared.ids import request_ids
from tests.helpers import Tenant, notify_headers, notify_key

ROWS = 1_000_000
#: Rows a plan may read for one page (250), 1% of the service's: a page, or a few pages' worth past rows a filter
#: drops (`reference=common`, one row in ten, read by the primary key) — never a walk over the service's rows.
READ_BOUND = 10_000

# One service's 1M emails (today, by Postgres's clock, from 01:00 one per millisecond): every 10,000th has the
# reference `rare`, every 10th `common`; none is an sms.
FILL = """
    INSERT INTO {table} (id, service_id, "to", created_at, updated_at, type, reference)
    SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
           :service_id, 'someone@example.com', now(), now(), 'email',
           CASE WHEN g % 10000 = 0 THEN 'rare' WHEN g % 10 = 0 THEN 'common' END
    FROM generate_series(1, :rows) AS g,
         LATERAL (SELECT lpad(to_hex(
             (extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC')) * 1000)::bigint + 3600000 + g
         ), 12, '0') AS h) AS x
"""


def scans(plan: Any) -> Iterator[dict[str, Any]]:
    """Yield the plan's nodes that read a partition of `notifications`."""
    if isinstance(plan, dict):
        if str(plan.get("Relation Name", "")).startswith("notifications_p"):
            yield plan
        for value in plan.values():
            yield from scans(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from scans(value)


async def explain(engine: AsyncEngine, service_id: UUID, **filters: Any) -> list[dict[str, Any]]:
    """Run the listing with EXPLAIN ANALYZE; return its partition scans."""
    query, params = queries.listing_query(service_id, queries.ListingFilter(**filters))
    async with engine.connect() as conn:
        plan = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + query.text), params)).scalar()
    return list(scans(orjson.loads(plan) if isinstance(plan, str) else plan))


async def fill_today(engine: AsyncEngine, service_id: UUID) -> str:
    """Give Postgres's today's partition the ROWS of FILL, analyzed; return its name.

    Filled as a plain table and then attached: the indexes are built once, sorted (3x faster than row by row).
    """
    async with engine.begin() as conn:
        day = (await conn.execute(text("SELECT (now() AT TIME ZONE 'UTC')::date"))).scalar_one()
        name, low, high = partitions.name_of(day), partitions.first_id(day), partitions.first_id(day + timedelta(1))
        await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        await conn.execute(text(f"CREATE TABLE {name} (LIKE notifications INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
        await conn.execute(text(FILL.format(table=name)), {"service_id": service_id, "rows": ROWS})
        bounds = f"FOR VALUES FROM ('{low}') TO ('{high}')"
        await conn.execute(text(f"ALTER TABLE notifications ATTACH PARTITION {name} {bounds}"))
        await conn.execute(text("ANALYZE notifications"))
    return name


async def test_each_listing_filter_reads_a_page_from_an_index_at_1m_rows(engine: AsyncEngine, tenant: Tenant) -> None:
    name = await fill_today(engine, tenant.service_id)
    async with engine.connect() as conn:
        rare = "SELECT id FROM notifications WHERE reference = 'rare' ORDER BY id OFFSET 50 LIMIT 1"
        middle = (await conn.execute(text(rare))).scalar()

    for filters in (
        {},
        {"types": ["sms"]},
        {"types": ["sms"], "older_than": middle},
        {"types": ["sms", "letter"], "statuses": ["created"]},
        {"types": ["email"]},
        {"types": ["email", "sms"], "statuses": ["created"]},
        {"reference": "rare"},
        {"reference": "common"},
        {"reference": "common", "older_than": middle},
        {"reference": "common", "types": ["sms"]},
    ):
        found = await explain(engine, tenant.service_id, **filters)
        filled = [node for node in found if node["Relation Name"] == name]
        assert filled, (filters, found)
        assert {node["Node Type"] for node in filled} <= {"Index Scan", "Index Only Scan"}, (filters, filled)
        for node in found:  # the others are empty: a seq scan of nothing is the planner's cheapest read of them
            removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
            assert node["Actual Rows"] + removed <= READ_BOUND, (filters, node)


async def test_a_filter_that_cannot_match_answers_an_empty_page_without_a_query(
    app: FastAPI, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    client.headers.update(notify_headers(notify_key(tenant)))
    assert (await client.get("/v2/notifications")).status_code == 200  # the key registry loaded (Postgres, once)
    listen_on = app.state.engine.sync_engine
    event.listen(listen_on, "before_cursor_execute", seen)
    try:
        for params in ({"status": "delivered"}, {"status": ["sending", "failed"]}, {"template_type": "letter"}):
            response = await client.get("/v2/notifications", params=params)
            assert response.status_code == 200, response.text
            assert response.json()["notifications"] == []
            assert "next" not in response.json()["links"]
        assert statements == []
        for params in ({"status": ["delivered", "created"]}, {"template_type": ["letter", "sms"]}):
            assert (await client.get("/v2/notifications", params=params)).status_code == 200
            assert statements, params  # these can match: they are asked
            statements.clear()
    finally:
        event.remove(listen_on, "before_cursor_execute", seen)


async def test_pages_of_both_types_are_merged_newest_first(engine: AsyncEngine, tenant: Tenant) -> None:
    _, ids = request_ids(10)  # today's, in order
    types = ["email" if n % 3 else "sms" for n in range(10)]
    await partitions.ensure(engine, {partitions.day_of(ids[0])}, set())
    async with engine.begin() as conn:
        for notification_id, notification_type in zip(ids, types, strict=True):
            await conn.execute(
                text(
                    'INSERT INTO notifications (id, service_id, "to", created_at, updated_at, type) '
                    "VALUES (:id, :service_id, 'someone', now(), now(), :type)"
                ),
                {"id": notification_id, "service_id": tenant.service_id, "type": notification_type},
            )

    async def page(older_than: str | None = None, **filters: Any) -> list[str]:
        listing = queries.ListingFilter(older_than=UUID(older_than) if older_than else None, **filters)
        async with engine.connect() as conn:
            docs = await queries.list_notify_notifications(conn, tenant.service_id, listing, limit=4)
        return [orjson.loads(doc)["id"] for doc in docs]

    newest_first = ids[::-1]
    assert await page() == newest_first[:4]
    assert await page(newest_first[3]) == newest_first[4:8]
    assert await page(newest_first[7]) == newest_first[8:]
    assert await page(types=["sms"]) == [i for i, t in zip(ids, types, strict=True) if t == "sms"][::-1][:4]
    assert (
        await page(types=["email", "letter"], statuses=["created"])
        == [i for i, t in zip(ids, types, strict=True) if t == "email"][::-1][:4]
    )
