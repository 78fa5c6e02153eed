"""Pydantic shapes of what clients send (`NotificationIn`) and get back (`NotificationOut`).

The API validates a body against these once, at the edge, so that everything it accepts can be stored: NUL and
other control characters (but tab, line feed and carriage return) are refused with a 422, as Postgres `text`
cannot hold NUL. The limits (MAX_TO_LENGTH and the like) are settings; `limited_notification` builds the model
for them once, as plain constraints pydantic checks in Rust (a Python validator per item would cost more).
"""

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    create_model,
    model_validator,
)

from shared.settings import Settings

#: Largest value of a Postgres `integer` (template versions).
INT4_MAX = 2_147_483_647

BRIEF_EXAMPLE: dict[str, Any] = {"to": "example@gmail.com", "personalization": {"band": "Incubus"}}
BRIEF_MULTIPLE_EXAMPLE: list[dict[str, Any]] = [
    {"to": "example@gmail.com", "personalization": {"band": "Korn"}},
    {"to": "another-example@gmail.com", "personalization": {"band": "Soundgarden"}},
]


#: Postgres `text` cannot hold NUL characters: refuse them at the edge (a 422), never at the drain.
NO_NUL = r"^[^\x00]*$"
#: Control characters that have no business in a message: C0 but tab, line feed and carriage return; DEL; C1.
#: JSON writes each as six bytes (`\u0001`): a template full of them multiplied a request's size by six in Redis,
#: in the response and in the worker.
_CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
#: Text of a message (personalization, template subject and body): no such control characters (NUL included).
MESSAGE_TEXT = rf"^[^{_CONTROL}]*$"
#: A recipient: message text with at least one character that is not white space.
RECIPIENT = rf"^[^{_CONTROL}]*[^{_CONTROL}\s][^{_CONTROL}]*$"
#: Clear messages for the patterns above, which pydantic would report as the bare regex.
_NO_CONTROL = "control characters (U+0000-U+001F but tab, line feed and carriage return; U+007F-U+009F)"
PATTERN_MESSAGES = {
    NO_NUL: "must not contain NUL (\\u0000) characters",
    MESSAGE_TEXT: f"must not contain {_NO_CONTROL}",
    RECIPIENT: f"must contain a non-blank recipient and no {_NO_CONTROL}",
}

StoredText = Annotated[str, StringConstraints(pattern=NO_NUL)]
MessageText = Annotated[str, StringConstraints(pattern=MESSAGE_TEXT)]


def _default(setting: str) -> int:
    """The default of a limit setting, so the documented model cannot drift from the settings."""
    value: int = Settings.model_fields[setting].default
    return value


class NotificationIn(BaseModel):
    """One notification as a producer sends it (documented with the default limits)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [BRIEF_EXAMPLE]})

    to: Annotated[str, StringConstraints(min_length=1, max_length=_default("max_to_length"), pattern=RECIPIENT)] = (
        Field(description="Recipient: any non-blank string (address, phone, name).")
    )
    personalization: (
        Annotated[
            dict[
                Annotated[
                    str,
                    StringConstraints(
                        min_length=1, max_length=_default("max_personalization_key_length"), pattern=MESSAGE_TEXT
                    ),
                ],
                Annotated[
                    str,
                    StringConstraints(max_length=_default("max_personalization_value_length"), pattern=MESSAGE_TEXT),
                ],
            ],
            Field(max_length=_default("max_personalization_keys")),
        ]
        | None
    ) = Field(default=None, description="Template values: string keys to string values.")
    template_id: UUID | None = Field(default=None, description="Render this template of your service.")
    template_version: int | None = Field(
        default=None, ge=1, le=INT4_MAX, description="Version of the template (else latest)."
    )

    @model_validator(mode="after")
    def _version_needs_template(self) -> "NotificationIn":
        if self.template_version is not None and self.template_id is None:
            raise ValueError("`template_version` needs a `template_id`")
        return self


@lru_cache
def notification_model(max_to: int, max_keys: int, max_key_length: int, max_value_length: int) -> type[NotificationIn]:
    """Return `NotificationIn` with these limits (the settings' MAX_*), all checked by pydantic's Rust core."""
    key = Annotated[str, StringConstraints(min_length=1, max_length=max_key_length, pattern=MESSAGE_TEXT)]
    value = Annotated[str, StringConstraints(max_length=max_value_length, pattern=MESSAGE_TEXT)]
    model: type[NotificationIn] = create_model(
        "NotificationIn",
        __base__=NotificationIn,
        to=(
            Annotated[str, StringConstraints(min_length=1, max_length=max_to, pattern=RECIPIENT)],
            Field(description="Recipient: any non-blank string (address, phone, name)."),
        ),
        personalization=(Annotated[dict[key, value], Field(max_length=max_keys)] | None, None),
    )
    return model


def limited_notification(settings: Settings) -> type[NotificationIn]:
    """Return the notification model with the limits of `settings`."""
    return notification_model(
        settings.max_to_length,
        settings.max_personalization_keys,
        settings.max_personalization_key_length,
        settings.max_personalization_value_length,
    )


NotificationListIn = TypeAdapter(list[NotificationIn])


def notification_list(settings: Settings) -> TypeAdapter[list[NotificationIn]]:
    """Return the validator of a batch of 1..MAX_BATCH_ITEMS notifications with the limits of `settings`."""
    return _notification_list(
        settings.max_batch_items,
        settings.max_to_length,
        settings.max_personalization_keys,
        settings.max_personalization_key_length,
        settings.max_personalization_value_length,
    )


@lru_cache
def _notification_list(max_items: int, *limits: int) -> TypeAdapter[list[NotificationIn]]:
    item = notification_model(*limits)
    return TypeAdapter(Annotated[list[item], Field(min_length=1, max_length=max_items)])  # type: ignore[valid-type,arg-type]


class TemplateRefOut(BaseModel):
    """The template version a notification was rendered from."""

    id: UUID
    version: int


class NotificationOut(BaseModel):
    """A notification as the service returns it, from Redis or from Postgres alike."""

    id: UUID
    service_id: UUID
    to: str
    personalization: dict[str, str]
    template: TemplateRefOut | None = None
    subject: str | None = Field(None, description="Rendered template subject, if the template has one.")
    body: str | None = Field(None, description="Rendered template body, for notifications sent with a template.")
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None


Name = Annotated[StoredText, Field(min_length=1, max_length=200)]
TemplateText = Annotated[MessageText, Field(min_length=1, max_length=100_000)]


class ServiceIn(BaseModel):
    """A service (tenant) to create."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "band-newsletter"}]})

    name: Name


#: The largest rate limit a service can be given (notifications per minute).
MAX_RATE_LIMIT = 1_000_000_000


class ServicePatch(BaseModel):
    """A change to a service: its own rate limit."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"rate_limit_per_minute": 6000}]})

    rate_limit_per_minute: int | None = Field(
        ge=0,
        le=MAX_RATE_LIMIT,
        description="Notifications per minute (a multiple of 100 counts 100); 0: unlimited; null: the "
        "RATE_LIMIT_PER_MINUTE default.",
    )


class ServiceOut(BaseModel):
    """A service."""

    id: UUID
    name: str
    created_at: datetime
    rate_limit_per_minute: int | None = Field(
        None, description="The service's own limit in notifications per minute (0: unlimited); null: the default."
    )
    effective_rate_limit_per_minute: int = Field(
        0, description="The limit that applies now: its own, else RATE_LIMIT_PER_MINUTE (0: unlimited)."
    )


class ApiKeyIn(BaseModel):
    """An API key to create."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "production"}]})

    name: Name


class ApiKeyOut(BaseModel):
    """An API key as listed: never its secret, only its first characters."""

    id: UUID
    service_id: UUID
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    """A new API key, with its secret: shown this once, stored only as a hash."""

    key: str


#: What a template is for: `email` (with a subject) or `sms` (without).
TemplateType = Literal["email", "sms"]


def subject_error(template_type: str, subject: str | None) -> str | None:
    """Return why `subject` does not suit a template of `template_type` (None if it does)."""
    if template_type == "email" and subject is None:
        return "an email template needs a subject"
    if template_type == "sms" and subject is not None:
        return "an sms template has no subject"
    return None


class TemplateIn(BaseModel):
    """A template to create (its version 1); placeholders are written `((name))`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "gig", "subject": "((band)) live", "body": "Hi! ((band)) plays."}]},
    )

    name: Name
    type: TemplateType = Field("email", description="`email` needs a subject, `sms` has none.")
    subject: TemplateText | None = None
    body: TemplateText

    @model_validator(mode="after")
    def _subject_suits_type(self) -> "TemplateIn":
        error = subject_error(self.type, self.subject)
        if error is not None:
            raise ValueError(error)
        return self


class TemplateUpdate(BaseModel):
    """The text of a template's next version (a subject if and only if it is an email template)."""

    model_config = ConfigDict(extra="forbid")

    subject: TemplateText | None = None
    body: TemplateText


class TemplateOut(BaseModel):
    """One version of a template."""

    id: UUID
    service_id: UUID
    name: str
    type: TemplateType
    version: int
    subject: str | None
    body: str
    placeholders: list[str]
    created_at: datetime = Field(description="When this version was created.")
    template_created_at: datetime = Field(description="When version 1 was created.")
