"""The in-process cache: at most `max_entries` outcomes, each remembered for `ttl_seconds` (0: nothing is kept).

Every per-process memory of the API (keys, GOV.UK Notify secrets and tokens, rate limits, templates, the readiness
probe) is a `TtlCache`, so that each is bounded and forgets on time in the same way.
"""

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Key → (outcome, expiry), the oldest put first evicted past `max_entries`.

    `put(..., expires_at=...)` ties an outcome to another it was derived from, so it never outlives it.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V | None, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many outcomes are remembered (expired ones included, until evicted)."""
        return len(self._entries)

    def get(self, key: K) -> tuple[bool, V | None]:
        """Return (known, outcome); known is False when the key must be looked up."""
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def stale(self, key: K) -> V | None:
        """Return the outcome last put for `key`, expired or not (None if none is remembered)."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def expiry(self, key: K) -> float | None:
        """Return when (monotonic) the remembered outcome for `key` expires, or None if none is remembered."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, outcome: V | None, expires_at: float | None = None) -> None:
        """Remember an outcome for the TTL (or until `expires_at`, if sooner), evicting the oldest past the bound."""
        if self.ttl <= 0:
            return
        until = time.monotonic() + self.ttl
        self._entries[key] = (outcome, until if expires_at is None else min(until, expires_at))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        """Drop what is remembered for `key`, if anything."""
        self._entries.pop(key, None)
