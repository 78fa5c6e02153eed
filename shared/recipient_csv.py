"""A job's rows, read as they arrive: CSV or NDJSON bytes in, validated rows out in batches, memory bounded.

A job's body (a bulk send's `csv`, a native job's streamed upload, later a scheduled job's stored rows) is read
chunk by chunk from an async iterator of bytes (an ASGI `receive` loop, say). Only the current chunk, one partial
record and one batch of rows are held, whatever the body's length. Rows come out in batches of `batch_rows`.

CSV follows GOV.UK Notify's `RecipientCSV`: a header row, then data rows; headers are matched ignoring case,
spaces, underscores and hyphens; the header must name the recipient column (`JobRules.recipient_columns`, e.g.
`email address`, or `to` for native jobs) and every placeholder of the template; other columns are ignored. A
placeholder's value is read from its column under the placeholder's own name, so the template renders with it. A
blank line, or a row whose cells are all empty, is skipped; a row with too few cells lacks the missing ones. Quoted
fields may hold commas, quotes (`""`) and line breaks; a UTF-8 byte order mark and CRLF line ends are accepted.
NDJSON (native jobs) is one `/notifications/v1/` object a line.

All or nothing: every row is checked (`JobRules.check`); once a row is found invalid no more batches are yielded,
the rest is still read and checked, and at the end `InvalidRowsError` lists the first `max_listed` bad rows (row
numbers count data rows from 1, blank ones left out) and how many there were. A caller queues nothing of a job
until the iterator has ended without raising. A fault of the file as a whole (header, size, encoding) raises
`JobFileError` at once.

Validation rules are the callers' (`api.govuk.bulk` for the v2 bulk route, `native_rules` for native jobs, which
reuse the single sends' rules); this module only reads, shapes and counts.
"""

import codecs
import csv
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from pydantic import ValidationError

from shared.schemas import PATTERN_MESSAGES, limited_notification
from shared.settings import Settings

#: Rows a batch holds (a reader's consumer writes them in batches of this size).
BATCH_ROWS = 1000
#: Characters of the body a batch holds at most (about; past it a batch ends with the chunk being read): rows of
#: many long values would otherwise make a batch of BATCH_ROWS rows hundreds of megabytes.
BATCH_CHARS = 8 * 1024 * 1024
#: Notify's message for a cell a row needs and does not fill.
MISSING = "Missing"


def header_key(name: str) -> str:
    """Return a column name as Notify compares them: lower case, without spaces, underscores or hyphens."""
    return "".join(name.lower().split()).replace("_", "").replace("-", "")


@dataclass(frozen=True, slots=True)
class JobRow:
    """One valid row of a job: its number (1 for the first data row), recipient and placeholder values."""

    number: int
    to: str
    personalisation: dict[str, str]


#: Checks one row's recipient and values; returns what is wrong with them (empty: valid), each `` `column`: what ``.
RowCheck = Callable[[str, dict[str, str]], list[str]]


@dataclass(frozen=True, slots=True)
class JobRules:
    """What a job's rows must hold: its recipient column (any one of these names), placeholders, and a row check."""

    recipient_columns: tuple[str, ...]
    placeholders: tuple[str, ...]
    check: RowCheck
    max_rows: int
    #: Longest record (a row, line breaks in quoted fields included) in characters: bounds the memory of one row.
    max_record_chars: int


class JobFileError(ValueError):
    """The job's file as a whole cannot be read (header, size, encoding): nothing of it is to be queued."""


@dataclass(frozen=True, slots=True)
class RowError:
    """A bad row: its number and what is wrong with it (`` `email address`: Not a valid email address ``...)."""

    number: int
    messages: tuple[str, ...]


@dataclass
class InvalidRowsError(ValueError):
    """Some rows are not valid: the first `max_listed` of them and how many in all. Nothing is to be queued."""

    errors: list[RowError] = field(default_factory=list)
    count: int = 0

    def __str__(self) -> str:
        return f"{self.count} rows are not valid"


def max_record_chars(settings: Settings) -> int:
    """Return the longest record a valid row can need under `settings`' limits (a generous bound, not a rule)."""
    cell = max(settings.max_to_length, settings.max_personalization_value_length) * 2 + 3  # every quote doubled
    return (settings.max_personalization_keys + 1) * cell + 64 * 1024  # and room for ignored columns


class _Errors:
    """The bad rows seen so far: the first `limit` kept, all counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failure = InvalidRowsError()

    def add(self, number: int, messages: Sequence[str]) -> None:
        self.failure.count += 1
        if len(self.failure.errors) < self.limit:
            self.failure.errors.append(RowError(number, tuple(messages)))


async def _records(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[list[str]]:
    """Yield the body's complete CSV records (text, line ends kept), a chunk's worth at a time.

    A line end closes a record when the record holds an even number of quotes so far (RFC 4180's `""` escape keeps
    the count even; a line break inside a quoted field leaves it odd).
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending, pending_quotes = "", 0
    try:
        async for chunk in chunks:
            text = decoder.decode(chunk)
            lines = text.split("\n")
            records: list[str] = []
            for line in lines[:-1]:
                pending += line + "\n"
                pending_quotes += line.count('"')
                if pending_quotes % 2 == 0:
                    records.append(pending)
                    pending, pending_quotes = "", 0
            pending += lines[-1]
            pending_quotes += lines[-1].count('"')
            if len(pending) > limit:
                raise JobFileError(f"a row is longer than {limit} characters (or a quoted field is never closed)")
            if records:
                yield records
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise JobFileError("the file is not UTF-8 text") from None
    if pending:
        yield [pending]


class _Unreadable(str):
    """A record the csv module refused (the text is its message), in place of its cells."""


def _parse(records: list[str]) -> list[list[str] | _Unreadable]:
    """Return each record's cells, or why it could not be read (a line break in an unquoted field...)."""
    try:
        return list(csv.reader(records))
    except csv.Error:
        parsed: list[list[str] | _Unreadable] = []
        for record in records:  # rare: find the record at fault, keep the others
            try:
                parsed.extend(csv.reader([record]))
            except csv.Error as exc:
                parsed.append(_Unreadable(exc))
        return parsed


def _blank(cells: list[str]) -> bool:
    return not "".join(cells).strip()


@dataclass(frozen=True, slots=True)
class _Columns:
    """Where a CSV header puts the recipient and each placeholder, and how the file names them."""

    recipient: int
    recipient_name: str
    placeholders: tuple[tuple[str, int, str], ...]  # (placeholder, column index, column as the file names it)
    width: int


def _columns(header: list[str], rules: JobRules) -> _Columns:
    """Find the recipient and placeholder columns in a header row, as Notify's RecipientCSV does."""
    where: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        where.setdefault(header_key(name), []).append(index)
    recipient_keys = [key for key in dict.fromkeys(map(header_key, rules.recipient_columns)) if key in where]
    placeholder_keys = {header_key(name): name for name in rules.placeholders}
    if not recipient_keys:
        names = [rules.recipient_columns[0], *(name for key, name in placeholder_keys.items() if key not in where)]
        raise JobFileError(f"Missing column headers: {', '.join(sorted(set(names)))}")
    missing = sorted(name for key, name in placeholder_keys.items() if key not in where)
    if missing:
        raise JobFileError(f"Missing column headers: {', '.join(missing)}")
    duplicates = [key for key in [*recipient_keys, *placeholder_keys] if len(where[key]) > 1]
    if len(recipient_keys) > 1:
        duplicates.extend(recipient_keys)
    if duplicates:
        shown = sorted({header[index] for key in duplicates for index in where[key]})
        raise JobFileError(f"Duplicate column headers: {', '.join(shown)}")
    recipient = where[recipient_keys[0]][0]
    placeholders = tuple(
        (name, where[key][0], header[where[key][0]]) for name in rules.placeholders for key in [header_key(name)]
    )
    return _Columns(recipient, header[recipient], placeholders, len(header))


def _row(cells: list[str], columns: _Columns, rules: JobRules, number: int) -> JobRow | list[str]:
    """Return the row's `JobRow`, or what is wrong with it."""
    problems: list[str] = []
    to = cells[columns.recipient].strip() if columns.recipient < len(cells) else ""
    if not to:
        problems.append(f"`{columns.recipient_name}`: {MISSING}")
    values: dict[str, str] = {}
    for name, index, shown in columns.placeholders:
        value = cells[index] if index < len(cells) else ""
        if not value.strip():
            problems.append(f"`{shown}`: {MISSING}")
        values[name] = value
    if problems:
        return problems
    problems = rules.check(to, values)
    return problems or JobRow(number, to, values)


async def csv_rows(
    chunks: AsyncIterator[bytes],
    rules: JobRules,
    *,
    max_listed: int,
    batch_rows: int = BATCH_ROWS,
    batch_chars: int = BATCH_CHARS,
) -> AsyncIterator[list[JobRow]]:
    """Yield a CSV job's valid rows in batches; raise once the body is read if any row was not valid.

    A batch ends at `batch_rows` rows, or once the records read for it reach `batch_chars` characters.

    Raises:
        JobFileError: no header, a header without the recipient or a placeholder column, or with one of them twice;
            more than `rules.max_rows` rows; not UTF-8; a record longer than `rules.max_record_chars`.
        InvalidRowsError: at the end, when any row was not valid (the first `max_listed` listed).
    """
    columns: _Columns | None = None
    errors = _Errors(max_listed)
    batch: list[JobRow] = []
    number = 0
    chars = 0
    async for records in _records(chunks, rules.max_record_chars):
        chars += sum(map(len, records))
        for cells in _parse(records):
            if isinstance(cells, _Unreadable):
                if columns is None:
                    raise JobFileError(f"the header row is not valid CSV: {cells}")
                number += 1
                errors.add(number, [f"the row is not valid CSV: {cells}"])
                continue
            if _blank(cells):
                continue
            if columns is None:
                columns = _columns(cells, rules)
                continue
            number += 1
            if number > rules.max_rows:
                raise JobFileError(f"Too many rows. Maximum number of rows allowed is {rules.max_rows}")
            row = _row(cells, columns, rules, number)
            if isinstance(row, list):
                errors.add(number, row)
            elif not errors.failure.count:
                batch.append(row)
                if len(batch) >= batch_rows:
                    yield batch
                    batch, chars = [], 0
        if batch and chars >= batch_chars:
            yield batch
            batch, chars = [], 0
    if columns is None:
        raise JobFileError("the file is empty: it needs a header row and at least one row")
    if number == 0:
        raise JobFileError("the file has a header row but no rows")
    if errors.failure.count:
        raise errors.failure
    if batch:
        yield batch


def native_rules(
    settings: Settings, template_type: str, placeholders: Sequence[str], *, max_rows: int | None = None
) -> JobRules:
    """Return the rules of a native job's rows: each is checked as `POST /notifications/v1/` checks its item."""
    model = limited_notification(settings)

    def check(to: str, values: dict[str, str]) -> list[str]:
        try:
            model.model_validate({"to": to, "personalization": values})
        except ValidationError as exc:
            return [_pydantic_message(error) for error in exc.errors()]
        return []

    recipient = "email address" if template_type == "email" else "phone number"
    return JobRules(
        ("to", recipient),
        tuple(placeholders),
        check,
        settings.max_job_rows if max_rows is None else max_rows,
        max_record_chars(settings),
    )


def _pydantic_message(error: object) -> str:
    """One pydantic error as a row's message: `` `column`: what `` (the service's words for its patterns)."""
    assert isinstance(error, dict)
    loc = [str(part) for part in error.get("loc", ())]
    column = loc[-1] if loc else ""
    message = str(error.get("msg", "not valid"))
    if error.get("type") == "string_pattern_mismatch":
        message = PATTERN_MESSAGES.get(str(error.get("ctx", {}).get("pattern")), message)
    return f"`{column}`: {message}" if column else message


async def ndjson_rows(
    chunks: AsyncIterator[bytes],
    settings: Settings,
    template_id: UUID,
    placeholders: Sequence[str],
    *,
    max_listed: int,
    max_rows: int | None = None,
    batch_rows: int = BATCH_ROWS,
    check: RowCheck | None = None,
    batch_chars: int = BATCH_CHARS,
) -> AsyncIterator[list[JobRow]]:
    """Yield a native NDJSON job's valid rows in batches (one `/notifications/v1/` object a line); as `csv_rows`.

    Each line is checked by the native send's model; it may name the job's template (`template_id`) or none, and
    must give every placeholder a value; then by `check`, if given. Blank lines are skipped.

    Raises:
        JobFileError: more than `max_rows` (MAX_JOB_ROWS) lines, a line too long, not UTF-8, no line at all.
        InvalidRowsError: at the end, when any line was not valid.
    """
    model = limited_notification(settings)
    limit = settings.max_job_rows if max_rows is None else max_rows
    errors = _Errors(max_listed)
    batch: list[JobRow] = []
    number = 0
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""
    chars = 0
    longest = max_record_chars(settings)

    def take(line: str) -> list[JobRow]:
        nonlocal number
        if not line.strip():
            return []
        number += 1
        if number > limit:
            raise JobFileError(f"Too many rows. Maximum number of rows allowed is {limit}")
        try:
            item = model.model_validate_json(line)
        except ValidationError as exc:
            errors.add(number, [_pydantic_message(error) for error in exc.errors()])
            return []
        values = item.personalization or {}
        problems = [f"`{name}`: {MISSING}" for name in placeholders if name not in values]
        if item.template_id not in (None, template_id):
            problems.append("`template_id`: a job's rows use the job's template (leave it out)")
        if item.template_version is not None:
            problems.append("`template_version`: a job's rows use the job's template version (leave it out)")
        if not problems and check is not None:
            problems = check(item.to, values)
        if problems:
            errors.add(number, problems)
            return []
        return [] if errors.failure.count else [JobRow(number, item.to, values)]

    try:
        async for chunk in chunks:
            lines = (pending + decoder.decode(chunk)).split("\n")
            pending = lines.pop()
            if len(pending) > longest:
                raise JobFileError(f"a line is longer than {longest} characters")
            for line in lines:
                batch.extend(take(line))
                chars += len(line)
                if batch and (len(batch) >= batch_rows or chars >= batch_chars):
                    yield batch
                    batch, chars = [], 0
        batch.extend(take(pending + decoder.decode(b"", final=True)))
    except UnicodeDecodeError:
        raise JobFileError("the file is not UTF-8 text") from None
    if number == 0:
        raise JobFileError("the file is empty: it needs at least one line")
    if errors.failure.count:
        raise errors.failure
    if batch:
        yield batch


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """Yield `data` in chunks of `size` bytes (a body already in memory, such as a bulk send's `csv`)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


__all__ = [
    "BATCH_CHARS",
    "BATCH_ROWS",
    "InvalidRowsError",
    "JobFileError",
    "JobRow",
    "JobRules",
    "RowCheck",
    "RowError",
    "chunked",
    "csv_rows",
    "header_key",
    "native_rules",
    "ndjson_rows",
]
