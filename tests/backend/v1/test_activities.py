"""The ADD_CONTACTS activity body: form encoding, CSV data, line numbers and caps."""

from __future__ import annotations

import csv
import io
from urllib.parse import parse_qs

import pytest

from engine.backend.v1.activities import (
    COLUMN_NAMES,
    ActivityTooLargeError,
    encode_add_contacts,
    line_number,
)
from engine.errors import ConfigError

LISTS = [
    "http://api.constantcontact.com/ws/customers/acme/lists/3",
    "http://api.constantcontact.com/ws/customers/acme/lists/9",
]


def _decode(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def _rows(data: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data)))


def test_form_fields() -> None:
    """The body decodes to activityType ADD_CONTACTS, one data and one lists per list."""
    body = encode_add_contacts([{"EmailAddress": "ann@example.com"}], LISTS)
    form = _decode(body)
    assert set(form) == {"activityType", "data", "lists"}
    assert form["activityType"] == ["ADD_CONTACTS"]
    assert form["lists"] == LISTS
    assert len(form["data"]) == 1


def test_body_is_ascii_form_encoding() -> None:
    """The body is plain ASCII form encoding: `@` and `,` percent-encoded, spaces as `+`."""
    body = encode_add_contacts(
        [{"EmailAddress": "ann@example.com", "City": "São Paulo"}], LISTS[:1], fields=["City"]
    )
    assert body.isascii()
    assert b"ann%40example.com%2CS%C3%A3o+Paulo" in body
    assert b"lists=http%3A%2F%2Fapi.constantcontact.com%2Fws%2Fcustomers%2Facme%2Flists%2F3" in body


def test_data_header_and_rows() -> None:
    """data is `Email Address,…` then one CSV row per contact, in order, no trailing newline."""
    rows = [
        {"EmailAddress": "ann@example.com", "FirstName": "Ann", "LastName": "Lee"},
        {"EmailAddress": "bob@example.com", "FirstName": "Bob"},
    ]
    data = _decode(encode_add_contacts(rows, LISTS, fields=["FirstName", "LastName"]))["data"][0]
    assert not data.endswith("\n")
    assert _rows(data) == [
        ["Email Address", "First Name", "Last Name"],
        ["ann@example.com", "Ann", "Lee"],
        ["bob@example.com", "Bob", ""],
    ]


def test_only_requested_columns_are_sent() -> None:
    """Columns not named in `fields` are left out, so the server keeps their stored values."""
    rows = [{"EmailAddress": "ann@example.com", "FirstName": "Ann", "City": "Boston"}]
    data = _decode(encode_add_contacts(rows, LISTS, fields=["City"]))["data"][0]
    assert _rows(data) == [["Email Address", "City"], ["ann@example.com", "Boston"]]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Boston, MA", id="comma"),
        pytest.param('The "Big" Apple', id="double-quotes"),
        pytest.param('"Smith, Jr."', id="quoted-comma"),
        pytest.param("a,b,,c,", id="many-commas"),
        pytest.param("plain", id="plain"),
        pytest.param("", id="empty"),
    ],
)
def test_values_round_trip_through_csv(value: str) -> None:
    """Values with commas and double quotes come back intact from a CSV reader."""
    rows = [
        {"EmailAddress": "ann@example.com", "Addr1": value},
        {"EmailAddress": "bob@example.com", "Addr1": "next row"},
    ]
    data = _decode(encode_add_contacts(rows, LISTS, fields=["Addr1"]))["data"][0]
    assert _rows(data)[1:] == [["ann@example.com", value], ["bob@example.com", "next row"]]


@pytest.mark.parametrize(
    ("value", "flat"),
    [
        pytest.param("line one\nline two", "line one line two", id="lf"),
        pytest.param("line one\r\nline two", "line one line two", id="crlf"),
        pytest.param("line one\rline two", "line one line two", id="cr"),
        pytest.param('say "hi",\nthen go', 'say "hi", then go', id="newline-quote-comma"),
    ],
)
def test_embedded_newlines_flattened(value: str, flat: str) -> None:
    """Line breaks inside values become spaces, so the data has one line per contact."""
    rows = [
        {"EmailAddress": "ann@example.com", "Note": value},
        {"EmailAddress": "bob@example.com", "Note": "ok"},
    ]
    data = _decode(encode_add_contacts(rows, LISTS, fields=["Note"]))["data"][0]
    lines = data.split("\n")
    assert len(lines) == 3
    assert "\r" not in data
    assert _rows(data)[1] == ["ann@example.com", flat]


def test_line_number_of_first_row() -> None:
    """Row 0 is line 2: the header is line 1."""
    assert line_number(0) == 2


def test_line_numbers_match_the_data_lines() -> None:
    """Row i of the input is exactly line `line_number(i)` of data, even with tricky values."""
    rows = [
        {"EmailAddress": f"user{i}@example.com", "Note": f'note {i},\n"quoted"\r\nmore'}
        for i in range(25)
    ]
    data = _decode(encode_add_contacts(rows, LISTS, fields=["Note"]))["data"][0]
    lines = data.split("\n")
    for i, row in enumerate(rows):
        (parsed,) = _rows(lines[line_number(i) - 1])
        assert parsed[0] == row["EmailAddress"]


def test_row_cap() -> None:
    """More rows than the cap raise ActivityTooLargeError before the rows over it are encoded."""
    rows = [{"EmailAddress": f"u{i}@example.com"} for i in range(3)]
    assert encode_add_contacts(rows[:2], LISTS, max_rows=2)
    with pytest.raises(ActivityTooLargeError, match="3 rows"):
        encode_add_contacts(rows, LISTS, max_rows=2)


def test_byte_cap() -> None:
    """An encoded body over the byte cap raises ActivityTooLargeError instead of returning."""
    rows = [{"EmailAddress": f"user{i}@example.com"} for i in range(100)]
    size = len(encode_add_contacts(rows, LISTS))
    assert len(encode_add_contacts(rows, LISTS, max_bytes=size)) == size
    with pytest.raises(ActivityTooLargeError, match="bytes"):
        encode_add_contacts(rows, LISTS, max_bytes=size - 1)


def test_default_row_cap_is_20000() -> None:
    """The default cap is the API's 20,000 contacts per activity."""
    rows = [{"EmailAddress": "a@x.io"}] * 20_001
    with pytest.raises(ActivityTooLargeError):
        encode_add_contacts(rows, LISTS)


def test_too_large_is_a_config_error() -> None:
    """ActivityTooLargeError is a ConfigError: the batch was built wrong, nothing was sent."""
    assert issubclass(ActivityTooLargeError, ConfigError)


@pytest.mark.parametrize(
    ("rows", "lists", "fields", "match"),
    [
        pytest.param([], LISTS, (), "row", id="no-rows"),
        pytest.param([{"EmailAddress": "a@x.io"}], [], (), "list", id="no-lists"),
        pytest.param([{"EmailAddress": "a@x.io"}], LISTS, ["Shoe Size"], "field", id="unknown"),
        pytest.param([{"EmailAddress": "a@x.io"}], LISTS, ["EmailAddress"], "field", id="email"),
    ],
)
def test_invalid_input_refused(
    rows: list[dict[str, str]], lists: list[str], fields: list[str], match: str
) -> None:
    """No rows, no lists, or an unknown or duplicate column raise ValueError."""
    with pytest.raises(ValueError, match=match):
        encode_add_contacts(rows, lists, fields=fields)


def test_every_field_has_a_column() -> None:
    """Every known field encodes, its header named from the import vocabulary."""
    fields = [name for name in COLUMN_NAMES if name != "EmailAddress"]
    row = {"EmailAddress": "a@x.io", **{name: name.lower() for name in fields}}
    data = _decode(encode_add_contacts([row], LISTS, fields=fields))["data"][0]
    header, values = _rows(data)
    assert header == ["Email Address", *(COLUMN_NAMES[name] for name in fields)]
    assert values == ["a@x.io", *(name.lower() for name in fields)]


def test_the_form_encoding_is_urlencode_byte_for_byte() -> None:
    """`form_encode` gives `urllib.parse.urlencode`'s bytes for any text: ASCII safe and
    unsafe characters, spaces, controls, accents, CJK, emoji; and for text of only the
    usual data's characters (its quick path)."""
    import random
    from urllib.parse import urlencode

    from engine.backend.v1.activities import form_encode

    draw = random.Random(1)
    alphabet = "abcXYZ019 _.-~@+,;\n\t\"'%&=/?éüß漢字😀\x00\x7f"

    def text(most: int) -> str:
        return "".join(draw.choice(alphabet) for _ in range(draw.randint(0, most)))

    for _ in range(500):
        form = [(text(8), text(40)) for _ in range(draw.randint(1, 4))]
        assert form_encode(form) == urlencode(form), form
    alphabet = "abcXYZ019 _.-~@,\n"
    for _ in range(500):
        form = [(text(8), text(40)) for _ in range(draw.randint(1, 4))]
        assert form_encode(form) == urlencode(form), form


def test_pairs_as_the_reader_makes_them_encode_the_same_written_as_they_are() -> None:
    """With `cleaned` (the bulk path's contacts, as the reader made them) the body is the
    same as with every value cleaned here: a missing field an empty cell, quotes and commas
    quoted, a value the reader made inert kept as it is."""
    from engine.backend.v1.activities import encode_contact_pairs
    from engine.fields import field_text

    fields = ["FirstName", "LastName", "CompanyName"]
    raw = [
        ("ann@example.com", {"FirstName": "Ann", "CompanyName": 'Acme, "Ltd"'}),
        ("bob@example.com", {}),
        ("cy@example.com", {"LastName": "=1+1", "FirstName": "São"}),
    ]
    cleaned = [(email, {k: field_text(v) for k, v in values.items()}) for email, values in raw]
    assert encode_contact_pairs(cleaned, LISTS, fields=fields, cleaned=True) == (
        encode_contact_pairs(raw, LISTS, fields=fields)
    )
    data = _decode(encode_contact_pairs(cleaned, LISTS, fields=fields, cleaned=True))["data"][0]
    assert _rows(data)[1:] == [
        ["ann@example.com", "Ann", "", 'Acme, "Ltd"'],
        ["bob@example.com", "", "", ""],
        ["cy@example.com", "São", "'=1+1", ""],
    ]
