"""What both baselines share: the typed request model, the API-key check, settings from the environment.

The baselines are the obvious designs written the obvious way (typed FastAPI bodies, a response model), with the
same validation rules and the same API-key check as the service, so the benchmark compares designs, not features.
"""

import os
from datetime import UTC, datetime
from typing import Any

import uuid_utils
from fastapi import Header, HTTPException

from shared.schemas import NotificationIn

SERVICE_ID = os.environ.get("BENCH_SERVICE_ID", "00000000-0000-7000-8000-000000000001")
API_KEY = os.environ.get("BENCH_API_KEY", "")


async def check_key(authorization: str = Header("")) -> str:
    """Accept only the benchmark's key (an in-process check, as the service's cache hit is)."""
    if authorization != f"Bearer {API_KEY}":
        raise HTTPException(401, "invalid API key")
    return SERVICE_ID


def new_notification(item: NotificationIn) -> dict[str, Any]:
    """The notification object the service would answer with."""
    now = datetime.now(UTC)
    return {
        "id": str(uuid_utils.uuid7()),
        "service_id": SERVICE_ID,
        "to": item.to,
        "personalization": item.personalization or {},
        "template": None,
        "subject": None,
        "body": None,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
    }
