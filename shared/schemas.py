"""Pydantic shapes of what clients send (`NotificationIn`) and get back (`NotificationOut`).

The API validates the raw request body against these once, at the edge, so that everything it accepts can be
stored by the drain: Postgres `text` cannot hold NUL characters, so they are refused here with a 422.
"""

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from shared.settings import get_settings

#: Largest value of a Postgres `integer` (template versions).
INT4_MAX = 2_147_483_647

BRIEF_EXAMPLE: dict[str, Any] = {"to": "example@gmail.com", "personalization": {"band": "Incubus"}}
BRIEF_MULTIPLE_EXAMPLE: list[dict[str, Any]] = [
    {"to": "example@gmail.com", "personalization": {"band": "Korn"}},
    {"to": "another-example@gmail.com", "personalization": {"band": "Soundgarden"}},
]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


StoredText = Annotated[str, AfterValidator(_no_nul)]


class NotificationIn(BaseModel):
    """One notification as a producer sends it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [BRIEF_EXAMPLE]})

    to: StoredText = Field(min_length=1, description="Recipient: any non-empty string (address, phone, name).")
    personalization: dict[StoredText, StoredText] | None = Field(
        default=None, description="Template values: string keys to string values."
    )
    template_id: UUID | None = Field(default=None, description="Render this template of your service.")
    template_version: int | None = Field(
        default=None, ge=1, le=INT4_MAX, description="Version of the template (else latest)."
    )

    @model_validator(mode="after")
    def _within_limits(self) -> "NotificationIn":
        """Apply the configurable size limits (settings are read once and cached)."""
        settings = get_settings()
        if self.template_version is not None and self.template_id is None:
            raise ValueError("`template_version` needs a `template_id`")
        if not self.to.strip():
            raise ValueError("`to` must contain a non-blank recipient")
        if len(self.to) > settings.max_to_length:
            raise ValueError(f"`to` must be at most {settings.max_to_length} characters")
        values = self.personalization or {}
        if len(values) > settings.max_personalization_keys:
            raise ValueError(f"personalization may have at most {settings.max_personalization_keys} keys")
        for key, value in values.items():
            if not key or len(key) > settings.max_personalization_key_length:
                raise ValueError(
                    f"personalization keys must be 1 to {settings.max_personalization_key_length} characters"
                )
            if len(value) > settings.max_personalization_value_length:
                raise ValueError(
                    f"personalization value of {key!r} is longer than "
                    f"{settings.max_personalization_value_length} characters"
                )
        return self


NotificationListIn = TypeAdapter(list[NotificationIn])


@lru_cache
def notification_list(max_items: int) -> TypeAdapter[list[NotificationIn]]:
    """Return the validator of a batch of 1..`max_items` notifications."""
    return TypeAdapter(Annotated[list[NotificationIn], Field(min_length=1, max_length=max_items)])


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
TemplateText = Annotated[StoredText, Field(min_length=1, max_length=100_000)]


class ServiceIn(BaseModel):
    """A service (tenant) to create."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "band-newsletter"}]})

    name: Name


class ServiceOut(BaseModel):
    """A service."""

    id: UUID
    name: str
    created_at: datetime


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


class TemplateIn(BaseModel):
    """A template to create (its version 1); placeholders are written `((name))`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "gig", "subject": "((band)) live", "body": "Hi! ((band)) plays."}]},
    )

    name: Name
    subject: TemplateText | None = None
    body: TemplateText


class TemplateUpdate(BaseModel):
    """The text of a template's next version."""

    model_config = ConfigDict(extra="forbid")

    subject: TemplateText | None = None
    body: TemplateText


class TemplateOut(BaseModel):
    """One version of a template."""

    id: UUID
    service_id: UUID
    name: str
    version: int
    subject: str | None
    body: str
    placeholders: list[str]
    created_at: datetime = Field(description="When this version was created.")
    template_created_at: datetime = Field(description="When version 1 was created.")
