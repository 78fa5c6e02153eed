"""The brief's endpoints through HTTP: what a producer sees, and what Redis holds when the 201 is sent."""

import logging
from datetime import datetime
from uuid import UUID

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, queries
from shared.ids import stem_and_index
from shared.schemas import BRIEF_EXAMPLE, BRIEF_MULTIPLE_EXAMPLE
from shared.settings import Settings
from shared.tenancy import new_id, utc_now
from tests.helpers import Tenant, cache_keys, queued

BASE = "/notifications/v1"


async def test_post_returns_the_created_notification(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)

    assert response.status_code == 201
    body = response.json()
    assert body["to"] == "example@gmail.com"
    assert body["personalization"] == {"band": "Incubus"}
    assert body["sent_at"] is None
    assert body["template"] is None
    assert body["body"] is None
    assert UUID(body["id"]).version == 7
    created = datetime.fromisoformat(body["created_at"])
    assert created.tzinfo is not None
    assert body["updated_at"] == body["created_at"]
    assert response.headers["location"] == f"{BASE}/{body['id']}"
    assert response.headers["content-type"] == "application/json"


async def test_post_is_readable_at_once(client: httpx.AsyncClient) -> None:
    created = (await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)).json()

    fetched = await client.get(f"{BASE}/{created['id']}")

    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_post_queues_one_stream_entry_and_a_cache_key(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: Tenant
) -> None:
    created = (await client.post(f"{BASE}/", json={"to": "somebody"})).json()

    shard = keys.layout_for(settings).shard_of_id(created["id"])
    entries = await redis.xrange(shard.stream)
    assert len(entries) == 1
    cache_key = shard.request_key(str(tenant.service_id), stem_and_index(created["id"])[0])
    assert entries[0][1][keys.STREAM_KEY_FIELD] == cache_key.encode()  # the entry names the key...
    assert keys.STREAM_FIELD not in entries[0][1]  # ...and the JSON is kept once, there
    cached = await redis.get(cache_key)
    assert orjson.loads(cached) == [created]
    assert entries[0][1][keys.STREAM_SIZE_FIELD] == str(len(cached)).encode()  # its size, for the drain's parts
    assert await redis.ttl(cache_key) == -1  # no expiry before it is stored


async def test_personalization_is_optional(client: httpx.AsyncClient) -> None:
    for body in ({"to": "me"}, {"to": "me", "personalization": None}, {"to": "me", "personalization": {}}):
        response = await client.post(f"{BASE}/", json=body)
        assert response.status_code == 201
        assert response.json()["personalization"] == {}


async def test_multiple_returns_objects_in_request_order(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    response = await client.post(f"{BASE}/multiple", json=BRIEF_MULTIPLE_EXAMPLE)

    assert response.status_code == 201
    body = response.json()
    assert [item["to"] for item in body] == ["example@gmail.com", "another-example@gmail.com"]
    assert [item["personalization"]["band"] for item in body] == ["Korn", "Soundgarden"]
    assert len({item["id"] for item in body}) == 2
    assert await queued(redis, settings) == 1  # one entry for the whole request
    assert len(await cache_keys(redis, settings)) == 1  # and one cache key
    assert [item["id"][:-6] for item in body] == [body[0]["id"][:-6]] * 2  # one stem, then the index
    assert [item["id"][-6:] for item in body] == ["000000", "000001"]
    for item in body:
        assert (await client.get(f"{BASE}/{item['id']}")).json() == item


@pytest.mark.parametrize("payload", [[], [{"to": "x"}] * 1001], ids=["empty", "over-limit"])
async def test_multiple_refuses_empty_or_too_long_lists(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, payload: list
) -> None:
    response = await client.post(f"{BASE}/multiple", json=payload)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert await queued(redis, settings) == 0


async def test_multiple_is_all_or_nothing(client: httpx.AsyncClient, redis: Redis, settings: Settings) -> None:
    response = await client.post(f"{BASE}/multiple", json=[{"to": "fine"}, {"to": ""}, {"to": "also fine"}])

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 1, "to"]
    assert await queued(redis, settings) == 0
    assert await queued(redis, settings) == 0


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({}, ["body", "to"]),
        ({"to": ""}, ["body", "to"]),
        ({"to": "   "}, ["body", "to"]),
        ({"to": 5}, ["body", "to"]),
        ({"to": None}, ["body", "to"]),
        ({"to": "x" * 321}, ["body", "to"]),
        ({"to": "me", "personalization": {"": "empty key"}}, ["body", "personalization", "", "[key]"]),
        ({"to": "me", "personalization": {f"k{i}": "v" for i in range(51)}}, ["body", "personalization"]),
        ({"to": "me", "personalization": {"k": "v" * 4097}}, ["body", "personalization", "k"]),
        ({"to": "me", "personalization": {"k": "a\u0000"}}, ["body", "personalization", "k"]),
        ({"to": "a\u0000b"}, ["body", "to"]),
        ({"to": "me", "personalization": {"k": "bell\u0007"}}, ["body", "personalization", "k"]),
        ({"to": "me", "personalization": {"k": "del\u007f"}}, ["body", "personalization", "k"]),
        ({"to": "me", "personalization": {"esc\u001b": "v"}}, ["body", "personalization", "esc\u001b", "[key]"]),
        ({"to": "a\u0085b"}, ["body", "to"]),
        ({"to": "\u000bme"}, ["body", "to"]),
        ({"to": "me", "personalization": {"band": 1}}, ["body", "personalization", "band"]),
        ({"to": "me", "personalization": ["band"]}, ["body", "personalization"]),
        ({"to": "me", "personalization": {"k": {"nested": "no"}}}, ["body", "personalization", "k"]),
        ({"to": "me", "cc": "someone"}, ["body", "cc"]),
        ([{"to": "me"}], ["body"]),
        ("just a string", ["body"]),
    ],
)
async def test_invalid_notifications_get_422(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, payload: object, where: list[object]
) -> None:
    response = await client.post(f"{BASE}/", json=payload)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"][0]["loc"] == where
    assert await queued(redis, settings) == 0


async def test_control_characters_are_refused_but_tab_and_line_breaks_kept(client: httpx.AsyncClient) -> None:
    refused = await client.post(
        f"{BASE}/multiple", json=[{"to": "me"}, {"to": "me", "personalization": {"k": "\u0001"}}]
    )
    kept = await client.post(f"{BASE}/", json={"to": "me", "personalization": {"k": "a\tb\nc\r\nd"}})

    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", 1, "personalization", "k"]
    assert refused.json()["detail"][0]["msg"].startswith("must not contain control characters")
    assert kept.status_code == 201
    assert kept.json()["personalization"] == {"k": "a\tb\nc\r\nd"}


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b'{"to": "\\ud800"}', b"\xff\xfe"])
async def test_malformed_json_gets_422(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(f"{BASE}/", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_non_json_content_type_gets_415(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/", content=b"to=me", headers={"content-type": "text/plain"})

    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


async def test_missing_content_type_is_taken_as_json(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/", content=b'{"to": "me"}')

    assert response.status_code == 201


async def test_oversized_body_gets_413(client: httpx.AsyncClient, redis: Redis, settings: Settings) -> None:
    huge = orjson.dumps([{"to": "x" * 300, "personalization": {"k": "v" * 4000}}] * 1100)
    assert len(huge) > 4 * 1024 * 1024

    response = await client.post(f"{BASE}/multiple", content=huge, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert await queued(redis, settings) == 0


async def test_get_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/0190b8a4-6c1e-7000-8000-000000000000")

    assert response.status_code == 404
    assert response.json() == {"detail": "notification 0190b8a4-6c1e-7000-8000-000000000000 not found"}


async def test_get_malformed_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/not-a-uuid")

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "notification_id"]


async def test_get_accepts_an_id_without_dashes(client: httpx.AsyncClient) -> None:
    # not the hot path's canonical form: FastAPI's route parses it and answers through the same code
    created = await client.post(f"{BASE}/", json=BRIEF_EXAMPLE)
    compact = created.json()["id"].replace("-", "")

    response = await client.get(f"{BASE}/{compact}")

    assert response.status_code == 200
    assert response.content == created.content
    assert response.headers["content-type"] == "application/json"
    assert (await client.get(f"{BASE}/{'0' * 32}")).status_code == 404


async def test_heartbeat(client: httpx.AsyncClient) -> None:
    response = await client.get("/status/heartbeat")

    assert response.status_code == 204
    assert response.content == b""


async def test_requests_are_logged_in_the_briefs_format(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="api.access"):
        await client.get("/status/heartbeat")

    lines = [record.getMessage() for record in caplog.records if record.name == "api.access"]
    assert len(lines) == 1
    method, url, status, duration = lines[0].split(" ")
    assert (method, url, status) == ("GET", "http://localhost:8000/status/heartbeat", "204")
    assert duration.endswith("s")
    assert float(duration[:-1]) >= 0


async def test_openapi_documents_the_briefs_payloads(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    single = spec["paths"]["/notifications/v1/"]["post"]["requestBody"]["content"]["application/json"]
    multiple = spec["paths"]["/notifications/v1/multiple"]["post"]["requestBody"]["content"]["application/json"]
    assert single["example"] == BRIEF_EXAMPLE
    assert multiple["example"] == BRIEF_MULTIPLE_EXAMPLE
    assert (await client.get("/docs")).status_code == 200


async def test_limits_follow_the_settings(settings: Settings, tenant: Tenant) -> None:
    from api.main import create_app

    app = create_app(settings.model_copy(update={"max_to_length": 5, "max_batch_items": 2}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=tenant.headers) as http:
            long_to = await http.post(f"{BASE}/", json={"to": "123456"})
            fits = await http.post(f"{BASE}/", json={"to": "12345"})
            too_many = await http.post(f"{BASE}/multiple", json=[{"to": "a"}] * 3)

    assert long_to.status_code == 422
    assert long_to.json()["detail"][0]["ctx"] == {"max_length": 5}
    assert fits.status_code == 201
    assert too_many.status_code == 422


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (f"{BASE}/", b'{"to": NaN}'),
        (f"{BASE}/multiple", b'[{"to": 1e400}]'),
        (f"{BASE}/", b'{"to": "x", "template_version": -Infinity}'),
        ("/templates/v1/", b'{"name": NaN, "body": "x"}'),
    ],
)
async def test_non_finite_numbers_are_a_422_not_a_500(client: httpx.AsyncClient, path: str, raw: bytes) -> None:
    response = await client.post(path, content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    "raw", [b"-9223372036854775809", b'{"to": 123456789012345678901234567890}', b'[{"to": 1e999}]']
)
async def test_huge_numbers_are_reported_not_crashed_on(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(f"{BASE}/multiple", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"]


async def _template(client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant, body: str) -> str:
    """A template of `tenant`'s service; stored directly when the API would refuse its text (made before it did)."""
    response = await client.post("/templates/v1/", json={"name": "t", "type": "sms", "body": body})
    if response.status_code == 201:
        return str(response.json()["id"])
    template_id = new_id()
    async with engine.begin() as conn:
        await queries.insert_template(conn, template_id, tenant.service_id, "t", None, body, utc_now(), "sms")
    return str(template_id)


@pytest.mark.parametrize(
    "template_body",
    ["((v))" + "x" * 19_000, "\u0001" * 3_000 + "((v))"],
    ids=["long-template", "control-characters-stored-before-they-were-refused"],
)
async def test_a_request_queuing_more_than_max_queued_bytes_gets_413(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, tenant: Tenant, settings: Settings, template_body: str
) -> None:
    # a 90 KB body that templates would turn into ~19 MB of JSON in Redis, in the response and in a worker
    template_id = await _template(client, engine, tenant, template_body)
    items = [{"to": f"r{i}", "template_id": template_id, "personalization": {"v": "!"}} for i in range(1000)]

    response = await client.post(f"{BASE}/multiple", json=items)

    assert response.status_code == 413
    assert f"MAX_QUEUED_BYTES={settings.max_queued_bytes}" in response.json()["detail"]
    assert await queued(redis, settings) == 0
    assert await cache_keys(redis, settings) == []


async def test_a_full_multiple_of_templated_notifications_fits_max_queued_bytes(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant, settings: Settings
) -> None:
    template_id = await _template(client, engine, tenant, "Dear ((name)), " + "lorem ipsum " * 330)  # ~4,000 chars
    items = [
        {"to": f"user{i}@example.com", "template_id": template_id, "personalization": {"name": f"Name {i}"}}
        for i in range(settings.max_batch_items)
    ]

    response = await client.post(f"{BASE}/multiple", json=items)

    assert response.status_code == 201
    assert 4_000_000 < len(response.content) < settings.max_queued_bytes / 1.5


#: Personalization values that look like the JSON around them: our own separators, quotes, escapes, unicode.
NASTY = ['{"id":"', ',{"id":"', '"}', "\\", '\\"', '"],[', "ünïcødé ✓ 😀", "\t\r\n", "]", "{}"]


async def test_get_of_one_of_many_is_exactly_the_posted_document(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    template_id = await _template(client, engine, tenant, 'He said "((vv))" \\ ((id))')
    posted = await client.post(
        f"{BASE}/multiple",
        json=[
            {
                "to": f'"{i}\\',
                "personalization": {"id": f',{{"id":"{NASTY[i % len(NASTY)]}', "vv": NASTY[-1 - i % len(NASTY)]},
                **({"template_id": template_id} if i % 2 else {}),
            }
            for i in range(25)
        ],
    )
    assert posted.status_code == 201
    docs = orjson.loads(posted.content)
    # each document's id is followed in the array by its template's id and a personalization key "id" (first in
    # jsonb's key order, which the documents keep: shorter keys first, then bytewise)
    assert posted.content.count(b'{"id":"') == 25 + 12 + 25

    for index in (0, 1, 12, 23, 24):
        fetched = await client.get(f"{BASE}/{docs[index]['id']}")
        assert fetched.status_code == 200
        assert fetched.content == orjson.dumps(docs[index])  # byte for byte what parsing the array gave


async def test_get_of_one_of_many_does_not_parse_the_requests_array(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    posted = await client.post(f"{BASE}/multiple", json=[{"to": f"r{i}"} for i in range(200)])
    parsed: list[int] = []
    loads = orjson.loads

    def counting_loads(data: bytes | str) -> object:
        parsed.append(len(data))
        return loads(data)

    monkeypatch.setattr(orjson, "loads", counting_loads)
    fetched = await client.get(f"{BASE}/{posted.json()[100]['id']}")

    assert fetched.status_code == 200
    assert fetched.json() == posted.json()[100]
    assert [size for size in parsed if size >= len(posted.content)] == []  # the array was searched, not parsed


async def test_a_malformed_id_is_checked_after_the_key(anonymous: httpx.AsyncClient, tenant: Tenant) -> None:
    without = await anonymous.get(f"{BASE}/not-a-uuid")
    unknown_key = await anonymous.get(f"{BASE}/not-a-uuid", headers={"Authorization": "Bearer nope"})
    with_key = await anonymous.get(f"{BASE}/not-a-uuid", headers=tenant.headers)

    assert without.status_code == unknown_key.status_code == 401
    assert with_key.status_code == 422
    assert with_key.json()["detail"][0]["loc"] == ["path", "notification_id"]
