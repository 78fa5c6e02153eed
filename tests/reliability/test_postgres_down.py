"""Postgres down on a Redis that lost its mirrors: a new service's sends are accepted on every route, then stored.

The servers are the test's own (it stops Postgres): a Redis emptied as a fresh or restarted one is, and a
service, key and templates made after that, so the rate limits' mirror in Redis is incomplete and the first
POST of each route must find its limit without Postgres.
"""

import httpx
from redis.asyncio import Redis
from sqlalchemy import text

from api.main import create_app
from devstack.embedded import EmbeddedPostgres, EmbeddedRedis
from shared import keys, tenancy
from shared.db import create_engine
from shared.secretbox import SecretBox
from shared.settings import Settings
from tests.helpers import TEST_SECRET_KEY, make_tenant, notify_headers, notify_key
from worker.drain import Drain


async def test_new_service_sends_on_every_route_while_postgres_is_down(
    own_servers: tuple[EmbeddedPostgres, EmbeddedRedis],
) -> None:
    pg, redis_server = own_servers
    settings = Settings(
        database_url=pg.url,
        redis_url=redis_server.url,
        secret_key=TEST_SECRET_KEY,
        template_cache_seconds=0.01,  # past by the sends: the templates' last versions seen serve in the outage
        drain_block_ms=20,
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = create_engine(pg.url)
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.flushall()  # a fresh Redis: no rate limits, no key registry marked complete
        tenant = await make_tenant(engine, redis, "new-during-outage")
        # a key of the service that Redis lost (made before the loss): only Postgres knows it
        box = SecretBox(TEST_SECRET_KEY)
        unknown_to_redis = await tenancy.create_api_key(engine, redis, box, tenant.service_id, "lost")
        await redis.hdel(keys.api_key_secrets_key(tenant.service_id), str(unknown_to_redis.record.id))
        assert not await redis.hexists(keys.RATE_LIMITS_HASH, keys.RATE_LIMITS_COMPLETE_FIELD)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                template_ids = {}
                for kind, subject in (("email", "Hello"), ("sms", None)):
                    made = await client.post(
                        "/templates/v1/",
                        headers=tenant.headers,
                        json={"name": kind, "type": kind, "subject": subject, "body": "Dear ((name))"},
                    )
                    assert made.status_code == 201, made.text
                    template_ids[kind] = made.json()["id"]

                pg.stop(mode="immediate")
                accepted: list[str] = []
                single = await client.post("/notifications/v1/", headers=tenant.headers, json={"to": "a"})
                assert single.status_code == 201, single.text
                accepted.append(single.json()["id"])
                multiple = await client.post(
                    "/notifications/v1/multiple", headers=tenant.headers, json=[{"to": "b"}, {"to": "c"}]
                )
                assert multiple.status_code == 201, multiple.text
                accepted.extend(item["id"] for item in multiple.json())
                recipients = {"email": {"email_address": "x@example.com"}, "sms": {"phone_number": "07700900123"}}
                for kind, recipient in recipients.items():
                    sent = await client.post(
                        f"/v2/notifications/{kind}",
                        headers=notify_headers(notify_key(tenant)),
                        json={**recipient, "template_id": template_ids[kind], "personalisation": {"name": "Ann"}},
                    )
                    assert sent.status_code == 201, sent.text
                    accepted.append(sent.json()["id"])
                # a token none of the keys in Redis signed may be valid: the outage answers, not a refusal
                unsure = await client.post(
                    "/v2/notifications/sms",
                    headers=notify_headers(unknown_to_redis.secret),
                    json={"phone_number": "07700900123", "template_id": template_ids["sms"]},
                )
                assert unsure.status_code == 503, unsure.text

        pg.start()
        drain = Drain(redis, engine, settings, "outage-test")
        await drain.ensure_group()
        while batch := await drain.read_new():
            await drain.drain_batch(batch)
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT id::text FROM notifications"))).scalars().all()
        assert sorted(stored) == sorted(accepted)
    finally:
        await redis.aclose()
        await engine.dispose()
