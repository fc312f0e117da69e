"""The read stage alone: files and iterables to normalised rows or rejections."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError, SourceError
from engine.pipeline.models import Rejected, SourceRow
from engine.pipeline.read import ReadOptions, SourceReader, describe_columns, normalise_email

from .conftest import write_csv, write_jsonl

Item = SourceRow | Rejected


async def read_all(source: Any, **options: Any) -> list[Item]:
    """Every item the reader yields for `source` (a scan first, as `migrate` does)."""
    reader = SourceReader(source, ReadOptions(**options))
    await reader.scan()
    return [item async for item in reader.rows()]


def write_text(path: Path, text: str | bytes) -> Path:
    """Write exact bytes (no newline translation)."""
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def valid(items: Iterable[Item]) -> list[SourceRow]:
    """The rows that were not rejected."""
    return [i for i in items if isinstance(i, SourceRow)]


def rejected(items: Iterable[Item]) -> list[Rejected]:
    """The rejections."""
    return [i for i in items if isinstance(i, Rejected)]


@pytest.mark.parametrize(
    "email_header",
    [
        pytest.param("Email Address", id="email-address"),
        pytest.param("email", id="email"),
        pytest.param("E-mail", id="e-mail"),
        pytest.param("EMAIL_ADDRESS", id="upper-snake"),
        pytest.param(" Email ", id="padded"),
    ],
)
@pytest.mark.parametrize(
    ("first_header", "last_header"),
    [
        pytest.param("First Name", "Last Name", id="import-vocabulary"),
        pytest.param("first_name", "last_name", id="snake"),
        pytest.param("FirstName", "Surname", id="element-and-alias"),
    ],
)
async def test_header_aliases(
    email_header: str, first_header: str, last_header: str, tmp_path: Path
) -> None:
    """Usual header spellings map to the v1 fields, whatever their case or punctuation."""
    path = write_csv(
        tmp_path / "in.csv",
        [email_header, first_header, last_header, "Unrelated"],
        [["Ann@Example.com", "Ann", "Lee", "ignored"]],
    )

    items = await read_all(path)

    assert items == [
        SourceRow((2,), "ann@example.com", {"FirstName": "Ann", "LastName": "Lee"}, ())
    ]


async def test_explicit_column_mapping(tmp_path: Path) -> None:
    """An explicit mapping names columns the aliases do not know, and wins over them."""
    path = write_csv(
        tmp_path / "in.csv",
        ["Correo", "Nombre", "email"],
        [["ana@example.com", "Ana", "other@example.com"]],
    )

    items = await read_all(
        path, columns={"Correo": "EmailAddress", "Nombre": "FirstName", "email": "Note"}
    )

    assert items == [
        SourceRow((2,), "ana@example.com", {"FirstName": "Ana", "Note": "other@example.com"})
    ]


def test_mapping_to_an_unknown_field_is_refused() -> None:
    """A column mapped to something that is no v1 field is a configuration error."""
    with pytest.raises(ConfigError, match="FavouriteColour"):
        ReadOptions(columns={"Colour": "FavouriteColour"})


async def test_lists_column(tmp_path: Path) -> None:
    """The lists column gives each row its list names, split and trimmed, duplicates once."""
    path = write_csv(
        tmp_path / "in.csv",
        ["Email", "Groups"],
        [["a@example.com", "VIP; Customers ;VIP"], ["b@example.com", ""]],
    )

    items = await read_all(path, lists_column="Groups")

    assert [(i.email, i.lists) for i in valid(items)] == [
        ("a@example.com", ("VIP", "Customers")),
        ("b@example.com", ()),
    ]


async def test_missing_lists_column_is_a_source_error(tmp_path: Path) -> None:
    """Naming a lists column the header lacks stops before any row is read."""
    path = write_csv(tmp_path / "in.csv", ["Email"], [["a@example.com"]])

    with pytest.raises(SourceError, match="Groups"):
        await read_all(path, lists_column="Groups")


async def test_no_email_column_names_the_header(tmp_path: Path) -> None:
    """A header without an email column is a `SourceError` that shows the header."""
    path = write_csv(tmp_path / "in.csv", ["Name", "Phone"], [["Ann", "555"]])

    with pytest.raises(SourceError) as caught:
        await read_all(path)

    assert "'Name', 'Phone'" in str(caught.value)
    assert "--column" in str(caught.value)


@pytest.mark.parametrize(
    "delimiter",
    [
        pytest.param(",", id="comma"),
        pytest.param(";", id="semicolon"),
        pytest.param("\t", id="tab"),
        pytest.param("|", id="pipe"),
    ],
)
async def test_delimiters_are_detected(delimiter: str, tmp_path: Path) -> None:
    """Comma, semicolon, tab and pipe files read the same."""
    path = write_csv(
        tmp_path / "in.csv",
        ["Email", "First Name", "City"],
        [["a@example.com", "Ann", "Boston"], ["b@example.com", "Bob", "Lyon"]],
        delimiter=delimiter,
    )

    items = await read_all(path)

    assert items == [
        SourceRow((2,), "a@example.com", {"FirstName": "Ann", "City": "Boston"}),
        SourceRow((3,), "b@example.com", {"FirstName": "Bob", "City": "Lyon"}),
    ]


async def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    """A UTF-8 byte order mark and CRLF line ends are read transparently."""
    path = write_text(
        tmp_path / "in.csv", "\ufeffEmail,First Name\r\na@example.com,Zoë\r\nb@example.com,Bo\r\n"
    )

    items = await read_all(path)

    assert items == [
        SourceRow((2,), "a@example.com", {"FirstName": "Zoë"}),
        SourceRow((3,), "b@example.com", {"FirstName": "Bo"}),
    ]


async def test_latin1_bytes_reject_the_line_and_suggest_the_encoding(tmp_path: Path) -> None:
    """Non-UTF-8 bytes reject that row, naming its line and `--encoding`; others read."""
    path = write_text(
        tmp_path / "in.csv",
        "Email,First Name\na@example.com,Ann\nb@example.com,Müller\nc@example.com,Cy\n".encode(
            "latin-1"
        ),
    )

    items = await read_all(path)

    assert [i.email for i in valid(items)] == ["a@example.com", "c@example.com"]
    (bad,) = rejected(items)
    assert bad.line == 3
    assert "line 3" in bad.reason
    assert "--encoding" in bad.reason


async def test_latin1_file_reads_with_its_encoding(tmp_path: Path) -> None:
    """With `encoding="latin-1"` the same file reads whole and right."""
    path = write_text(
        tmp_path / "in.csv", "Email,First Name\nb@example.com,Müller\n".encode("latin-1")
    )

    items = await read_all(path, encoding="latin-1")

    assert items == [SourceRow((2,), "b@example.com", {"FirstName": "Müller"})]


async def test_quotes_commas_and_embedded_newlines(tmp_path: Path) -> None:
    """Quoted commas and quotes survive, a line break becomes a space (what every path
    writes); line numbers count physical lines."""
    path = write_text(
        tmp_path / "in.csv",
        'Email,City,Note\na@example.com,"Boston, MA","line one\nline two"\n'
        'b@example.com,"Say ""hi""",plain\n',
    )

    items = await read_all(path)

    assert items == [
        SourceRow((2,), "a@example.com", {"City": "Boston, MA", "Note": "line one line two"}),
        SourceRow((4,), "b@example.com", {"City": 'Say "hi"', "Note": "plain"}),
    ]


async def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Blank lines yield nothing, and later rows keep their true line numbers."""
    path = write_text(tmp_path / "in.csv", "Email\na@example.com\n\n,\nb@example.com\n")

    items = await read_all(path)

    assert items == [SourceRow((2,), "a@example.com", {}), SourceRow((5,), "b@example.com", {})]


async def test_empty_file_is_a_source_error(tmp_path: Path) -> None:
    """An empty file cannot be read at all."""
    path = write_text(tmp_path / "in.csv", "")

    with pytest.raises(SourceError, match="empty"):
        await read_all(path)


async def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    """A file with a header and no data rows yields nothing and counts no rows."""
    path = write_text(tmp_path / "in.csv", "Email Address,First Name\n")
    reader = SourceReader(path)

    scan = await reader.scan()

    assert scan.rows == 0
    assert [item async for item in reader.rows()] == []


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    """A path that is not a file is refused at once."""
    with pytest.raises(SourceError, match="does not exist"):
        SourceReader(tmp_path / "nope.csv")


async def test_an_over_long_field_is_left_out_with_a_warning(tmp_path: Path) -> None:
    """A value over the API's limit is left out, naming the field and the limit; the contact
    is still migrated (lists are the job)."""
    path = write_csv(
        tmp_path / "in.csv",
        ["Email", "First Name", "Zip", "Notes"],
        [
            ["a@example.com", "x" * 51, "", ""],
            ["b@example.com", "x" * 50, "1" * 26, ""],
            ["c@example.com", "ok", "12345", "n" * 500],
        ],
    )

    items = await read_all(path)

    assert not rejected(items)
    a, b, c = valid(items)
    assert "FirstName" not in a.fields
    assert a.warnings == (
        "FirstName left out: 51 characters, the API's limit is 50 "
        "(--truncate-long-fields keeps the first 50)",
    )
    assert b.fields == {"FirstName": "x" * 50}
    assert "PostalCode left out: 26 characters, the API's limit is 25" in b.warnings[0]
    assert c.fields["Note"] == "n" * 500
    assert c.warnings == ()


async def test_an_over_long_field_is_cut_when_asked(tmp_path: Path) -> None:
    """With truncate, a value over the limit keeps its first characters, with a warning."""
    path = write_csv(tmp_path / "in.csv", ["Email", "Address"], [["a@example.com", "y" * 68]])
    (row,) = valid(await read_all(path, truncate=True))
    assert row.fields == {"Addr1": "y" * 50}
    assert row.warnings == ("Addr1 cut from 68 to 50 characters",)


async def test_a_nested_json_value_is_never_written_as_a_repr(tmp_path: Path) -> None:
    """A nested JSON value is left out with a warning; a dotted --column maps one part."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"email": "a@example.com", "address": {"street": "1 Main St", "city": "Boston"}},
            {"email": "b@example.com", "phone": ["555-1", "555-2"]},
        ],
    )
    a, b = valid(await read_all(path))
    assert a.fields == {}  # 'address' is Addr1 by name, but nested: left out
    assert "Addr1 left out: 'address' is a nested JSON value" in a.warnings[0]
    assert "HomePhone left out: 'phone' is a nested JSON value" in b.warnings[0]
    mapped = valid(
        await read_all(path, columns={"address.street": "Addr1", "address.city": "City"})
    )
    assert mapped[0].fields == {"Addr1": "1 Main St", "City": "Boston"}
    assert not mapped[0].warnings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("  Ann.Lee@Example.COM ", "ann.lee@example.com", id="trim-and-lower"),
        pytest.param("user@bücher.de", "user@xn--bcher-kva.de", id="idn-domain-to-punycode"),
        pytest.param("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk", id="plus-and-subdomain"),
        pytest.param("o'brien@example.ie", "o'brien@example.ie", id="apostrophe"),
    ],
)
def test_valid_emails_are_normalised(raw: str, expected: str) -> None:
    """Emails are trimmed and lower-cased; an internationalised domain becomes punycode."""
    assert normalise_email(raw) == (expected, "")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param("", "no email", id="empty"),
        pytest.param("not-an-email", "invalid", id="no-at"),
        pytest.param("two@@example.com", "invalid", id="two-ats"),
        pytest.param("a b@example.com", "invalid", id="space"),
        pytest.param("trailing.dot@example.", "invalid", id="trailing-dot"),
        pytest.param("nodomain@localhost", "invalid", id="no-tld"),
        pytest.param("jö@example.com", "ASCII local parts only", id="non-ascii-local-part"),
        pytest.param("a" * 75 + "@example.com", "longer than 80", id="too-long"),
    ],
)
def test_invalid_emails_are_refused_with_a_reason(raw: str, reason: str) -> None:
    """Invalid addresses give no email and a reason a user can act on."""
    email, why = normalise_email(raw)
    assert email == ""
    assert reason in why


async def test_invalid_emails_become_rejected_rows(tmp_path: Path) -> None:
    """Rows with invalid addresses are `Rejected` with the address as given."""
    path = write_csv(
        tmp_path / "in.csv",
        ["Email"],
        [["ok@example.com"], ["jö@example.com"], ["bad@@example.com"], ["user@bücher.de"]],
    )

    items = await read_all(path)

    assert [i.email for i in valid(items)] == ["ok@example.com", "user@xn--bcher-kva.de"]
    assert [(r.line, r.email) for r in rejected(items)] == [
        (3, "jö@example.com"),
        (4, "bad@@example.com"),
    ]


async def test_jsonl_rows_and_bad_lines(tmp_path: Path) -> None:
    """JSON Lines: objects are rows; bad JSON, non-objects, no email are rejected by line."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"email": "A@example.com", "first_name": "Ann", "lists": ["VIP", "Customers"]},
            "{not json",
            "[1, 2]",
            "",
            {"Email Address": "b@example.com", "Last Name": "Bee", "age": 40},
            {"name": "nobody"},
        ],
    )

    items = await read_all(path, lists_column="lists")

    assert valid(items) == [
        SourceRow((1,), "a@example.com", {"FirstName": "Ann"}, ("VIP", "Customers")),
        SourceRow((5,), "b@example.com", {"LastName": "Bee"}),
    ]
    reasons = {r.line: r.reason for r in rejected(items)}
    assert set(reasons) == {2, 3, 6}
    assert "not JSON" in reasons[2]
    assert "not a JSON object" in reasons[3]
    assert "no email column" in reasons[6]


async def test_duplicates_far_apart_in_a_file_are_coalesced(tmp_path: Path) -> None:
    """Far-apart rows of one email coalesce: all lines, lists unioned, later values win."""
    rows = [["Dup@Example.com", "Old", "Keep", "A"]]
    rows += [[f"other{i}@example.com", "", "", "A"] for i in range(3000)]
    rows += [["dup@example.com", "New", "", "B"]]
    rows += [[f"tail{i}@example.com", "", "", "A"] for i in range(10)]
    rows += [[" DUP@example.COM", "", "", "A;C"]]
    path = write_csv(tmp_path / "in.csv", ["Email", "First Name", "Last Name", "Lists"], rows)

    items = await read_all(path, lists_column="Lists")

    dups = [i for i in valid(items) if i.email == "dup@example.com"]
    assert dups == [
        SourceRow(
            (2, 3003, 3014),
            "dup@example.com",
            {"FirstName": "New", "LastName": "Keep"},
            ("A", "B", "C"),
        )
    ]
    assert len(items) == 3011
    assert sorted(line for i in valid(items) for line in i.lines) == list(range(2, 3015))


async def test_sync_iterable(tmp_path: Path) -> None:
    """A plain iterable is numbered from 1, and a non-mapping item is rejected."""
    source: list[Any] = [
        {"email": "a@example.com", "FirstName": "Ann"},
        "not a mapping",
        {"E-mail": "B@example.com"},
    ]

    items = await read_all(source)

    assert items[0] == SourceRow((1,), "a@example.com", {"FirstName": "Ann"})
    assert isinstance(items[1], Rejected)
    assert items[1].line == 2
    assert "not a mapping" in items[1].reason
    assert items[2] == SourceRow((3,), "b@example.com", {})


async def test_async_iterable() -> None:
    """An async iterable is read as it produces items; duplicates are left to the planner."""

    async def produce() -> AsyncIterator[Mapping[str, Any]]:
        for i in range(3):
            yield {"email": f"user{i}@example.com", "first_name": f"U{i}"}
        yield {"email": "user0@example.com", "first_name": "Again"}

    items = await read_all(produce())

    assert [(i.lines, i.email) for i in valid(items)] == [
        ((1,), "user0@example.com"),
        ((2,), "user1@example.com"),
        ((3,), "user2@example.com"),
        ((4,), "user0@example.com"),
    ]


async def test_large_sync_iterable_is_read_whole() -> None:
    """A long iterable is read whole, in order (the reader yields to the loop as it goes)."""
    items = await read_all({"email": f"n{i}@example.com"} for i in range(2000))

    assert [i.lines[0] for i in valid(items)] == list(range(1, 2001))


EXCEL_UNICODE_TEXT = (
    "Email Address\tFirst Name\tNotes\r\n"
    "jane@example.com\tJané\tA, B; C\r\n"
    "joe@example.com\tJoe\t\r\n"
)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("encoding", [None, "utf-16"], ids=["detected", "--encoding-utf-16"])
async def test_excel_unicode_text_reads_by_its_byte_order_mark(
    tmp_path: Path, codec: str, encoding: str | None
) -> None:
    """Excel's "Unicode Text" (UTF-16 with a BOM, tab-separated) and UTF-32 read like UTF-8,
    whatever --encoding says: the byte-order mark decides."""
    data = EXCEL_UNICODE_TEXT.encode(codec)
    if codec == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    path = write_text(tmp_path / "export.txt", data)
    options = {"encoding": encoding} if encoding else {}
    items = await read_all(path, **options)
    assert not rejected(items)
    rows = valid(items)
    assert [r.email for r in rows] == ["jane@example.com", "joe@example.com"]
    assert rows[0].fields == {"FirstName": "Jané", "Note": "A, B; C"}
    assert [r.lines for r in rows] == [(2,), (3,)]


async def test_a_json_array_is_read_item_by_item(tmp_path: Path) -> None:
    """A `.json` file holding an array (an "export as JSON") gives one row per item, numbered
    from 1; brackets and commas inside strings do not confuse it; a non-object is rejected."""
    items_in = [{"email": f"p{i}@example.com", "first_name": 'Ann, "x" ][ {'} for i in range(3000)]
    path = write_text(
        tmp_path / "export.json", json.dumps([*items_in, 7, {"email": "bad"}], indent=2)
    )
    items = await read_all(path)
    rows = valid(items)
    assert len(rows) == 3000
    assert rows[0].email == "p0@example.com"
    assert rows[0].fields == {"FirstName": 'Ann, "x" ][ {'}
    assert rows[-1].lines == (3000,)
    assert [(r.line, r.reason) for r in rejected(items)] == [
        (3001, "item 3001 is not a JSON object"),
        (3002, "invalid email address 'bad'"),
    ]


async def test_a_broken_json_array_is_a_source_error_naming_the_item(tmp_path: Path) -> None:
    """An array cut short (or broken inside an item) stops before any write, saying after
    which item."""
    path = write_text(tmp_path / "cut.json", '[{"email": "a@example.com"}, {"email": "b@exa')
    with pytest.raises(SourceError, match=r"not a valid JSON array after item 1"):
        await read_all(path)


async def test_no_email_column_lists_every_header(tmp_path: Path) -> None:
    """Without an email column, the error names every header, not the first dozen."""
    header = [f"Column {i}" for i in range(20)]
    path = write_csv(tmp_path / "in.csv", header, [[str(i) for i in range(20)]])
    with pytest.raises(SourceError) as caught:
        await read_all(path)
    assert "'Column 0'" in str(caught.value)
    assert "'Column 19'" in str(caught.value)


@pytest.mark.parametrize(
    ("header", "element"),
    [
        pytest.param("E-mail 1 - Value", "EmailAddress", id="google-contacts-email"),
        pytest.param("Phone Number", "HomePhone", id="mailchimp-hubspot-phone"),
        pytest.param("Street Address", "Addr1", id="hubspot-street"),
        pytest.param("State/Region", "StateName", id="hubspot-state"),
        pytest.param("Country/Region", "CountryCode", id="hubspot-country"),
    ],
)
async def test_headers_of_common_exports_are_recognised(
    tmp_path: Path, header: str, element: str
) -> None:
    """Headers that Google Contacts, Mailchimp and HubSpot export map to their fields."""
    columns = [header] if element == "EmailAddress" else ["Email", header]
    values = ["a@example.com"] if element == "EmailAddress" else ["a@example.com", "X"]
    (row,) = valid(await read_all(write_csv(tmp_path / "in.csv", columns, [values])))
    assert row.email == "a@example.com"
    if element != "EmailAddress":
        assert row.fields == {element: "X"}


def test_the_column_description_names_fed_and_ignored_columns(tmp_path: Path) -> None:
    """Before a run: which column feeds which field, and which columns are ignored."""
    path = write_csv(
        tmp_path / "in.csv", ["E-mail 1 - Value", "Given Name", "Birthday", "Groups"], []
    )
    text = describe_columns(path, ReadOptions(lists_column="Groups"))
    assert text == (
        "columns: 'E-mail 1 - Value' -> EmailAddress, 'Given Name' -> FirstName, "
        "'Groups' -> lists; ignored: 'Birthday'"
    )
    items = write_jsonl(tmp_path / "in.jsonl", [{"email": "a@example.com", "misc": {"x": 1}}])
    assert describe_columns(items) == "columns: 'email' -> EmailAddress; ignored: 'misc', 'misc.x'"


async def test_the_backends_field_limits_decide_what_is_kept(tmp_path: Path) -> None:
    """With a backend's limits, a field it does not take is left out and one over its limit
    is left out, each with a warning; the row is kept."""
    path = write_text(
        tmp_path / "in.csv",
        "Email,First Name,Email Type,City\na@example.com,Anne,HTML,Springfield\n",
    )

    items = await read_all(path, field_limits={"FirstName": 10, "City": 5})

    assert len(items) == 1
    row = items[0]
    assert isinstance(row, SourceRow)
    assert row.fields == {"FirstName": "Anne"}
    assert row.warnings == (
        "EmailType left out: the API does not take it on every path",
        "City left out: 11 characters, the API's limit is 5 (--truncate-long-fields keeps "
        "the first 5)",
    )


async def test_the_first_pass_counts_what_the_second_pass_reads(tmp_path: Path) -> None:
    """The first pass reads only emails and lists, yet finds the rows, rejections, list names
    and duplicates that the full read of every row gives."""
    long_name = "x" * 200
    source = write_text(
        tmp_path / "mixed.csv",
        "Email,First Name,Lists,Note\n"
        f"A@Example.com ,Ann,Alpha; Beta ,{long_name}\n"
        "not-an-email,Bob,Alpha,\n"
        "short@example.com\n"
        "\n"
        ",Nobody,Alpha,\n"
        "a@example.com,Ann again,Gamma;;Alpha,\n"
        '"b@example.com","B, ""quoted""","Beta",\n',
    )
    reader = SourceReader(source, ReadOptions(lists_column="Lists"))
    scan = await reader.scan()
    full = list(reader._file_rows())

    good = [item for item in full if isinstance(item, SourceRow)]
    assert scan.rows == len(full) == 6
    assert scan.rejected == len(full) - len(good) == 2
    assert scan.list_names == {name for row in good for name in row.lists}
    assert scan.list_names == {"Alpha", "Beta", "Gamma"}
    assert scan.duplicates == {hash("a@example.com"): 2}


@pytest.mark.parametrize("kind", ["file", "iterable"])
async def test_chunks_give_the_rows_in_order_at_most_chunk_at_a_time(
    tmp_path: Path, kind: str
) -> None:
    """`chunks` gives what `rows` gives, in order, in lists of at most `CHUNK` rows (2,501
    rows with a bad email and a duplicate, coalesced from a file, not from an iterable)."""
    from engine.pipeline.read import CHUNK

    records = [{"email": f"c{n:05d}@example.com", "first_name": f"N{n}"} for n in range(2500)]
    records[10]["email"] = "not-an-email"
    records.append({"email": "c00003@example.com", "first_name": "Again"})
    source: Any = write_jsonl(tmp_path / "s.jsonl", records) if kind == "file" else records
    reader = SourceReader(source)
    await reader.scan()
    chunks = [chunk async for chunk in reader.chunks()]
    total = 2500 if kind == "file" else 2501
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, total - 2 * CHUNK]
    items = [item for chunk in chunks for item in chunk]
    assert items == await read_all(source)
    assert len(rejected(items)) == 1
    assert len({row.email for row in valid(items)}) == 2499


_LINES_CASES = {
    "bom-crlf-no-final-newline": "\ufeffEmail,First Name\r\na@example.com,Ann\r\n"
    + "".join(f"c{n}@example.com,N{n}\r\n" for n in range(40))
    + 'q@example.com,"two\nlines"\r\nlast@example.com,Lé',
    "bare-cr-in-a-field": "email,note\n" + "".join(f"c{n}@example.com,x\ry\n" for n in range(30)),
}


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
@pytest.mark.parametrize("case", sorted(_LINES_CASES))
def test_csv_lines_are_the_files_lines_as_decoded_lines_gives_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, block: int
) -> None:
    """`csv_lines`, read in blocks of any size, gives each physical line's text as
    `decoded_lines` does (a BOM dropped, CRLF, a bare CR and a quoted newline kept, the
    last line without its newline) and feeds the digest the same bytes."""
    import hashlib

    from engine.pipeline import read

    monkeypatch.setattr(read, "_BLOCK", block)
    path = write_text(tmp_path / "s.csv", _LINES_CASES[case])
    expected_digest, digest = hashlib.sha256(), hashlib.sha256()
    expected = [text for _, text, _ in read.decoded_lines(path, "utf-8", expected_digest)]
    errors: dict[int, str] = {}
    assert list(read.csv_lines(path, "utf-8", digest, errors)) == expected
    assert digest.hexdigest() == expected_digest.hexdigest()
    assert errors == {}


@pytest.mark.parametrize("block", [16, 1 << 20])
def test_a_line_that_does_not_decode_has_its_error_and_the_others_their_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """A line with bytes that are not UTF-8 gets the error `decoded_lines` gives it, under
    its line number, and its text decoded with replacements; the lines around it (in the
    same block or not) are read as they are."""
    from engine.pipeline import read

    monkeypatch.setattr(read, "_BLOCK", block)
    data = b"email,name\n" + b"".join(b"c%d@example.com,N\n" % n for n in range(6))
    data += b"bad@example.com,Jos\xe9\n" + b"z@example.com,Z\n"
    path = write_text(tmp_path / "s.csv", data)
    reference = list(read.decoded_lines(path, "utf-8"))
    errors: dict[int, str] = {}
    assert list(read.csv_lines(path, "utf-8", None, errors)) == [t for _, t, _ in reference]
    assert errors == {n: e for n, _, e in reference if e}
    assert list(errors) == [8]


def test_csv_lines_of_a_utf16_file_are_its_decoded_lines(tmp_path: Path) -> None:
    """A UTF-16 file (Excel's "Unicode Text") gives the lines `decoded_lines` gives."""
    from engine.pipeline import read

    text = "Email\tFirst Name\r\nann@example.com\tAnn\r\nbob@example.com\tBöb\r\n"
    path = write_text(tmp_path / "s.txt", codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    expected = [t for _, t, _ in read.decoded_lines(path, "utf-8")]
    assert list(read.csv_lines(path, "utf-8")) == expected
    assert len(expected) == 3
