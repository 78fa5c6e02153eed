"""API keys' secrets at rest: sealed with the server's SECRET_KEY, never stored in plain text.

GOV.UK Notify clients sign requests with their key's secret, so the server must read it back: `api_keys` and the
Redis key registry hold it sealed with Fernet (authenticated AES-CBC, random IV). SECRET_KEY is one or more Fernet
keys separated by commas: the first seals, every one opens (MultiFernet), so a new key can go in front and the old
one stay until `python -m shared.cli keys reseal` has sealed every stored secret again.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

__all__ = [
    "NO_SECRET_KEY",
    "InvalidToken",
    "SecretBox",
    "key_fingerprints",
    "new_secret_key",
    "parse_secret_key",
    "secret_box",
]

HOW_TO_MAKE_ONE = (
    'make one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)

#: Why no key can be issued without SECRET_KEY: every key must also work with GOV.UK Notify's clients.
NO_SECRET_KEY = (
    "SECRET_KEY is not set: API keys cannot be issued, since each key's secret is kept encrypted with it to verify "
    "GOV.UK Notify tokens; set SECRET_KEY (" + HOW_TO_MAKE_ONE.removeprefix("make one with: ") + ")"
)


def parse_secret_key(value: str) -> list[Fernet]:
    """Return the Fernet keys of a SECRET_KEY value (comma-separated, the sealing one first).

    Raises:
        ValueError: a part is not a Fernet key (32 bytes, URL-safe base64), saying how to make one.
    """
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"SECRET_KEY holds no key; {HOW_TO_MAKE_ONE}")
    try:
        return [Fernet(part) for part in parts]
    except ValueError:
        raise ValueError(
            "SECRET_KEY must be Fernet keys (44 URL-safe base64 characters each) separated by commas; "
            + HOW_TO_MAKE_ONE
        ) from None


def key_fingerprints(value: str) -> list[str]:
    """Return a fingerprint of each key of a SECRET_KEY value, in its order: names a key without revealing it."""
    parse_secret_key(value)
    raw = [base64.urlsafe_b64decode(part.strip()) for part in value.split(",") if part.strip()]
    return [hashlib.sha256(b"notify secret key fingerprint:" + key).hexdigest()[:16] for key in raw]


def new_secret_key() -> str:
    """Return a new random SECRET_KEY (one Fernet key)."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Seals secrets with the first key of SECRET_KEY and opens what any of its keys sealed."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = MultiFernet(parse_secret_key(secret_key))
        #: The keys' fingerprints, the sealing one first (`shared.secret_holders` reports them).
        self.fingerprints = key_fingerprints(secret_key)

    def seal(self, secret: str) -> str:
        """Return `secret` encrypted (a Fernet token, ASCII)."""
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, ciphertext: str) -> str:
        """Return the secret `ciphertext` holds.

        Raises:
            InvalidToken: none of the keys sealed it (SECRET_KEY changed without keeping the old key), or it was
                altered.
        """
        return self._fernet.decrypt(ciphertext.encode("ascii")).decode()

    def reseal(self, ciphertext: str) -> str:
        """Return `ciphertext` sealed again with the first key (for retiring an old one).

        Raises:
            InvalidToken: as `open`.
        """
        return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")


def secret_box(secret_key: SecretStr | None) -> SecretBox | None:
    """Return the box of the SECRET_KEY setting, or None when it is not set."""
    return None if secret_key is None else SecretBox(secret_key.get_secret_value())
