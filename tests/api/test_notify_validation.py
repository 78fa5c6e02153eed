"""The email check of the v2 routes: its fast path for plain addresses gives email-validator's own verdict."""

import pytest
from email_validator import EmailNotValidError, validate_email

from api.govuk.validation import email_error

ADDRESSES = [
    "ann@example.com", "ann.smith+tag@sub.example.co.uk", "a@b.io", "x_y-z@example.org", "user@localhost",
    "ann@example", "ann@@example.com", "@example.com", "ann@", "ann", "ann smith@example.com", "ann@exa mple.com",
    ".ann@example.com", "ann.@example.com", "an..n@example.com", "ann@-example.com", "ann@example-.com",
    "ann@example..com", "ann@.example.com", "ann@example.com.", "ann@123.123.123.123", "ann@[127.0.0.1]",
    '"ann smith"@example.com', '"a@b"@example.com', "ann@exämple.com", "änn@example.com", "ann@xn--exmple-cua.com",
    "a" * 64 + "@example.com", "a" * 65 + "@example.com", "ann@" + "a" * 63 + ".com", "ann@" + "a" * 64 + ".com",
    "ann@" + ".".join(["a" * 60] * 4) + ".com", "a@b@c.com", "ann@example.invalid", "ann@example.test",
    "ann\\@x@example.com", "ann@example.com\n", " ann@example.com", "ann@EXAMPLE.COM", "Ann@Example.Com",
    "ann@localhost.localdomain", "ann@example.c", "ann@1example.com", "!#$%&'*+/=?^_`{|}~-@example.com",
]  # fmt: skip


def _library_says(address: str) -> str | None:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return "Not a valid email address"
    return None


@pytest.mark.parametrize("address", ADDRESSES)
def test_the_fast_path_agrees_with_email_validator(address: str) -> None:
    assert email_error(address) == _library_says(address)
    assert email_error(address) == _library_says(address)  # and so does the cached domain verdict
