"""A job's rows read from CSV and NDJSON as they arrive: Notify's header rules, edge cases, all or nothing, memory."""

import tracemalloc
from collections.abc import AsyncIterator
from uuid import uuid4

import orjson
import pytest

from shared.recipient_csv import (
    InvalidRowsError,
    JobFileError,
    JobRow,
    JobRules,
    chunked,
    csv_rows,
    header_key,
    native_rules,
    ndjson_rows,
)
from shared.settings import Settings

SETTINGS = Settings(database_url=None, redis_url=None)


def _no_check(to: str, values: dict[str, str]) -> list[str]:
    return [] if "@" in to else [f"`email address`: invalid recipient {to}"]


def _rules(*placeholders: str, max_rows: int = 1000, check: object = _no_check) -> JobRules:
    assert callable(check)
    return JobRules(("email address",), placeholders, check, max_rows, 10_000)


async def _read(body: bytes, rules: JobRules, *, size: int = 7, batch_rows: int = 2) -> list[JobRow]:
    rows: list[JobRow] = []
    async for batch in csv_rows(chunked(body, size), rules, max_listed=3, batch_rows=batch_rows):
        assert 0 < len(batch) <= batch_rows
        rows.extend(batch)
    return rows


@pytest.mark.parametrize("size", [1, 3, 64 * 1024])
async def test_quoted_fields_bom_crlf_and_blank_lines_whatever_the_chunks(size: int) -> None:
    body = (
        "\ufeffEmail Address,NAME,Note\r\n"
        'a@example.com,"Smith, Jane","she said ""hi""\r\non two lines"\r\n'
        "\r\n"
        "b@example.com,Bob,\r\n"
        ",,\r\n"
        "\r\n\r\n"
    ).encode()
    rows = await _read(body, _rules("name"), size=size)
    assert rows == [
        JobRow(1, "a@example.com", {"name": "Smith, Jane"}),
        JobRow(2, "b@example.com", {"name": "Bob"}),
    ]


async def test_headers_are_matched_ignoring_case_spaces_underscores_and_hyphens() -> None:
    assert header_key(" Email_Address ") == header_key("email-address") == header_key("EMAIL ADDRESS")
    rows = await _read(b"email_address,First-Name,extra\nc@example.com,Cy,ignored\n", _rules("first name"))
    assert rows == [JobRow(1, "c@example.com", {"first name": "Cy"})]


async def test_a_header_without_a_placeholder_column_refuses_the_file() -> None:
    with pytest.raises(JobFileError, match=r"^Missing column headers: band, name$"):
        await _read(b"email address,name2\na@example.com,x\n", _rules("name", "band"))
    with pytest.raises(JobFileError, match=r"^Missing column headers: email address, name$"):
        await _read(b"to,x\na@example.com,x\n", _rules("name"))


async def test_a_recipient_or_placeholder_column_twice_refuses_the_file() -> None:
    with pytest.raises(JobFileError, match="Duplicate column headers: Email address, email_address"):
        await _read(b"Email address,email_address\na@example.com,b@example.com\n", _rules())
    with pytest.raises(JobFileError, match="Duplicate column headers: Name, name"):
        await _read(b"email address,Name,name\na@example.com,x,y\n", _rules("name"))
    # an unused column twice is ignored, as Notify ignores it
    assert len(await _read(b"email address,x,x\na@example.com,1,2\n", _rules())) == 1


async def test_a_row_with_too_few_cells_lacks_them_and_every_bad_row_is_counted() -> None:
    body = b"email address,name\na@example.com\nnot-an-address,Al\nb@example.com,Bo\n,Cy\nd@x.com,Di,extra,cells\n"
    with pytest.raises(InvalidRowsError) as caught:
        await _read(body, _rules("name"))
    failure = caught.value
    assert failure.count == 3
    assert [(error.number, error.messages) for error in failure.errors] == [
        (1, ("`name`: Missing",)),
        (2, ("`email address`: invalid recipient not-an-address",)),
        (4, ("`email address`: Missing",)),
    ]


async def test_bad_rows_are_listed_up_to_the_cap_and_no_batch_follows_the_first_bad_row() -> None:
    lines = ["email address"] + ["ok@example.com"] * 4 + ["bad"] * 10 + ["ok@example.com"] * 10
    seen: list[JobRow] = []

    async def consume() -> None:
        async for batch in csv_rows(chunked("\n".join(lines).encode(), 5), _rules(), max_listed=3, batch_rows=2):
            seen.extend(batch)

    with pytest.raises(InvalidRowsError) as caught:
        await consume()
    assert [row.number for row in seen] == [1, 2, 3, 4]  # the batches before the first bad row only
    assert caught.value.count == 10
    assert [error.number for error in caught.value.errors] == [5, 6, 7]


async def test_too_many_rows_an_empty_file_and_bad_encoding_refuse_the_file() -> None:
    with pytest.raises(JobFileError, match=r"Too many rows\. Maximum number of rows allowed is 2"):
        await _read(b"email address\na@x.com\nb@x.com\nc@x.com\n", _rules(max_rows=2))
    with pytest.raises(JobFileError, match="empty"):
        await _read(b"\r\n\r\n", _rules())
    with pytest.raises(JobFileError, match="no rows"):
        await _read(b"email address\r\n", _rules())
    with pytest.raises(JobFileError, match="UTF-8"):
        await _read("email address\né@x.com\n".encode("latin-1"), _rules())


async def test_an_unclosed_quote_is_refused_within_the_record_limit() -> None:
    body = b'email address,name\na@x.com,"never closed\n' + b"more text\n" * 5000
    with pytest.raises(JobFileError, match="longer than 10000 characters"):
        await _read(body, _rules("name"), size=4096)


async def test_a_record_that_is_not_csv_is_one_bad_row() -> None:
    # a lone quote inside an unquoted field: the record runs on to the next line, which csv cannot read
    body = b'email address,name\na@x.com,ab"c\nd@x.com,e"f\nb@x.com,ok\n'
    with pytest.raises(InvalidRowsError) as caught:
        await _read(body, _rules("name"))
    assert caught.value.count == 1
    assert caught.value.errors[0].number == 1
    assert caught.value.errors[0].messages[0].startswith("the row is not valid CSV: new-line character")


async def test_native_rules_check_as_the_native_send_does() -> None:
    rules = native_rules(SETTINGS, "sms", ["code"])
    body = ("to,code\n07700900123,1\n07700900124," + "x" * 5000 + "\n07700900125,a\x01b\n").encode()
    with pytest.raises(InvalidRowsError) as caught:
        await _read(body, rules)
    assert caught.value.count == 2
    assert caught.value.errors[0].number == 2
    assert "4096" in caught.value.errors[0].messages[0]
    assert "control characters" in caught.value.errors[1].messages[0]
    # `phone number` names the recipient column too; `to` and `phone number` together are ambiguous
    assert len(await _read(b"Phone Number,code\n07700900123,1\n", rules)) == 1
    with pytest.raises(JobFileError, match="Duplicate column headers"):
        await _read(b"to,phone number,code\n1,2,3\n", rules)


async def _ndjson(body: bytes, template_id: object, *placeholders: str) -> list[JobRow]:
    rows: list[JobRow] = []
    assert template_id is not None
    async for batch in ndjson_rows(
        chunked(body, 5),
        SETTINGS,
        template_id,
        placeholders,
        max_listed=10,
        batch_rows=2,  # type: ignore[arg-type]
    ):
        rows.extend(batch)
    return rows


async def test_ndjson_lines_are_native_sends_of_the_jobs_template() -> None:
    template_id = uuid4()
    body = (
        b'{"to": "a@x.com", "personalization": {"name": "\\u00e9"}}\r\n\n'
        + f'{{"to": "b@x.com", "personalization": {{"name": "B"}}, "template_id": "{template_id}"}}'.encode()
    )
    assert await _ndjson(body, template_id, "name") == [
        JobRow(1, "a@x.com", {"name": "é"}),
        JobRow(2, "b@x.com", {"name": "B"}),
    ]
    bad = (
        b'{"to": "a@x.com"}\n'
        b'{"to": "", "personalization": {"name": "x"}}\n'
        b"not json\n"
        + f'{{"to": "b@x.com", "personalization": {{"name": "B"}}, "template_id": "{uuid4()}"}}\n'.encode()
    )
    with pytest.raises(InvalidRowsError) as caught:
        await _ndjson(bad, template_id, "name")
    assert [error.number for error in caught.value.errors] == [1, 2, 3, 4]
    assert caught.value.errors[0].messages == ("`name`: Missing",)
    assert "template_id" in caught.value.errors[3].messages[0]
    with pytest.raises(JobFileError, match="empty"):
        await _ndjson(b"\n\n", template_id)


async def _generated_csv(rows: int) -> AsyncIterator[bytes]:
    """A CSV of `rows` rows, made as it is read (never whole in memory), in 64 KiB chunks."""
    yield b"email address,name,reference\r\n"
    line = 0
    while line < rows:
        count = min(1000, rows - line)
        yield "".join(
            f'user{number}@example.com,"Name {number}, Jr",ref-{number}\r\n' for number in range(line, line + count)
        ).encode()
        line += count


async def test_memory_stays_bounded_while_200000_rows_are_read_in_batches() -> None:
    rules = JobRules(("email address",), ("name",), _no_check, 1_000_000, 10_000)
    read = 0
    tracemalloc.start()
    try:
        async for batch in csv_rows(_generated_csv(200_000), rules, max_listed=100, batch_rows=1000):
            read += len(batch)  # a consumer that writes each batch and lets it go
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == 200_000
    # the file is ~10 MB; a reader holding it, or its rows, would peak far above this
    assert peak < 4 * 1024 * 1024, peak


async def test_rows_of_long_values_end_a_batch_before_its_row_count() -> None:
    # 200 rows of ~40,000 characters each: ~8 MB in one batch of 1,000 rows, were it counted by rows alone
    long = "x" * 4000
    header = "email address," + ",".join(f"p{n}" for n in range(10)) + "\n"
    row = "a@example.com," + ",".join([long] * 10) + "\n"
    rules = JobRules(("email address",), (), _no_check, 1_000_000, 100_000)
    sizes = [
        len(batch)
        async for batch in csv_rows(
            chunked((header + row * 200).encode()), rules, max_listed=10, batch_rows=1000, batch_chars=400_000
        )
    ]
    assert sum(sizes) == 200
    assert max(sizes) <= 12  # 400,000 characters' worth, give or take the 64 KiB chunk being read

    line = orjson.dumps({"to": "a@example.com", "personalization": {f"p{n}": long for n in range(10)}}) + b"\n"
    sizes = [
        len(batch)
        async for batch in ndjson_rows(
            chunked(line * 200), SETTINGS, uuid4(), (), max_listed=10, batch_rows=1000, batch_chars=400_000
        )
    ]
    assert sum(sizes) == 200
    assert max(sizes) <= 11
