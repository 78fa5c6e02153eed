"""GOV.UK Notify v2's objects, made from this service's own: what the v2 routes answer.

A v2 notification is stored as any other (`shared.codec`'s document, with `type`, `reference` and `status`); these
functions shape it as Notify's POST answer and Notify's notification object, and a template version as Notify's
template and preview. Fields this service has no counterpart for are answered as Notify answers them when they do
not apply: no sender (`from_email`, `from_number`: this service does not deliver), no letters (`line_1`...,
`postage`), no cost yet (`is_cost_data_ready: false`). The template checks a send needs (the template exists, suits
the channel, gets every placeholder) answer with Notify's messages.
"""

import html
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Row

from api.errors import NotifyError, NotifyValidationError
from api.govuk.validation import NotifySend
from api.template_cache import TemplateVersion
from shared.templating import RenderedTooLongError, placeholders, render_within

#: Notify's datetime format (`2026-12-01T10:00:00.000000Z`).
NOTIFY_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_LETTER_FIELDS = dict.fromkeys(("line_1", "line_2", "line_3", "line_4", "line_5", "line_6", "postcode"))


def notify_time(value: str | datetime | None) -> str | None:
    """Return a datetime (or an ISO-8601 string) in Notify's format, in UTC."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime(NOTIFY_TIME)


def template_uri(root: str, template_id: UUID | str, version: int) -> str:
    """Return the v2 URI of a template version (`root` is the API's base URL with its trailing slash)."""
    return f"{root}v2/template/{template_id}/version/{version}"


def missing_personalisation(names: list[str] | tuple[str, ...], values: dict[str, Any]) -> NotifyError | None:
    """Return Notify's 400 for the placeholders `values` lacks (None when there is a value for each)."""
    missing = [name for name in names if name not in values]
    return NotifyError("Missing personalisation: " + ", ".join(missing)) if missing else None


def check_template(template: TemplateVersion | None, send: NotifySend) -> TemplateVersion:
    """Return the template a send names, if it may be sent with it.

    Raises:
        NotifyError: no such template of the service; one of the other channel; a placeholder without a value.
    """
    if template is None:
        raise NotifyError("Template not found")
    if template.type != send.type:
        raise NotifyError(f"{template.type} template is not suitable for {send.type} notification")
    missing = missing_personalisation(template.placeholders, send.personalisation)
    if missing is not None:
        raise missing
    return template


def _template_ref(doc: dict[str, Any], root: str) -> dict[str, Any]:
    template = doc["template"]
    return {
        "id": template["id"],
        "version": template["version"],
        "uri": template_uri(root, template["id"], template["version"]),
    }


def created(doc: dict[str, Any], root: str) -> dict[str, Any]:
    """Return Notify's answer to `POST /v2/notifications/email|sms` for a notification just queued."""
    answer: dict[str, Any] = {
        "id": doc["id"],
        "reference": doc.get("reference"),
        "uri": f"{root}v2/notifications/{doc['id']}",
        "template": _template_ref(doc, root),
        "scheduled_for": None,
    }
    if doc["type"] == "email":
        answer["content"] = {
            "from_email": None,
            "body": doc["body"],
            "subject": doc["subject"] or "",
            "one_click_unsubscribe_url": None,
        }
        answer["sanitised_content"] = None  # sanitise_content_for is refused: nothing was sanitised
    else:
        answer["content"] = {"body": doc["body"], "from_number": None}
    return answer


def created_json(doc: bytes, root: str) -> bytes:
    """Notify's answer to a send (`created`), as JSON, from the notification's own JSON document."""
    return orjson.dumps(created(orjson.loads(doc), root))


def notification(doc: dict[str, Any], root: str) -> dict[str, Any]:
    """Return Notify's notification object (`GET /v2/notifications[/{id}]`) of a stored or queued document."""
    notification_type = doc["type"]
    return {
        "id": doc["id"],
        "reference": doc.get("reference"),
        "email_address": doc["to"] if notification_type == "email" else None,
        "phone_number": doc["to"] if notification_type == "sms" else None,
        **_LETTER_FIELDS,
        "type": notification_type,
        "status": doc.get("status", "created"),
        "template": _template_ref(doc, root),
        "body": doc["body"],
        "subject": doc["subject"],
        "created_at": notify_time(doc["created_at"]),
        "created_by_name": None,
        "sent_at": notify_time(doc["sent_at"]),
        "completed_at": None,
        "scheduled_for": None,
        "postage": None,
        "one_click_unsubscribe_url": None,
        "is_cost_data_ready": False,
        "cost_in_pounds": None,
        "cost_details": {},
        "job_id": doc.get("job_id"),  # GC Notify's: the bulk job it was sent in, else null
    }


def template(row: Row[Any]) -> dict[str, Any]:
    """Return Notify's template object of a template version (a row of `queries.TEMPLATE_VERSION_SELECT`)."""
    return {
        "id": str(row.id),
        "type": row.type,
        "created_at": notify_time(row.template_created_at),
        "updated_at": notify_time(row.created_at) if row.version > 1 else None,
        "created_by": None,
        "version": row.version,
        "body": row.body,
        "subject": row.subject,
        "name": row.name,
        "personalisation": {name: {"required": True} for name in placeholders(row.subject, row.body)},
        "postage": None,
        "letter_contact_block": None,
    }


def preview(row: Row[Any], values: dict[str, str], max_rendered: int) -> dict[str, Any]:
    """Return Notify's template preview: the version rendered with `values` (every placeholder has one).

    `html` is the body's paragraphs, escaped, for an email template (Notify's full email layout is not built here).
    The subject and body are bounded as a send's are: measured first, a 400 past `max_rendered` characters, so the
    answer (the escaped `html` at most six times the body) stays small.

    Raises:
        NotifyValidationError: the rendering would be longer than `max_rendered` (400; nothing was rendered).
    """
    try:
        subject, body = render_within((row.subject, row.body), values, max_rendered)
    except RenderedTooLongError as exc:
        raise NotifyValidationError(
            [
                f"personalisation renders a template of {exc.length} characters, longer than "
                f"MAX_RENDERED_LENGTH={max_rendered}"
            ]
        ) from None
    body = body or ""
    paragraphs = [part.strip() for part in body.replace("\r\n", "\n").split("\n\n") if part.strip()]
    markup = "".join(f"<p>{html.escape(part).replace(chr(10), '<br>')}</p>" for part in paragraphs)
    return {
        "id": str(row.id),
        "type": row.type,
        "version": row.version,
        "body": body,
        "html": markup if row.type == "email" else None,
        "subject": subject,
        "postage": None,
    }
