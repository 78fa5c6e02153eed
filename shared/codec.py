"""The one JSON shape of a notification, shared by the POST response, the Redis cache, the stream and GET.

`encode_notification` serializes each notification once, and rebuilds the same bytes from a stored row (the
personalization in the order Postgres's `jsonb` keeps its keys), so an Idempotency-Key's replay rebuilt from
Postgres answers byte for byte what the first request answered. The drain decodes a request's array with
`decode_entry`.
"""

from datetime import datetime
from typing import Any, NotRequired, TypedDict
from uuid import UUID

import orjson


class TemplateRef(TypedDict):
    """Which template version a notification was rendered from."""

    id: str
    version: int


class NotificationDoc(TypedDict):
    """A decoded notification as it travels through Redis."""

    id: str
    service_id: str
    to: str
    personalization: dict[str, str]
    template: TemplateRef | None
    subject: str | None
    body: str | None
    created_at: str
    updated_at: str
    sent_at: str | None
    # only in notifications of the GOV.UK Notify v2 routes (the native routes' documents are as they were)
    type: NotRequired[str]
    reference: NotRequired[str | None]
    status: NotRequired[str]
    # only in notifications of a bulk job, as read from Postgres (`api.jobs` stores them with their job's id)
    job_id: NotRequired[str]


def jsonb_order(values: dict[str, Any]) -> dict[str, Any]:
    """Return `values` with its keys in the order `jsonb` keeps them: by length in bytes, then bytewise."""
    if len(values) < 2:
        return values
    return dict(sorted(values.items(), key=lambda item: (len(encoded := item[0].encode()), encoded)))


def encode_notification(
    notification_id: str | UUID,
    service_id: str | UUID,
    to: str,
    personalization: dict[str, str],
    created_at: datetime | str,
    *,
    template: TemplateRef | None = None,
    subject: str | None = None,
    body: str | None = None,
    updated_at: datetime | str | None = None,
    sent_at: datetime | None = None,
    notification_type: str | None = None,
    reference: str | None = None,
    status: str = "created",
    job_id: UUID | str | None = None,
) -> bytes:
    """Serialize one notification to its JSON document (timestamps as datetimes or ISO-8601 strings).

    A notification of the Notify v2 routes has a `notification_type` (`email`, `sms`): its document also carries
    `type`, `reference` and `status`; the native routes' documents do not, so their answers stay as they were.
    A notification of a bulk job (`api.jobs`) also carries its `job_id`; other documents have no such field.
    """
    doc: dict[str, Any] = {
        "id": str(notification_id),
        "service_id": str(service_id),
        "to": to,
        "personalization": jsonb_order(personalization),
        "template": template,
        "subject": subject,
        "body": body,
        "created_at": created_at,
        "updated_at": updated_at or created_at,
        "sent_at": sent_at,
    }
    if notification_type is not None:
        doc["type"], doc["reference"], doc["status"] = notification_type, reference, status
    if job_id is not None:
        doc["job_id"] = str(job_id)
    return orjson.dumps(doc)


def join_array(documents: list[bytes]) -> bytes:
    """Join already serialized JSON documents into one JSON array without re-serializing them."""
    return b"[" + b",".join(documents) + b"]"


def decode_entry(payload: bytes) -> list[NotificationDoc]:
    """Decode one request's JSON array of notifications (a cache value, or an inline stream entry).

    Raises:
        ValueError: the payload is not a JSON array of objects.
    """
    decoded: Any = orjson.loads(payload)
    if not isinstance(decoded, list) or not all(isinstance(item, dict) for item in decoded):
        raise ValueError("stream entry is not a JSON array of notification objects")
    return decoded
