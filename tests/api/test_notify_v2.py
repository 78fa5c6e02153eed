"""The GOV.UK Notify v2 routes over HTTP: Notify's bodies and messages, the same write path, Redis and Postgres."""

from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from shared import ratelimits
from shared.settings import Settings
from tests.helpers import Tenant, drain_all, notify_headers, notify_key, queued
from worker.drain import Drain

EMAIL_TEMPLATE = {"name": "welcome", "subject": "Hi ((name))", "body": "Hello ((name)), your code is ((code))."}
SMS_TEMPLATE = {"name": "code", "type": "sms", "body": "Your code is ((code))"}


def _errors(response: httpx.Response) -> list[dict[str, str]]:
    body = response.json()
    assert body["status_code"] == response.status_code
    errors: list[dict[str, str]] = body["errors"]
    return errors


@pytest.fixture
async def templates(client: httpx.AsyncClient, tenant: Tenant) -> tuple[str, str]:
    """An email and an sms template of `tenant`'s service (made with its native key)."""
    native = {"Authorization": f"Bearer {tenant.key}"}
    email = await client.post("/templates/v1/", json=EMAIL_TEMPLATE, headers=native)
    sms = await client.post("/templates/v1/", json=SMS_TEMPLATE, headers=native)
    return email.json()["id"], sms.json()["id"]


async def test_send_email_answers_notifys_body_and_is_readable_at_once(
    notify: httpx.AsyncClient, templates: tuple[str, str], redis: Redis, settings: Settings
) -> None:
    email_template, _ = templates
    sent = await notify.post(
        "/v2/notifications/email",
        json={
            "email_address": "ann@example.com",
            "template_id": email_template,
            "personalisation": {"name": "Ann", "code": 1234},
            "reference": "order-1",
        },
    )

    assert sent.status_code == 201, sent.text
    body = sent.json()
    notification_id = body["id"]
    assert body == {
        "id": notification_id,
        "reference": "order-1",
        "uri": f"http://localhost:8000/v2/notifications/{notification_id}",
        "template": {
            "id": email_template,
            "version": 1,
            "uri": f"http://localhost:8000/v2/template/{email_template}/version/1",
        },
        "scheduled_for": None,
        "content": {
            "from_email": None,
            "body": "Hello Ann, your code is 1234.",
            "subject": "Hi Ann",
            "one_click_unsubscribe_url": None,
        },
        "sanitised_content": None,
    }
    assert await queued(redis, settings) == 1  # the same group commit as the native POST
    fetched = await notify.get(f"/v2/notifications/{notification_id}")
    assert fetched.status_code == 200
    got = fetched.json()
    assert (got["type"], got["status"], got["email_address"], got["phone_number"]) == (
        "email",
        "created",
        "ann@example.com",
        None,
    )
    assert (got["body"], got["subject"], got["reference"]) == ("Hello Ann, your code is 1234.", "Hi Ann", "order-1")
    assert got["created_at"].endswith("Z")


async def test_send_sms_then_drain_then_get_from_postgres_and_list(
    notify: httpx.AsyncClient, templates: tuple[str, str], redis: Redis, engine: AsyncEngine, drain: Drain
) -> None:
    _, sms_template = templates
    sent = [
        await notify.post(
            "/v2/notifications/sms",
            json={"phone_number": "+447700900123", "template_id": sms_template, "personalisation": {"code": str(n)}},
        )
        for n in range(3)
    ]
    assert [response.status_code for response in sent] == [201] * 3
    assert sent[0].json()["content"] == {"body": "Your code is 0", "from_number": None}
    queued = [(await notify.get(f"/v2/notifications/{r.json()['id']}")).json() for r in sent]

    await drain_all(drain)
    await redis.flushdb()  # from Postgres now

    stored = [(await notify.get(f"/v2/notifications/{r.json()['id']}")).json() for r in sent]
    assert stored == queued
    async with engine.connect() as conn:
        row = (await conn.execute(text('SELECT type, status, "to" FROM notifications LIMIT 1'))).one()
    assert tuple(row) == ("sms", "created", "+447700900123")
    listed = (await notify.get("/v2/notifications")).json()
    assert [n["id"] for n in listed["notifications"]] == [r.json()["id"] for r in reversed(sent)]  # newest first
    assert listed["links"]["current"] == "http://localhost:8000/v2/notifications"
    assert listed["links"]["next"].endswith(f"older_than={sent[0].json()['id']}")
    last = (await notify.get("/v2/notifications", params={"older_than": sent[0].json()["id"]})).json()
    assert last["notifications"] == []
    assert "next" not in last["links"]
    only_email = await notify.get("/v2/notifications", params={"template_type": "email"})
    assert only_email.json()["notifications"] == []


async def test_list_filters_by_reference_status_and_type_and_shows_no_native_notification(
    notify: httpx.AsyncClient, templates: tuple[str, str], tenant: Tenant, drain: Drain
) -> None:
    email_template, sms_template = templates
    values = {"name": "A", "code": "1"}
    for reference in ("a", "b", "a"):
        await notify.post(
            "/v2/notifications/email",
            json={
                "email_address": "a@example.com",
                "template_id": email_template,
                "personalisation": values,
                "reference": reference,
            },
        )
    await notify.post("/v2/notifications/sms", json={"phone_number": "07700900123", "template_id": sms_template,
                                                      "personalisation": values})  # fmt: skip
    native = await notify.post(
        "/notifications/v1/", json={"to": "x"}, headers={"Authorization": f"Bearer {tenant.key}"}
    )
    await drain_all(drain)

    def listing(**params: Any) -> Any:
        return notify.get("/v2/notifications", params=params)

    assert len((await listing()).json()["notifications"]) == 4
    assert [n["reference"] for n in (await listing(reference="a")).json()["notifications"]] == ["a", "a"]
    assert len((await listing(template_type="sms")).json()["notifications"]) == 1
    assert len((await listing(status="created", template_type="email")).json()["notifications"]) == 3
    assert (await listing(status="delivered")).json()["notifications"] == []
    refused = await listing(status="elephant", colour="red")
    assert refused.status_code == 400
    messages = [error["message"] for error in _errors(refused)]
    assert messages[0] == "Additional properties are not allowed (colour was unexpected)"
    assert messages[1].startswith("status elephant is not one of [cancelled, created")
    assert (await notify.get(f"/v2/notifications/{native.json()['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("route", "payload", "messages"),
    [
        ("email", {"email_address": "ann@example.com"}, ["template_id is a required property"]),
        ("email", {"email_address": "not an address", "template_id": "x"},
         ["email_address Not a valid email address", "template_id is not a valid UUID"]),
        ("email", {"template_id": "{t}", "cc": 1}, ["Additional properties are not allowed (cc was unexpected)",
                                                     "email_address is a required property"]),
        ("email", {"email_address": "a@example.com", "template_id": "{t}", "personalisation": 5},
         ["personalisation 5 is not of type object"]),
        ("email", {"email_address": 7, "template_id": "{t}"}, ["email_address 7 is not of type string"]),
        ("sms", {"phone_number": "0770090012a", "template_id": "{t}"},
         ["phone_number Must not contain letters or symbols"]),
        ("sms", {"phone_number": "07700", "template_id": "{t}"}, ["phone_number Not enough digits"]),
        ("sms", {"phone_number": "07700900123456789", "template_id": "{t}"}, ["phone_number Too many digits"]),
        ("sms", {"phone_number": "020 7946 0000", "template_id": "{t}"}, ["phone_number Not a UK mobile number"]),
        ("sms", {"phone_number": "+999 1234 5678", "template_id": "{t}"}, ["phone_number Not a valid country prefix"]),
    ],
)  # fmt: skip
async def test_validation_errors_are_notifys_400s(
    notify: httpx.AsyncClient, templates: tuple[str, str], redis: Redis, settings: Settings, route: str,
    payload: dict[str, Any], messages: list[str],
) -> None:  # fmt: skip
    template_id = templates[0] if route == "email" else templates[1]
    payload = {name: template_id if value == "{t}" else value for name, value in payload.items()}

    response = await notify.post(f"/v2/notifications/{route}", json=payload)

    assert response.status_code == 400
    assert _errors(response) == [{"error": "ValidationError", "message": message} for message in messages]
    assert await queued(redis, settings) == 0


@pytest.mark.parametrize(
    ("route", "payload", "message"),
    [
        ("email", {"template_id": "{sms}"}, "sms template is not suitable for email notification"),
        ("sms", {"template_id": "{email}"}, "email template is not suitable for sms notification"),
        ("email", {"template_id": "{email}", "personalisation": {"code": "1"}}, "Missing personalisation: name"),
        ("email", {"template_id": "{email}", "personalisation": {}}, "Missing personalisation: name, code"),
        ("email", {"template_id": "0190b8a4-6c1e-7000-8000-000000000000"}, "Template not found"),
        ("email", {"template_id": "{email}", "scheduled_for": "2030-01-01 10:00"},
         "scheduled_for is not supported: this service does not schedule notifications (leave it out to send now)"),
        ("email", {"template_id": "{email}", "email_reply_to_id": "0190b8a4-6c1e-7000-8000-000000000000"},
         "email_reply_to_id 0190b8a4-6c1e-7000-8000-000000000000 does not exist in database for service id {service}"),
        ("sms", {"template_id": "{sms}", "sms_sender_id": "0190b8a4-6c1e-7000-8000-000000000000"},
         "sms_sender_id 0190b8a4-6c1e-7000-8000-000000000000 does not exist in database for service id {service}"),
        ("email", {"template_id": "{email}", "one_click_unsubscribe_url": "https://example.com/u"},
         "one_click_unsubscribe_url is not supported by this service"),
    ],
)  # fmt: skip
async def test_what_cannot_be_sent_is_notifys_bad_request(
    notify: httpx.AsyncClient, templates: tuple[str, str], tenant: Tenant, redis: Redis, settings: Settings, route: str,
    payload: dict[str, Any], message: str,
) -> None:  # fmt: skip
    names = {"{email}": templates[0], "{sms}": templates[1]}
    recipient = {"email_address": "a@example.com"} if route == "email" else {"phone_number": "07700900123"}
    values = {"personalisation": {"name": "A", "code": "1"}}
    body = (
        values
        | recipient
        | {name: names.get(value, value) if isinstance(value, str) else value for name, value in payload.items()}
    )

    response = await notify.post(f"/v2/notifications/{route}", json=body)

    assert response.status_code == 400
    expected = message.replace("{service}", str(tenant.service_id))
    assert _errors(response) == [{"error": "BadRequestError", "message": expected}]
    assert await queued(redis, settings) == 0


async def test_bad_json_letters_and_bad_ids_answer_in_notifys_shape(notify: httpx.AsyncClient) -> None:
    bad_json = await notify.post("/v2/notifications/email", content=b'{"email_address": ')
    letter = await notify.post("/v2/notifications/letter", json={"template_id": "x", "personalisation": {}})
    bad_id = await notify.get("/v2/notifications/not-a-uuid")
    unknown = await notify.get("/v2/notifications/0190b8a4-6c1e-7000-8000-000000000000")
    no_template = await notify.get("/v2/template/0190b8a4-6c1e-7000-8000-000000000000")

    assert _errors(bad_json) == [{"error": "BadRequestError", "message": "Invalid JSON supplied in POST data"}]
    assert letter.status_code == 400
    assert "Letters are not supported" in _errors(letter)[0]["message"]
    assert _errors(bad_id) == [{"error": "ValidationError", "message": "notification_id is not a valid UUID"}]
    assert unknown.status_code == no_template.status_code == 404
    assert _errors(unknown) == [{"error": "NoResultFound", "message": "No result found"}]


async def test_an_idempotency_key_applies_to_v2_sends(
    notify: httpx.AsyncClient, templates: tuple[str, str], redis: Redis, settings: Settings
) -> None:
    body = {
        "email_address": "a@example.com",
        "template_id": templates[0],
        "personalisation": {"name": "A", "code": "1"},
    }
    first = await notify.post("/v2/notifications/email", json=body, headers={"Idempotency-Key": "order-9"})
    again = await notify.post("/v2/notifications/email", json=body, headers={"Idempotency-Key": "order-9"})
    other = await notify.post(
        "/v2/notifications/email", json={**body, "reference": "x"}, headers={"Idempotency-Key": "order-9"}
    )

    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert await queued(redis, settings) == 1
    assert other.status_code == 422
    assert _errors(other)[0]["error"] == "IdempotencyKeyMismatchError"
    assert (
        orjson.loads(first.content)["id"] == (await notify.get(f"/v2/notifications/{first.json()['id']}")).json()["id"]
    )


async def test_templates_their_versions_and_previews(
    notify: httpx.AsyncClient, templates: tuple[str, str], tenant: Tenant
) -> None:
    email_template, sms_template = templates
    await notify.put(
        f"/templates/v1/{email_template}",
        json={"subject": "Hello ((name))", "body": "v2 ((name))"},
        headers={"Authorization": f"Bearer {tenant.key}"},
    )

    latest = (await notify.get(f"/v2/template/{email_template}")).json()
    first = (await notify.get(f"/v2/template/{email_template}/version/1")).json()
    every = (await notify.get("/v2/templates")).json()["templates"]
    sms_only = (await notify.get("/v2/templates", params={"type": "sms"})).json()["templates"]
    preview = await notify.post(f"/v2/template/{email_template}/preview", json={"personalisation": {"name": "<b>"}})
    missing = await notify.post(f"/v2/template/{sms_template}/preview", json={"personalisation": {}})

    assert (latest["version"], latest["type"], latest["body"], latest["subject"]) == (2, "email", "v2 ((name))",
                                                                                       "Hello ((name))")  # fmt: skip
    assert latest["personalisation"] == {"name": {"required": True}}
    assert latest["updated_at"].endswith("Z")
    assert (first["version"], first["updated_at"], first["body"]) == (1, None, EMAIL_TEMPLATE["body"])
    assert sorted(t["type"] for t in every) == ["email", "sms"]
    assert [t["id"] for t in sms_only] == [sms_template]
    assert preview.status_code == 200
    assert preview.json() == {"id": email_template, "type": "email", "version": 2, "body": "v2 <b>",
                              "html": "<p>v2 &lt;b&gt;</p>", "subject": "Hello <b>", "postage": None}  # fmt: skip
    assert _errors(missing) == [{"error": "BadRequestError", "message": "Missing personalisation: code"}]
    assert (await notify.get(f"/v2/template/{email_template}/version/3")).status_code == 404
    assert (await notify.get("/v2/templates", params={"type": "fax"})).status_code == 400


async def test_native_routes_keep_their_answers(client: httpx.AsyncClient) -> None:
    created = await client.post("/notifications/v1/", json={"to": "me"})

    assert set(created.json()) == {
        "id", "service_id", "to", "personalization", "template", "subject", "body", "created_at", "updated_at",
        "sent_at",
    }  # fmt: skip


async def test_a_rate_limited_v2_send_gets_notifys_429(
    notify: httpx.AsyncClient, templates: tuple[str, str], tenant: Tenant, engine: AsyncEngine, redis: Redis
) -> None:
    await ratelimits.set_rate_limit(engine, redis, tenant.service_id, 1)
    email_template, _ = templates
    body = {
        "email_address": "ann@example.com",
        "template_id": email_template,
        "personalisation": {"name": "A", "code": 1},
    }
    assert (await notify.post("/v2/notifications/email", json=body)).status_code == 201

    refused = await notify.post("/v2/notifications/email", json=body)

    assert refused.status_code == 429
    assert _errors(refused) == [
        {"error": "RateLimitError", "message": "Exceeded rate limit for key type LIVE of 1 requests per 60 seconds"}
    ]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "1"


@pytest.mark.parametrize("reference", ["a\x00b", "x" * 1001])
async def test_a_listing_reference_with_a_nul_or_too_long_is_notifys_400(
    notify: httpx.AsyncClient, reference: str
) -> None:
    answer = await notify.get("/v2/notifications", params={"reference": reference})
    assert answer.status_code == 400
    assert _errors(answer)[0]["error"] == "ValidationError"
    assert "reference must be at most" in _errors(answer)[0]["message"]


async def test_personalisation_numbers_are_rendered_as_they_were_sent(
    notify: httpx.AsyncClient, templates: tuple[str, str], redis: Redis, drain: Drain
) -> None:
    email_template, _ = templates
    numbers = [b"12345678901234567890123", b"1.50", b"-0", b"1e2", b"-9223372036854775809", b"7"]
    body = b'{"email_address": "a@example.com", "template_id": "%s", "personalisation": {"name": "A", "code": %s}}'
    sent = [
        await notify.post("/v2/notifications/email", content=body % (email_template.encode(), number))
        for number in numbers
    ]
    preview = await notify.post(
        f"/v2/template/{email_template}/preview", content=b'{"personalisation": {"name": 0.10, "code": -0}}'
    )
    too_long = await notify.post(
        "/v2/notifications/email",
        content=body % (email_template.encode(), b"1." + b"0" * 5000),
    )

    assert [response.status_code for response in sent] == [201] * len(numbers)
    expected = [f"Hello A, your code is {number.decode()}." for number in numbers]
    assert [response.json()["content"]["body"] for response in sent] == expected
    await drain_all(drain)
    await redis.flushdb()  # read back from Postgres: rendered again from the stored personalisation
    stored = [(await notify.get(f"/v2/notifications/{response.json()['id']}")).json()["body"] for response in sent]
    assert stored == expected
    assert preview.json()["body"] == "Hello 0.10, your code is -0."
    assert too_long.status_code == 400
    assert _errors(too_long) == [
        {
            "error": "ValidationError",
            "message": "personalisation code must be at most 4096 characters, without control characters",
        }
    ]


async def test_a_host_header_that_is_not_a_plain_host_never_reaches_an_answer(
    notify: httpx.AsyncClient, templates: tuple[str, str]
) -> None:
    email_template, _ = templates
    send = {
        "email_address": "a@example.com",
        "template_id": email_template,
        "personalisation": {"name": "A", "code": 1},
    }
    plain = await notify.post("/v2/notifications/email", json=send, headers={"Host": "API.Example.com:8443"})
    answers = [
        await notify.post("/v2/notifications/email", json=send, headers={"Host": host})
        for host in ("evil.example/phish?", "a@evil.example", '"><script>', "evil.example\t", "")
    ]
    listing = await notify.get("/v2/notifications", headers={"Host": "evil.example/x"})
    one = await notify.get(f"/v2/notifications/{plain.json()['id']}", headers={"Host": "evil.example/x"})

    assert plain.json()["uri"] == f"http://api.example.com:8443/v2/notifications/{plain.json()['id']}"
    for answer in [*answers, listing, one]:
        assert answer.status_code == 400
        assert _errors(answer) == [
            {
                "error": "BadRequestError",
                "message": "The Host header must be a plain host[:port] (or set PUBLIC_BASE_URL)",
            }
        ]


async def test_public_base_url_builds_every_v2_uri_and_link_whatever_the_host(
    settings: Settings, redis: Redis, engine: AsyncEngine, tenant: Tenant, templates: tuple[str, str], drain: Drain
) -> None:
    email_template, _ = templates
    configured = Settings(**{**settings.model_dump(), "public_base_url": "https://notify.example.com/api"})
    assert configured.public_base_url == "https://notify.example.com/api/"
    app = create_app(configured)
    send = {
        "email_address": "a@example.com",
        "template_id": email_template,
        "personalisation": {"name": "A", "code": 1},
    }
    root = "https://notify.example.com/api/"
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost:8000") as http,
    ):
        headers = {**notify_headers(notify_key(tenant)), "Host": "evil.example/x", "Idempotency-Key": "k1"}
        sent = await http.post("/v2/notifications/email", json=send, headers=headers)
        replayed = await http.post("/v2/notifications/email", json=send, headers={**headers, "Host": "other.example"})
        await drain_all(drain)
        listed = (await http.get("/v2/notifications", headers=headers)).json()

    notification_id = sent.json()["id"]
    assert sent.status_code == 201
    assert sent.json()["uri"] == f"{root}v2/notifications/{notification_id}"
    assert sent.json()["template"]["uri"] == f"{root}v2/template/{email_template}/version/1"
    assert replayed.content == sent.content
    assert listed["notifications"][0]["template"]["uri"] == f"{root}v2/template/{email_template}/version/1"
    assert listed["links"] == {
        "current": f"{root}v2/notifications",
        "next": f"{root}v2/notifications?older_than={notification_id}",
    }
    with pytest.raises(ValueError, match="PUBLIC_BASE_URL"):
        Settings(public_base_url="https://notify.example.com/?q#f", _env_file=None)  # type: ignore[call-arg]


async def test_a_bad_notification_id_is_checked_after_the_token(
    anonymous: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    assert settings.anonymous_service is None
    without = await anonymous.get("/v2/notifications/not-a-uuid")
    wrong = await anonymous.get("/v2/notifications/not-a-uuid", headers={"Authorization": "Bearer not-a-jwt"})
    valid = await anonymous.get("/v2/notifications/not-a-uuid", headers=notify_headers(notify_key(tenant)))

    assert without.status_code == 401
    assert _errors(without)[0]["error"] == "AuthError"
    assert wrong.status_code == 403
    assert valid.status_code == 400
    assert _errors(valid) == [{"error": "ValidationError", "message": "notification_id is not a valid UUID"}]
