"""A request's documents: templates checked, ids given, each notification rendered and encoded once.

`templates_for` resolves the native items' templates and checks their personalization (one 422 naming every
problem); `accept` gives the ids of the request's stem and encodes each document within MAX_RENDERED_LENGTH and
MAX_QUEUED_BYTES. Both native and v2 sends come through here (`api.ingest`).
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from fastapi.exceptions import RequestValidationError

from api.errors import BadRequestError
from api.template_cache import TemplateCache, TemplateVersion
from shared.codec import TemplateRef, encode_notification
from shared.ids import ids_of
from shared.schemas import NotificationIn
from shared.settings import Settings
from shared.templating import RenderedTooLongError, render_within


async def templates_for(
    items: list[NotificationIn], service_id: UUID, templates: TemplateCache, *, listed: bool
) -> list[TemplateVersion | None]:
    """Resolve each item's template and check its personalization; raise one 422 naming every problem.

    `listed` says the body was a list, so that error locations name the item (`["body", 3, ...]`).
    """
    resolved: list[TemplateVersion | None] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where: tuple[Any, ...] = ("body", index) if listed else ("body",)
        if item.template_id is None:
            resolved.append(None)
            continue
        template = await templates.resolve(service_id, item.template_id, item.template_version)
        resolved.append(template)
        if template is None:
            what = f"version {item.template_version} of " if item.template_version else ""
            errors.append(
                {
                    "type": "unknown_template",
                    "loc": (*where, "template_id"),
                    "msg": f"your service has no {what}template {item.template_id}",
                    "input": str(item.template_id),
                }
            )
            continue
        values = item.personalization or {}
        missing = [name for name in template.placeholders if name not in values]
        if missing:
            errors.append(
                {
                    "type": "missing_personalization",
                    "loc": (*where, "personalization"),
                    "msg": "missing personalization for template placeholders: " + ", ".join(missing),
                    "input": values,
                    "ctx": {"missing": missing},
                }
            )
    if errors:
        raise RequestValidationError(errors)
    return resolved


class Recipient(Protocol):
    """What `accept` needs of a notification: a native `NotificationIn` or a v2 `NotifySend`."""

    @property
    def to(self) -> str:
        """The recipient."""
        ...

    @property
    def personalization(self) -> dict[str, str] | None:
        """The template's values."""
        ...


def accept(
    items: Sequence[Recipient],
    service: str,
    templates: list[TemplateVersion | None],
    settings: Settings,
    stem: str,
    *,
    listed: bool,
    notification_type: str | None = None,
    reference: str | None = None,
) -> tuple[list[str], list[bytes]]:
    """Give each notification its id (of the request's `stem`) and timestamps, render its template, serialize it once.

    Returns the ids and the documents. `notification_type` and `reference` (Notify v2's) go into every document of
    the request.

    Raises:
        RequestValidationError: a rendered subject and body together would be longer than MAX_RENDERED_LENGTH (422);
            measured before rendering (`shared.templating.render_within`).
        BadRequestError: the documents add up to more than MAX_QUEUED_BYTES (413); checked as they are
            made, so an oversized request stops there.
    """
    max_rendered, max_queued = settings.max_rendered_length, settings.max_queued_bytes
    now = datetime.now(UTC).isoformat()  # formatted once for the whole request
    ids = ids_of(stem, len(items))
    docs: list[bytes] = []
    queued = 0
    for notification_id, item, template in zip(ids, items, templates, strict=True):
        values = item.personalization or {}
        reference_to: TemplateRef | None = None
        subject = body = None
        if template is not None:
            try:
                subject, body = render_within((template.subject, template.body), values, max_rendered)
            except RenderedTooLongError as exc:
                where = ("body", len(docs)) if listed else ("body",)
                raise RequestValidationError(
                    [
                        {
                            "type": "rendered_too_long",
                            "loc": (*where, "personalisation" if notification_type else "personalization"),
                            "msg": f"renders a template of {exc.length} characters, longer than "
                            f"MAX_RENDERED_LENGTH={max_rendered}",
                        }
                    ]
                ) from None
            reference_to = {"id": str(template.template_id), "version": template.version}
        docs.append(
            encode_notification(
                notification_id,
                service,
                item.to,
                values,
                now,
                template=reference_to,
                subject=subject,
                body=body,
                notification_type=notification_type,
                reference=reference,
            )
        )
        queued += len(docs[-1])
        if queued > max_queued:
            # Characters are bounded per item, bytes per request: escaping and templates multiply the body's size
            raise BadRequestError(
                f"the request's notifications, rendered and encoded, would queue more than "
                f"MAX_QUEUED_BYTES={max_queued} bytes",
                status_code=413,
            )
    return ids, docs
