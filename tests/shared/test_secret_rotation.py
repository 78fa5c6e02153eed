"""Rotating SECRET_KEY: `keys reseal` never seals with a key a live API process cannot open.

API processes report the fingerprints of the keys they hold in Redis (`shared.secret_holders`); the CLI reads them.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import secret_holders
from shared.secretbox import SecretBox, new_secret_key
from shared.settings import Settings
from tests.helpers import TEST_SECRET_KEY, Tenant, cli, notify_headers, notify_key

OLD = TEST_SECRET_KEY


@asynccontextmanager
async def api_process(settings: Settings, secret_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An API process holding `secret_key` (its secrets read from Redis on every token: no cache)."""
    app = create_app(settings.model_copy(update={"secret_key": SecretStr(secret_key), "auth_cache_seconds": 0}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def _listing(client: httpx.AsyncClient, tenant: Tenant) -> int:
    """The status of a v2 call signed with the tenant's key (200: its secret opened)."""
    return (await client.get("/v2/notifications", headers=notify_headers(notify_key(tenant)))).status_code


async def _stored_ciphertext(engine: AsyncEngine, tenant: Tenant) -> str:
    async with engine.connect() as conn:
        query = text("SELECT secret_ciphertext FROM api_keys WHERE id = :id")
        return str((await conn.execute(query, {"id": tenant.key_id})).scalar_one())


async def test_reseal_refuses_while_a_live_api_process_lacks_the_new_key(
    settings: Settings, worker_env: dict[str, str], engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    new = new_secret_key()
    async with api_process(settings, OLD) as old_only:
        assert await _listing(old_only, tenant) == 200

        refused = cli({**worker_env, "SECRET_KEY": f"{new},{OLD}"}, "keys", "reseal")

        assert refused.returncode == 1
        assert "refused, nothing resealed: 1 live API process(es) do not hold" in refused.stderr
        assert "can" not in refused.stdout  # nothing says the old key can go
        SecretBox(OLD).open(await _stored_ciphertext(engine, tenant))  # still sealed with the old key
        assert await _listing(old_only, tenant) == 200  # its tokens still work


async def test_reseal_goes_ahead_once_every_live_process_holds_the_new_key(
    settings: Settings, worker_env: dict[str, str], engine: AsyncEngine, redis: Redis, tenant: Tenant
) -> None:
    new = new_secret_key()
    rotated = {**worker_env, "SECRET_KEY": f"{new},{OLD}"}
    async with api_process(settings, f"{OLD},{new}") as opens_new, api_process(settings, f"{new},{OLD}") as seals_new:
        resealed = cli(rotated, "keys", "reseal")  # every process opens the new key; one still seals with the old

        assert resealed.returncode == 0, resealed.stderr
        assert resealed.stdout.startswith("1 key secret(s) sealed again")
        assert "keep the old key: 1 API process(es) still seal new keys with another key" in resealed.stdout
        assert "drop them now" not in resealed.stdout
        SecretBox(new).open(await _stored_ciphertext(engine, tenant))
        assert await _listing(opens_new, tenant) == await _listing(seals_new, tenant) == 200

    async with api_process(settings, f"{new},{OLD}") as seals_new:
        again = cli(rotated, "keys", "reseal")
        assert again.returncode == 0, again.stderr
        assert "no live API process needs SECRET_KEY's other keys (1 hold the new one): drop them now" in again.stdout
        assert await _listing(seals_new, tenant) == 200


async def test_a_process_that_stopped_or_died_no_longer_counts(
    settings: Settings, worker_env: dict[str, str], redis: Redis, tenant: Tenant
) -> None:
    new = new_secret_key()
    rotated = {**worker_env, "SECRET_KEY": f"{new},{OLD}"}
    async with api_process(settings, OLD):
        assert len(await secret_holders.live_holders(redis)) == 1
    assert await secret_holders.live_holders(redis) == {}  # withdrawn at shutdown

    old_fingerprint = SecretBox(OLD).fingerprints[0]
    await secret_holders.report(redis, "killed-process", [old_fingerprint], live_seconds=2)  # never withdrawn
    assert list(await secret_holders.live_holders(redis)) == ["killed-process"]
    for _ in range(400):  # until its report lapses (Redis's clock)
        if not await secret_holders.live_holders(redis):
            break
        await asyncio.sleep(0.05)

    resealed = cli(rotated, "keys", "reseal")

    assert resealed.returncode == 0, resealed.stderr
    assert "drop them now" in resealed.stdout
