"""Versioned templates, and notifications rendered from them (before and after the drain)."""

from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.helpers import drain_all, make_tenant, queued
from worker.drain import Drain

T = "/templates/v1"
N = "/notifications/v1"
GIG = {"name": "gig", "subject": "((band)) live", "body": "Hi ((name)), ((band)) plays ((city)) on ((day))."}


async def test_create_update_get_list_versions(client: httpx.AsyncClient) -> None:
    created = await client.post(f"{T}/", json=GIG)
    assert created.status_code == 201
    first = created.json()
    assert first["version"] == 1
    assert first["placeholders"] == ["band", "name", "city", "day"]

    updated = await client.put(f"{T}/{first['id']}", json={"subject": "Tonight", "body": "((band)) tonight!"})
    assert updated.status_code == 200
    assert updated.json()["version"] == 2
    assert updated.json()["subject"] == "Tonight"
    assert updated.json()["type"] == "email"
    assert updated.json()["placeholders"] == ["band"]

    assert (await client.get(f"{T}/{first['id']}")).json()["version"] == 2
    assert (await client.get(f"{T}/{first['id']}", params={"version": 1})).json()["body"] == GIG["body"]
    assert (await client.get(f"{T}/{first['id']}", params={"version": 3})).status_code == 404
    versions = (await client.get(f"{T}/{first['id']}/versions")).json()
    assert [v["version"] for v in versions] == [1, 2]
    assert [t["version"] for t in (await client.get(f"{T}/")).json()] == [2]


async def test_template_names_are_unique_per_service(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, engine: AsyncEngine, redis: Redis
) -> None:
    assert (await client.post(f"{T}/", json=GIG)).status_code == 201
    assert (await client.post(f"{T}/", json=GIG)).status_code == 409
    other = await make_tenant(engine, redis, "tenant-b")
    assert (await anonymous.post(f"{T}/", json=GIG, headers=other.headers)).status_code == 201


async def test_other_services_templates_are_invisible(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, engine: AsyncEngine, redis: Redis
) -> None:
    template = (await client.post(f"{T}/", json=GIG)).json()
    other = await make_tenant(engine, redis, "tenant-b")

    assert (await anonymous.get(f"{T}/{template['id']}", headers=other.headers)).status_code == 404
    assert (await anonymous.put(f"{T}/{template['id']}", json={"body": "x"}, headers=other.headers)).status_code == 404
    assert (await anonymous.get(f"{T}/", headers=other.headers)).json() == []
    sent = await anonymous.post(
        f"{N}/", json={"to": "me", "template_id": template["id"], "personalization": {}}, headers=other.headers
    )
    assert sent.status_code == 422
    assert sent.json()["detail"][0]["type"] == "unknown_template"


async def test_missing_personalization_is_422_naming_all(client: httpx.AsyncClient, redis: Redis) -> None:
    template = (await client.post(f"{T}/", json=GIG)).json()

    response = await client.post(
        f"{N}/", json={"to": "me", "template_id": template["id"], "personalization": {"band": "Korn"}}
    )

    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "personalization"]
    assert error["ctx"]["missing"] == ["name", "city", "day"]
    assert "name, city, day" in error["msg"]
    assert await redis.exists("notify:stream") == 0


async def test_multiple_reports_every_item_with_missing_values(client: httpx.AsyncClient) -> None:
    template = (await client.post(f"{T}/", json={"name": "t", "type": "sms", "body": "((a)) ((b))"})).json()
    items = [
        {"to": "1", "template_id": template["id"], "personalization": {"a": "x", "b": "y"}},
        {"to": "2", "template_id": template["id"], "personalization": {"a": "x"}},
        {"to": "3"},
        {"to": "4", "template_id": template["id"]},
    ]

    response = await client.post(f"{N}/multiple", json=items)

    assert response.status_code == 422
    assert [(e["loc"], e["ctx"]["missing"]) for e in response.json()["detail"]] == [
        (["body", 1, "personalization"], ["b"]),
        (["body", 3, "personalization"], ["a", "b"]),
    ]


async def test_rendered_notification_before_and_after_drain(
    client: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    template = (await client.post(f"{T}/", json=GIG)).json()
    await client.put(f"{T}/{template['id']}", json={"subject": "v2", "body": "v2 ((band))"})
    values = {"band": "Incubus", "name": "Ann", "city": "Oslo", "day": "Friday", "campaign": "autumn"}

    pinned = await client.post(
        f"{N}/",
        json={"to": "ann@example.com", "template_id": template["id"], "template_version": 1, "personalization": values},
    )
    latest = await client.post(
        f"{N}/", json={"to": "bob", "template_id": template["id"], "personalization": {"band": "Korn"}}
    )

    assert pinned.status_code == 201
    body = pinned.json()
    assert body["template"] == {"id": template["id"], "version": 1}
    assert body["subject"] == "Incubus live"
    assert body["body"] == "Hi Ann, Incubus plays Oslo on Friday."
    assert body["personalization"]["campaign"] == "autumn"  # extra keys are kept, not rendered
    assert latest.json()["template"]["version"] == 2
    assert latest.json()["body"] == "v2 Korn"

    await drain_all(drain)
    await redis.flushdb()
    assert (await client.get(f"{N}/{body['id']}")).json() == body
    assert (await client.get(f"{N}/{latest.json()['id']}")).json() == latest.json()
    async with engine.connect() as conn:
        query = text("SELECT template_version FROM notifications WHERE template_id IS NOT NULL ORDER BY 1")
        refs = (await conn.execute(query)).scalars()
    assert list(refs) == [1, 2]


async def test_unknown_template_and_version_are_422(client: httpx.AsyncClient) -> None:
    template = (await client.post(f"{T}/", json={"name": "t", "type": "sms", "body": "plain"})).json()

    unknown = await client.post(f"{N}/", json={"to": "me", "template_id": "0190b8a4-6c1e-7000-8000-000000000000"})
    no_version = await client.post(f"{N}/", json={"to": "me", "template_id": template["id"], "template_version": 9})
    version_only = await client.post(f"{N}/", json={"to": "me", "template_version": 1})

    assert unknown.status_code == no_version.status_code == version_only.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "template_id"]
    assert "version 9" in no_version.json()["detail"][0]["msg"]


async def test_unknown_template_ids_are_remembered_not_asked_of_postgres_each_time(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    unknown = "0190b8a4-6c1e-7000-8000-000000000000"
    checkouts = 0

    def count(*_: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    event.listen(app.state.engine.sync_engine, "checkout", count)
    try:
        answers = [await client.post(f"{N}/", json={"to": "me", "template_id": unknown}) for _ in range(20)]
    finally:
        event.remove(app.state.engine.sync_engine, "checkout", count)

    assert {answer.status_code for answer in answers} == {422}
    assert len({answer.content for answer in answers}) == 1
    assert checkouts == 1  # the first send asked Postgres; the others were answered by the remembered miss


async def test_a_version_added_after_a_miss_is_served_at_once(client: httpx.AsyncClient) -> None:
    template = (await client.post(f"{T}/", json={"name": "t", "type": "sms", "body": "one"})).json()
    send = {"to": "me", "template_id": template["id"], "template_version": 2}

    before = await client.post(f"{N}/", json=send)
    assert (await client.put(f"{T}/{template['id']}", json={"body": "two"})).status_code == 200
    after = await client.post(f"{N}/", json=send)

    assert before.status_code == 422
    assert after.status_code == 201, after.text
    assert after.json()["body"] == "two"


async def test_versions_beyond_postgres_integer_are_422(client: httpx.AsyncClient) -> None:
    template = (await client.post(f"{T}/", json={"name": "t", "type": "sms", "body": "plain"})).json()

    sent = await client.post(f"{N}/", json={"to": "me", "template_id": template["id"], "template_version": 2**31})
    fetched = await client.get(f"{T}/{template['id']}", params={"version": 2**31})

    assert sent.status_code == fetched.status_code == 422


async def test_rendering_cannot_blow_up_past_the_limit(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    template = (await client.post(f"{T}/", json={"name": "echo", "type": "sms", "body": "((v))" * 100})).json()

    small = await client.post(f"{N}/", json={"to": "me", "template_id": template["id"], "personalization": {"v": "ab"}})
    huge = await client.post(
        f"{N}/multiple",
        json=[{"to": "me", "template_id": template["id"], "personalization": {"v": "x" * 4000}}],
    )

    assert small.status_code == 201
    assert huge.status_code == 422
    assert huge.json()["detail"][0]["loc"] == ["body", 0, "personalization"]
    assert huge.json()["detail"][0]["type"] == "rendered_too_long"
    assert await queued(redis, settings) == 1


async def test_template_routes_report_errors_like_the_notification_routes(client: httpx.AsyncClient) -> None:
    unparsable = await client.post(
        f"{T}/", content=b'{"name": "x", "body": ' + b"9" * 1000, headers={"content-type": "application/json"}
    )
    nul = await client.post(f"{T}/", json={"name": "a\u0000b", "type": "sms", "body": "x"})

    assert unparsable.status_code == nul.status_code == 422
    assert "input" not in unparsable.json()["detail"][0]  # the body is not echoed back
    assert nul.json()["detail"][0]["msg"] == "must not contain NUL (\\u0000) characters"


async def test_template_text_with_control_characters_is_422(client: httpx.AsyncClient) -> None:
    created = await client.post(f"{T}/", json={"name": "fine", "subject": "Hi", "body": "Hi ((name)),\n\tsee you.\r\n"})
    bells = await client.post(f"{T}/", json={"name": "bells", "type": "sms", "body": "\u0007" * 10_000})
    escape = await client.put(f"{T}/{created.json()['id']}", json={"subject": "\u001b[31mred", "body": "x"})
    c1 = await client.post(f"{T}/", json={"name": "c1", "type": "sms", "body": "next\u0085line"})

    assert created.status_code == 201
    assert bells.status_code == escape.status_code == c1.status_code == 422
    assert bells.json()["detail"][0]["loc"] == ["body", "body"]
    assert escape.json()["detail"][0]["loc"] == ["body", "subject"]
    assert bells.json()["detail"][0]["msg"].startswith("must not contain control characters")
    assert (await client.get(f"{T}/{created.json()['id']}")).json()["version"] == 1


async def test_a_template_has_a_type_email_with_a_subject_or_sms_without(client: httpx.AsyncClient) -> None:
    email = await client.post(f"{T}/", json={"name": "e", "subject": "Hi", "body": "x"})
    sms = await client.post(f"{T}/", json={"name": "s", "type": "sms", "body": "x"})
    email_without_subject = await client.post(f"{T}/", json={"name": "e2", "type": "email", "body": "x"})
    default_without_subject = await client.post(f"{T}/", json={"name": "e3", "body": "x"})
    sms_with_subject = await client.post(f"{T}/", json={"name": "s2", "type": "sms", "subject": "Hi", "body": "x"})
    letter = await client.post(f"{T}/", json={"name": "l", "type": "letter", "subject": "Hi", "body": "x"})

    assert email.status_code == sms.status_code == 201
    assert (email.json()["type"], sms.json()["type"]) == ("email", "sms")
    for refused in (email_without_subject, default_without_subject, sms_with_subject, letter):
        assert refused.status_code == 422
    assert "needs a subject" in email_without_subject.json()["detail"][0]["msg"]
    assert "has no subject" in sms_with_subject.json()["detail"][0]["msg"]
    # a new version keeps the template's type: a subject if and only if it is an email template
    sms_id, email_id = sms.json()["id"], email.json()["id"]
    assert (await client.put(f"{T}/{sms_id}", json={"subject": "Hi", "body": "y"})).status_code == 422
    assert (await client.put(f"{T}/{email_id}", json={"body": "y"})).status_code == 422
    assert (await client.put(f"{T}/{sms_id}", json={"body": "y"})).json()["type"] == "sms"
    assert (await client.get(f"{T}/{email_id}")).json()["version"] == 1
    assert sorted(t["type"] for t in (await client.get(f"{T}/")).json()) == ["email", "sms"]
