"""Template versions for the write path, cached in-process.

A version never changes once written, so versions are kept (up to a bound) without expiry; which version is the
latest can change, so that answer is kept for TEMPLATE_CACHE_SECONDS only.
"""

import time
from collections import OrderedDict
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from shared import queries
from shared.templating import placeholders


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One immutable template version and the placeholders it needs."""

    template_id: UUID
    service_id: UUID
    #: `email` or `sms` (the template's, the same for all its versions).
    type: str
    version: int
    subject: str | None
    body: str
    placeholders: tuple[str, ...]


class TemplateCache:
    """Resolves (service, template, version or latest) to a `TemplateVersion`, asking Postgres on a miss."""

    def __init__(self, engine: AsyncEngine, latest_ttl_seconds: float, max_versions: int = 4096) -> None:
        self.engine = engine
        self.latest_ttl = latest_ttl_seconds
        self.max_versions = max_versions
        self._versions: OrderedDict[tuple[UUID, int], TemplateVersion] = OrderedDict()
        self._latest: dict[UUID, tuple[int, float]] = {}

    async def resolve(self, service_id: UUID, template_id: UUID, version: int | None) -> TemplateVersion | None:
        """Return the template version, or None if the service has no such template or version."""
        if version is None:
            latest = self._latest.get(template_id)
            if latest is not None and latest[1] >= time.monotonic():
                version = latest[0]
        if version is not None and (found := self._versions.get((template_id, version))) is not None:
            return found if found.service_id == service_id else None
        async with self.engine.connect() as conn:
            row = await queries.get_template_version(conn, service_id, template_id, version)
        if row is None:
            return None
        resolved = TemplateVersion(
            row.id,
            row.service_id,
            row.type,
            row.version,
            row.subject,
            row.body,
            tuple(placeholders(row.subject, row.body)),
        )
        self._versions[(template_id, row.version)] = resolved
        while len(self._versions) > self.max_versions:
            self._versions.popitem(last=False)
        if version is None and self.latest_ttl > 0:
            self._latest[template_id] = (row.version, time.monotonic() + self.latest_ttl)
        return resolved
