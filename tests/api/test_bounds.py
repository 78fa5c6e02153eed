"""Issue 19: what one request can make the API produce is bounded (renderings, previews, error lists)."""

import tracemalloc

import httpx
from redis.asyncio import Redis

from api.errors import MAX_ERRORS_LISTED
from shared.settings import Settings
from tests.helpers import Tenant, notify_headers, notify_key, queued

#: `((a))` x 20,000 (the longest template body) with `a` = 4,096 `&`: 82 million characters from a 4 KB request.
BLOWUP_BODY = "((a))" * 20_000
BLOWUP_VALUES = {"a": "&" * 4096}
TEMPLATE_ID = "0190b8a4-6c1e-7000-8000-000000000000"


async def _template(client: httpx.AsyncClient, body: str, template_type: str = "email") -> str:
    subject = {"subject": "s"} if template_type == "email" else {}
    made = await client.post("/templates/v1/", json={"name": "blowup", "type": template_type, "body": body, **subject})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def test_a_preview_past_max_rendered_length_is_a_small_notify_400(
    client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    # 2,000 placeholders: 8 million characters, 40 MB of escaped html before the bound (the was 547 MB)
    template_id = await _template(client, "((a))" * 2000)
    headers = notify_headers(notify_key(tenant))

    fine = await client.post(
        f"/v2/template/{template_id}/preview", json={"personalisation": {"a": "&"}}, headers=headers
    )
    over = await client.post(
        f"/v2/template/{template_id}/preview", json={"personalisation": BLOWUP_VALUES}, headers=headers
    )

    assert fine.status_code == 200
    assert fine.json()["body"] == "&" * 2000
    assert over.status_code == 400
    assert len(over.content) < 1000
    assert over.json()["errors"] == [
        {
            "error": "ValidationError",
            "message": f"personalisation renders a template of {2000 * 4096 + 1} characters, longer than "
            f"MAX_RENDERED_LENGTH={settings.max_rendered_length}",
        }
    ]


async def test_a_send_past_max_rendered_length_is_refused_without_rendering_it(
    client: httpx.AsyncClient, tenant: Tenant, redis: Redis, settings: Settings
) -> None:
    template_id = await _template(client, BLOWUP_BODY)
    headers = notify_headers(notify_key(tenant))
    v2_send = {"email_address": "a@example.com", "template_id": template_id, "personalisation": BLOWUP_VALUES}
    native_send = {"to": "a@example.com", "template_id": template_id, "personalization": BLOWUP_VALUES}
    await client.post("/v2/notifications/email", json=v2_send, headers=headers)  # caches warmed, imports done

    tracemalloc.start()
    try:
        v2 = await client.post("/v2/notifications/email", json=v2_send, headers=headers)
        native = await client.post("/notifications/v1/multiple", json=[native_send])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert v2.status_code == 400
    assert v2.json()["errors"][0]["message"].startswith(
        f"personalisation renders a template of {20_000 * 4096 + 1} characters"
    )
    assert native.status_code == 422
    assert native.json()["detail"][0]["loc"] == ["body", 0, "personalization"]
    assert peak < 20 * 1024 * 1024  # the rendering alone would be 82 MB
    assert await queued(redis, settings) == 0


async def test_error_answers_list_at_most_100_problems_and_count_the_rest(
    client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    native = await client.post("/notifications/v1/multiple", json=[{"to": ""}] * 1000)  # 1,000 empty recipients
    personalisation = {f"k{n}": [n] for n in range(1000)}  # 1,000 values that are not strings, and too many keys
    v2 = await client.post(
        "/v2/notifications/email",
        json={"email_address": "a@example.com", "template_id": TEMPLATE_ID, "personalisation": personalisation},
        headers=notify_headers(notify_key(tenant)),
    )

    assert native.status_code == 422
    detail = native.json()["detail"]
    assert len(detail) == MAX_ERRORS_LISTED + 1
    assert detail[0]["loc"] == ["body", 0, "to"]
    assert detail[-1] == {
        "type": "too_many_errors",
        "loc": [],
        "msg": f"and {1000 - MAX_ERRORS_LISTED} more errors, not listed (an answer lists the first 100)",
    }
    assert v2.status_code == 400
    errors = v2.json()["errors"]
    assert len(errors) == MAX_ERRORS_LISTED + 1
    assert errors[0]["message"] == f"personalisation has more than {settings.max_personalization_keys} keys"
    assert errors[-1] == {
        "error": "ValidationError",
        "message": f"and {1001 - MAX_ERRORS_LISTED} more errors, not listed (an answer lists the first 100)",
    }
