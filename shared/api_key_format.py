"""The API key string: how a key is made, recognised, hashed for storage, and shown in listings.

A key is also a GOV.UK Notify key: `{key_name}-{service_id}-{secret}` (the name made safe: lowercase `a-z0-9_`; the
service's id; a random UUID4, the secret). Notify's clients take the service id and the secret from its end
(`key[-73:-37]`, `key[-36:]`) to sign JWTs; sent whole as `Authorization: Bearer <key>`, it works on the native
routes. The bearer check stores only the key's SHA-256. Keys of the older shape (`nk_` and 43 URL-safe characters)
keep working as bearer keys.
"""

import hashlib
import re
import uuid
from uuid import UUID

LEGACY_KEY_PREFIX = "nk_"
LEGACY_KEY_LENGTH = len(LEGACY_KEY_PREFIX) + 43
LEGACY_SHOWN_PREFIX_LENGTH = 10
#: Longest safe key name kept in a key (a longer name is cut), so that a key's length is bounded.
MAX_KEY_NAME_LENGTH = 64
#: Characters of the secret that listings show (16 of its 122 random bits).
SHOWN_SECRET_CHARACTERS = 4
SECRET_LENGTH = 36
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_KEY_SHAPE = re.compile(
    rf"[a-z0-9_]{{1,{MAX_KEY_NAME_LENGTH}}}-{_UUID}-{_UUID4}|{LEGACY_KEY_PREFIX}[A-Za-z0-9_-]{{43}}"
)
_UNSAFE = re.compile(r"[^a-z0-9_]+")
KEY_SHAPES = (
    "keys are `{key_name}-{service_id}-{secret}` (lowercase a-z, 0-9 and `_`, then two UUIDs), "
    "or, issued before, `nk_` and 43 URL-safe characters"
)


def safe_key_name(name: str) -> str:
    """Return `name` as it appears in a key: lowercase, every run of other characters than a-z, 0-9, `_` one `_`."""
    safe = _UNSAFE.sub("_", name.lower()).strip("_")[:MAX_KEY_NAME_LENGTH].rstrip("_")
    return safe or "key"


def new_key(name: str, service_id: UUID) -> tuple[str, str]:
    """Return a new random API key of a service, and its secret (the part that signs Notify's JWTs)."""
    secret = str(uuid.uuid4())  # os.urandom underneath
    return f"{safe_key_name(name)}-{service_id}-{secret}", secret


def looks_like_key(token: str) -> bool:
    """Return True if `token` has the shape of a key this service issues or issued (checked before any lookup)."""
    return _KEY_SHAPE.fullmatch(token) is not None


def is_legacy_key(key: str) -> bool:
    """Return True if `key` has the older `nk_` shape (it cannot sign GOV.UK Notify's JWTs)."""
    return len(key) == LEGACY_KEY_LENGTH and key.startswith(LEGACY_KEY_PREFIX)  # a new key is longer


def hash_key(key: str) -> str:
    """Return the stored form of `key` (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


def shown_prefix(key: str) -> str:
    """Return the part of `key` that listings show: up to the first characters of its secret."""
    if is_legacy_key(key):
        return key[:LEGACY_SHOWN_PREFIX_LENGTH]
    return key[: len(key) - SECRET_LENGTH + SHOWN_SECRET_CHARACTERS]
