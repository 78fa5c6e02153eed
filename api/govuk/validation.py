"""GOV.UK Notify v2 send requests: the body of `POST /v2/notifications/email|sms` checked as Notify checks it.

`parse_send` reads the raw body (not the native pydantic model) and refuses it with Notify's 400 in Notify's words
(`email_address Not a valid email address`, `template_id is a required property`, ...), every problem at once.
Email addresses are checked for syntax only (email-validator: no DNS lookup), phone numbers by phonenumbers (the
UK by default, as at Notify; a UK number must be a mobile). What this service cannot honour is a 400 that says so:
`scheduled_for`, `email_reply_to_id`, `sms_sender_id`, one-click unsubscribe links, content sanitising.
"""

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from email_validator.syntax import validate_email_local_part
from phonenumbers import NumberParseException, ValidationResult

from api.errors import NotifyError, NotifyValidationError
from shared.schemas import MESSAGE_TEXT
from shared.settings import Settings

EMAIL, SMS = "email", "sms"
#: Each route's properties (Notify's schemas: additionalProperties false) and the recipient's.
PROPERTIES = {
    EMAIL: frozenset(
        {
            "email_address",
            "template_id",
            "personalisation",
            "reference",
            "email_reply_to_id",
            "one_click_unsubscribe_url",
            "scheduled_for",
            "sanitise_content_for",
        }
    ),
    SMS: frozenset({"phone_number", "template_id", "personalisation", "reference", "sms_sender_id", "scheduled_for"}),
}
RECIPIENT = {EMAIL: "email_address", SMS: "phone_number"}
SENDER = {EMAIL: "email_reply_to_id", SMS: "sms_sender_id"}
#: Longest `reference` (Notify stores it in a 255-character column... this service: 1,000 characters of text).
MAX_REFERENCE_LENGTH = 1000
_MESSAGE_TEXT = re.compile(MESSAGE_TEXT)
#: What a phone number may hold besides digits (Notify: `0 1 2 3 4 5 6 7 8 9 ( ) + -`, and spaces, dots).
_PHONE_CHARACTERS = re.compile(r"^[\d\s()+\-.]*$")
_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "Not a valid country prefix",
    NumberParseException.NOT_A_NUMBER: "Must not contain letters or symbols",
    NumberParseException.TOO_SHORT_AFTER_IDD: "Not enough digits",
    NumberParseException.TOO_SHORT_NSN: "Not enough digits",
    NumberParseException.TOO_LONG: "Too many digits",
}
_POSSIBLE_ERRORS = {
    ValidationResult.INVALID_COUNTRY_CODE: "Not a valid country prefix",
    ValidationResult.TOO_SHORT: "Not enough digits",
    ValidationResult.TOO_LONG: "Too many digits",
    ValidationResult.INVALID_LENGTH: "Not a valid phone number",
}
UK_COUNTRY_CODE = 44
UK_MOBILE_DIGITS = 10  # after the country code or the leading 0


@dataclass(frozen=True, slots=True)
class NotifySend:
    """One valid send request of the v2 API: what the write path needs of it."""

    type: str
    to: str
    template_id: UUID
    personalisation: dict[str, str]
    reference: str | None

    @property
    def personalization(self) -> dict[str, str]:
        """The personalisation, by the native routes' spelling (the write path serves both)."""
        return self.personalisation


def _shown(value: Any) -> str:
    """A value as Notify's messages show it (`5 is not of type object`), cut short."""
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    return shown if len(shown) <= 50 else shown[:47] + "..."


#: The longest address, and local part, email-validator accepts (RFC 5321's limits).
_MAX_ADDRESS, _MAX_LOCAL = 254, 64


@lru_cache(maxsize=4096)
def _domain_is_valid(domain: str) -> bool:
    """Whether email-validator takes `domain` as an address's domain (cached: producers send to few domains)."""
    try:
        validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def reference_error(reference: str) -> str | None:
    """Return Notify's message for a `reference` that is too long or holds control characters, or None.

    For a send's reference and a listing's filter alike: a NUL would reach Postgres, which refuses it (a 500).
    """
    if len(reference) > MAX_REFERENCE_LENGTH or not _MESSAGE_TEXT.match(reference):
        return f"reference must be at most {MAX_REFERENCE_LENGTH} characters, without control characters"
    return None


def email_error(address: str) -> str | None:
    """Return Notify's message for an email address that is not valid, or None.

    email-validator checks it. Its domain check is three quarters of its cost (~17 of ~26 us here), and the domains
    of a producer's recipients repeat, so the common case, a plain ASCII address, is taken apart: the local part goes
    to email-validator's own local-part check, the domain to its whole check of `a@<domain>`, whose verdict is
    cached. Anything else (Unicode, quoted local parts, several `@`, over-long) goes through `validate_email` whole.
    tests/api/test_notify_validation.py checks that both ways agree.
    """
    local, at, domain = address.rpartition("@")
    plain = at and domain and '"' not in local and 0 < len(local) <= _MAX_LOCAL and len(address) <= _MAX_ADDRESS
    if plain and address.isascii():
        try:
            validate_email_local_part(local, allow_smtputf8=False)
        except EmailNotValidError:
            return "Not a valid email address"
        return None if _domain_is_valid(domain) else "Not a valid email address"
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return "Not a valid email address"
    return None


def phone_error(number: str) -> str | None:
    """Return Notify's message for a phone number that is not valid, or None.

    The UK is the default region (`07700 900123`); a UK number must be a mobile, others valid numbers of their
    country (phonenumbers' metadata).
    """
    if not _PHONE_CHARACTERS.match(number):
        return "Must not contain letters or symbols"
    try:
        parsed = phonenumbers.parse(number, "GB")
    except NumberParseException as exc:
        return _PARSE_ERRORS.get(exc.error_type, "Not a valid phone number")
    if parsed.country_code == UK_COUNTRY_CODE:
        # as Notify: a UK mobile is 7 and 9 more digits, Ofcom's drama range (07700 900xxx, which phonenumbers'
        # metadata calls unassigned) included; Notify's own example numbers are in it
        national = str(parsed.national_number)
        if not national.startswith("7"):
            return "Not a UK mobile number"
        if len(national) != UK_MOBILE_DIGITS:
            return "Not enough digits" if len(national) < UK_MOBILE_DIGITS else "Too many digits"
        return None
    possible = phonenumbers.is_possible_number_with_reason(parsed)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        return _POSSIBLE_ERRORS.get(possible, "Not a valid phone number")
    if not phonenumbers.is_valid_number(parsed):
        return "Not a valid phone number"
    return None


def _uuid(value: Any) -> UUID | None:
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            return None
    return None


def personalisation_values(value: Any, settings: Settings, errors: list[str]) -> dict[str, str]:
    """Check Notify's `personalisation` (strings and numbers) within the limits; return each value as text.

    A number is shown as orjson writes it (exactly as sent for an integer of 64 bits): `exact_personalisation`
    gives every number as it was sent.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"personalisation {_shown(value)} is not of type object")
        return {}
    if len(value) > settings.max_personalization_keys:
        errors.append(f"personalisation has more than {settings.max_personalization_keys} keys")
    values: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, str):
            text = item
        elif isinstance(item, int | float) and not isinstance(item, bool):
            text = orjson.dumps(item).decode()
        else:
            errors.append(f"personalisation {_shown(key)} {_shown(item)} is not of type string, number")
            continue
        if not key or len(key) > settings.max_personalization_key_length or not _MESSAGE_TEXT.match(key):
            errors.append(
                f"personalisation {_shown(key)} is not a valid name: 1 to "
                f"{settings.max_personalization_key_length} characters, no control characters"
            )
        elif len(text) > settings.max_personalization_value_length or not _MESSAGE_TEXT.match(text):
            errors.append(
                f"personalisation {_shown(key)} must be at most {settings.max_personalization_value_length} "
                "characters, without control characters"
            )
        values[key] = text
    return values


def _inexact(value: Any) -> bool:
    """Whether orjson may have parsed a number of `value` (a personalisation) into something other than was sent."""
    # orjson parses a number with a fraction or an exponent, and an integer beyond 64 bits, as a float, and `-0` as 0
    if isinstance(value, dict):
        for item in value.values():
            if type(item) is float or (type(item) is int and item == 0):
                return True
    return False


def exact_personalisation(
    values: dict[str, str], data: dict[str, Any], body: bytes, settings: Settings
) -> dict[str, str]:
    """Return a valid body's personalisation `values` with each number as it was sent (`12345678901234567890123`).

    orjson parses every body (fast); only a body whose personalisation holds a number orjson may not have kept
    exactly is parsed again, by the standard library, its numbers kept as their text, and checked again (a number
    sent with 5,000 digits is too long a value). Called once the body is known valid, so it is bounded: every other
    field has a length limit and a number is one token.

    Raises:
        NotifyValidationError: a number, as sent, is longer than MAX_PERSONALIZATION_VALUE_LENGTH.
    """
    if not _inexact(data.get("personalisation")):
        return values
    errors: list[str] = []
    exact = personalisation_values(
        json.loads(body, parse_int=str, parse_float=str).get("personalisation"), settings, errors
    )
    if errors:
        raise NotifyValidationError(errors)
    return exact


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Notify's 400 (`Invalid JSON supplied in POST data`, `… is not of type object`)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotifyError("Invalid JSON supplied in POST data") from None
    if not isinstance(data, dict):
        raise NotifyValidationError([f"{_shown(data)} is not of type object"])
    return data


def parse_send(body: bytes, notification_type: str, service_id: UUID, settings: Settings) -> NotifySend:
    """Check the body of a v2 email or sms POST and return what it asks for.

    Raises:
        NotifyValidationError: the body breaks Notify's schema (400 `ValidationError`, every problem listed).
        NotifyError: the body is not JSON, or asks for what this service cannot do (400).
    """
    data = json_object(body)
    errors: list[str] = []
    unexpected = [name for name in data if name not in PROPERTIES[notification_type]]
    if unexpected:
        were = "was" if len(unexpected) == 1 else "were"
        errors.append(f"Additional properties are not allowed ({', '.join(unexpected)} {were} unexpected)")
    recipient_field = RECIPIENT[notification_type]
    recipient = data.get(recipient_field)
    for required in (recipient_field, "template_id"):
        if required not in data:
            errors.append(f"{required} is a required property")
    if recipient_field in data:
        if not isinstance(recipient, str):
            errors.append(f"{recipient_field} {_shown(recipient)} is not of type string")
        else:
            problem = email_error(recipient) if notification_type == EMAIL else phone_error(recipient)
            if problem is not None:
                errors.append(f"{recipient_field} {problem}")
    template_id = _uuid(data.get("template_id"))
    if "template_id" in data and template_id is None:
        errors.append("template_id is not a valid UUID")
    personalisation = personalisation_values(data.get("personalisation"), settings, errors)
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, str):
        errors.append(f"reference {_shown(reference)} is not of type string")
    elif reference is not None and (error := reference_error(reference)):
        errors.append(error)
    sender_field = SENDER[notification_type]
    sender = data.get(sender_field)
    if sender is not None and _uuid(sender) is None:
        errors.append(f"{sender_field} is not a valid UUID")
    if errors:
        raise NotifyValidationError(errors)
    personalisation = exact_personalisation(personalisation, data, body, settings)
    _refuse_what_cannot_be_honoured(data, sender_field, sender, service_id)
    assert isinstance(recipient, str)
    assert template_id is not None
    return NotifySend(notification_type, recipient, template_id, personalisation, reference)


def _refuse_what_cannot_be_honoured(data: dict[str, Any], sender_field: str, sender: Any, service_id: UUID) -> None:
    """Refuse, in Notify's form, the options this service cannot honour (their null values are accepted)."""
    if sender is not None:  # Notify's own message: this service keeps no reply-to addresses or SMS senders
        raise NotifyError(f"{sender_field} {sender} does not exist in database for service id {service_id}")
    if data.get("scheduled_for") is not None:
        raise NotifyError(
            "scheduled_for is not supported: this service does not schedule notifications (leave it out to send now)"
        )
    for option in ("one_click_unsubscribe_url", "sanitise_content_for"):
        if data.get(option) is not None:
            raise NotifyError(f"{option} is not supported by this service")
