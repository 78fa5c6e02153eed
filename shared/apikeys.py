"""API key format and hashing.

A key is `nk_` followed by 43 URL-safe random characters (256 bits). Only its SHA-256 is stored: a key that
random cannot be guessed from its hash, so a slow password hash would only slow the hot path. The first
characters (`prefix`) are kept in clear so that people can tell their keys apart in listings.
"""

import hashlib
import re
import secrets

KEY_PREFIX = "nk_"
SHOWN_PREFIX_LENGTH = 10
_KEY_SHAPE = re.compile(KEY_PREFIX + r"[A-Za-z0-9_-]{43}")


def new_key() -> str:
    """Return a new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(token: str) -> bool:
    """Return True if `token` has the shape of a key this service issues (checked before any lookup)."""
    return _KEY_SHAPE.fullmatch(token) is not None


def hash_key(key: str) -> str:
    """Return the stored form of `key` (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


def shown_prefix(key: str) -> str:
    """Return the part of `key` that listings show."""
    return key[:SHOWN_PREFIX_LENGTH]
