"""The official GOV.UK Notify Python client (`notifications-python-client`), unchanged, against a real HTTP server."""

import time
import uuid

import httpx
import jwt
import notifications_python_client.base
import pytest
from notifications_python_client import NotificationsAPIClient
from notifications_python_client.errors import HTTPError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import keys, tenancy
from shared.secretbox import SecretBox
from tests.helpers import TEST_SECRET_KEY, Tenant, drain_all, notify_key
from worker.drain import Drain

EMAIL_TEMPLATE = {"name": "welcome", "subject": "Hi ((name))", "body": "Hello ((name))."}
SMS_TEMPLATE = {"name": "code", "type": "sms", "body": "Your code is ((code))"}


@pytest.fixture
async def templates(client: httpx.AsyncClient) -> tuple[str, str]:
    """An email and an sms template of the tenant's service."""
    email = await client.post("/templates/v1/", json=EMAIL_TEMPLATE)
    sms = await client.post("/templates/v1/", json=SMS_TEMPLATE)
    return email.json()["id"], sms.json()["id"]


@pytest.fixture
def notify(live_api: str, tenant: Tenant) -> NotificationsAPIClient:
    """The official client, pointed at the live API with a key of the tenant's service."""
    return NotificationsAPIClient(notify_key(tenant), base_url=live_api)


async def test_send_get_and_list_with_the_official_client(
    notify: NotificationsAPIClient, templates: tuple[str, str], redis: Redis, drain: Drain, live_api: str
) -> None:
    email_template, sms_template = templates

    email = notify.send_email_notification("ann@example.com", email_template, {"name": "Ann"}, reference="r-1")
    sms = notify.send_sms_notification("07700 900123", sms_template, {"code": "4321"})

    assert email["content"]["subject"] == "Hi Ann"
    assert email["uri"] == f"{live_api}/v2/notifications/{email['id']}"
    assert sms["content"]["body"] == "Your code is 4321"
    assert await redis.xlen(keys.STREAM) == 2  # queued, not stored yet: read from Redis
    fetched = notify.get_notification_by_id(email["id"])
    assert (fetched["email_address"], fetched["status"], fetched["reference"]) == ("ann@example.com", "created", "r-1")
    assert notify.get_notification_by_id(sms["id"])["phone_number"] == "07700 900123"

    await drain_all(drain)
    listed = list(notify.get_all_notifications_iterator())
    assert [n["id"] for n in listed] == [sms["id"], email["id"]]
    assert [n["id"] for n in notify.get_all_notifications(template_type="email")["notifications"]] == [email["id"]]
    assert notify.get_all_notifications(reference="r-1")["notifications"][0]["id"] == email["id"]


async def test_the_iterator_follows_next_links_across_pages(
    notify: NotificationsAPIClient, templates: tuple[str, str], client: httpx.AsyncClient, drain: Drain
) -> None:
    _, sms_template = templates
    sent = await client.post("/notifications/v1/", json={"to": "native: not listed"})
    assert sent.status_code == 201
    ids = [notify.send_sms_notification("07700900123", sms_template, {"code": str(n)})["id"] for n in range(260)]
    await drain_all(drain)

    first_page = notify.get_all_notifications()
    listed = [n["id"] for n in notify.get_all_notifications_iterator()]

    assert len(first_page["notifications"]) == 250
    assert listed == ids[::-1]  # all 260, newest first, over two pages


async def test_templates_with_the_official_client(notify: NotificationsAPIClient, templates: tuple[str, str]) -> None:
    email_template, sms_template = templates

    assert notify.get_template(email_template)["subject"] == "Hi ((name))"
    assert notify.get_template_version(sms_template, 1)["type"] == "sms"
    assert [t["id"] for t in notify.get_all_templates("sms")["templates"]] == [sms_template]
    assert len(notify.get_all_templates()["templates"]) == 2
    assert notify.post_template_preview(email_template, {"name": "Bo"})["body"] == "Hello Bo."


@pytest.mark.parametrize(
    ("send", "status", "message"),
    [
        (lambda n, e, s: n.send_email_notification("ann@example.com", e, {}), 400, "Missing personalisation: name"),
        (lambda n, e, s: n.send_email_notification("ann@example.com", s, {"code": "1"}), 400,
         "sms template is not suitable for email notification"),
        (lambda n, e, s: n.send_sms_notification("07700900123", e, {"name": "x"}), 400,
         "email template is not suitable for sms notification"),
        (lambda n, e, s: n.send_email_notification("ann@", e, {"name": "x"}), 400,
         "email_address Not a valid email address"),
        (lambda n, e, s: n.send_sms_notification("not a number", s, {"code": "1"}), 400,
         "phone_number Must not contain letters or symbols"),
        (lambda n, e, s: n.post_template_preview(e, {}), 400, "Missing personalisation: name"),
        (lambda n, e, s: n.send_letter_notification(e, {"address_line_1": "x"}), 400,
         "Letters are not supported by this service: send emails or text messages"),
    ],
)  # fmt: skip
async def test_each_refusal_reaches_the_client_as_its_http_error(
    notify: NotificationsAPIClient, templates: tuple[str, str], send: object, status: int, message: str
) -> None:
    email_template, sms_template = templates

    with pytest.raises(HTTPError) as raised:
        send(notify, email_template, sms_template)  # type: ignore[operator]

    assert raised.value.status_code == status
    assert raised.value.message[0]["message"] == message  # type: ignore[index]


async def test_a_bad_key_is_the_clients_403(live_api: str, tenant: Tenant, templates: tuple[str, str]) -> None:
    wrong_secret = NotificationsAPIClient(f"test-{tenant.service_id}-{uuid.uuid4()}", base_url=live_api)

    with pytest.raises(HTTPError) as raised:
        wrong_secret.get_all_templates()

    assert raised.value.status_code == 403
    assert raised.value.message == [{"error": "AuthError", "message": "Invalid token: API key not found"}]


async def test_a_revoked_key_is_the_clients_403(
    live_api: str, tenant: Tenant, engine: AsyncEngine, redis: Redis, templates: tuple[str, str]
) -> None:
    created = await tenancy.create_api_key(engine, redis, SecretBox(TEST_SECRET_KEY), tenant.service_id, "old")
    await tenancy.revoke_api_key(engine, redis, tenant.service_id, created.record.id)
    revoked = NotificationsAPIClient(created.secret, base_url=live_api)

    with pytest.raises(HTTPError) as raised:
        revoked.send_email_notification("ann@example.com", templates[0], {"name": "Ann"})

    assert raised.value.status_code == 403
    assert raised.value.message == [{"error": "AuthError", "message": "Invalid token: API key revoked"}]


async def test_a_client_whose_clock_is_a_minute_slow_gets_the_clock_error(
    notify: NotificationsAPIClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow_clock_token(secret: str, service_id: str) -> str:
        return jwt.encode({"iss": service_id, "iat": int(time.time()) - 60}, secret, algorithm="HS256")

    monkeypatch.setattr(notifications_python_client.base, "create_jwt_token", slow_clock_token)

    with pytest.raises(HTTPError) as raised:
        notify.get_all_templates()

    assert raised.value.status_code == 403
    message = "Error: Your system clock must be accurate to within 30 seconds"
    assert raised.value.message == [{"error": "AuthError", "message": message}]
