"""Template versions for the write path, cached in-process.

A version never changes once written, so versions are kept (up to a bound) without expiry; which version is the
latest, and that a template (or version) is missing, is kept for TEMPLATE_CACHE_SECONDS (also bounded): random ids
cost Postgres one query per id and process, not one per request. With Postgres unreachable, the latest version last
seen of a template serves past TEMPLATE_CACHE_SECONDS; only a template never seen fails (a 503).
"""

import logging
import math
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from api.cache import TtlCache
from shared import failures, queries
from shared.templating import placeholders

logger = logging.getLogger(__name__)


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

    def __init__(
        self, engine: AsyncEngine, latest_ttl_seconds: float, max_versions: int = 4096, max_misses: int = 10_000
    ) -> None:
        self.engine = engine
        #: (template, version) → the version: a version never changes, so it is kept until evicted
        self._versions = TtlCache[tuple[UUID, int], TemplateVersion](math.inf, max_versions)
        #: template → its latest version (kept past expiry: served during a Postgres outage)
        self._latest = TtlCache[UUID, int](latest_ttl_seconds, max_versions)
        #: (service, template, version or None) → True: no such template (or version) in the service, lately
        self._misses = TtlCache[tuple[UUID, UUID, int | None], bool](latest_ttl_seconds, max_misses)

    async def resolve(self, service_id: UUID, template_id: UUID, version: int | None) -> TemplateVersion | None:
        """Return the template version, or None if the service has no such template or version."""
        wanted = self._latest.get(template_id)[1] if version is None else version
        if wanted is not None and (found := self._versions.get((template_id, wanted))[1]) is not None:
            return found if found.service_id == service_id else None
        if self._misses.get((service_id, template_id, version))[0]:
            return None
        try:
            async with self.engine.connect() as conn:
                row = await queries.get_template_version(conn, service_id, template_id, version)
        except Exception as exc:
            latest = self._latest.stale(template_id) if version is None else None
            stale = None if latest is None else self._versions.get((template_id, latest))[1]
            if stale is None or stale.service_id != service_id or not failures.database_unreachable(exc):
                raise
            logger.warning("Postgres unreachable (%r): template %s served at its last known version", exc, template_id)
            return stale
        if row is None:
            self._misses.put((service_id, template_id, version), True)
            return None
        return self.remember(row, latest=version is None)

    def remember(self, row: Row[Any], latest: bool = True) -> TemplateVersion:
        """Keep a template version read from Postgres (by `resolve`, or by the routes that write one)."""
        resolved = TemplateVersion(
            row.id,
            row.service_id,
            row.type,
            row.version,
            row.subject,
            row.body,
            tuple(placeholders(row.subject, row.body)),
        )
        self._versions.put((row.id, row.version), resolved)
        if latest:
            self._latest.put(row.id, row.version)
        return resolved
