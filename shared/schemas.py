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

    @model_validator(mode="after")
    def _within_limits(self) -> "NotificationIn":
        """Apply the configurable size limits (settings are read once and cached)."""
        settings = get_settings()
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


class NotificationOut(BaseModel):
    """A notification as the service returns it, from Redis or from Postgres alike."""

    id: UUID
    to: str
    personalization: dict[str, str]
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None
