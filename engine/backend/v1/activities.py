"""The body of an `ADD_CONTACTS` bulk activity: form-encoded, with CSV-like `data`.

See the API doc §6.2: one `activityType`, one `data` (a header line, then one line per
contact, values containing a comma wrapped in double quotes), one `lists=` per target list
(the http form of the list URI). Line numbers in the server's `Error`s count the header as
line 1, so row `i` (0-based) of `rows` is line `i + 2`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence

from engine.backend._bulk import slices
from engine.errors import ActivityTooLargeError
from engine.fields import field_text

__all__ = [
    "COLUMN_NAMES",
    "MAX_ACTIVITY_BYTES",
    "MAX_ACTIVITY_ROWS",
    "ActivityTooLargeError",
    "encode_add_contacts",
    "encode_contact_pairs",
    "line_number",
]

#: The API's documented cap on contacts in one request (API doc §6.4, P27).
MAX_ACTIVITY_ROWS = 20_000
#: A precaution: the v1 byte limit is unknown; v3 documents 4 MB (API doc §6.4).
MAX_ACTIVITY_BYTES = 4_000_000

#: v1 contact element -> the column name of the import vocabulary (API doc §6.2).
COLUMN_NAMES: dict[str, str] = {
    "EmailAddress": "Email Address",
    "FirstName": "First Name",
    "MiddleName": "Middle Name",
    "LastName": "Last Name",
    "JobTitle": "Job Title",
    "CompanyName": "Company Name",
    "HomePhone": "Home Phone",
    "WorkPhone": "Work Phone",
    "Addr1": "Address Line 1",
    "Addr2": "Address Line 2",
    "Addr3": "Address Line 3",
    "City": "City",
    "StateCode": "US State/CA Province",
    "StateName": "Other State/Province",
    "CountryCode": "Country",
    "PostalCode": "Zip/Postal Code",
    "SubPostalCode": "Sub Zip/Postal Code",
    "Note": "Notes",
    **{f"CustomField{n}": f"Custom field {n}" for n in range(1, 16)},
}


def line_number(row_index: int) -> int:
    """The `LineNumber` the server reports for row `row_index` (0-based) of the data."""
    return row_index + 2


#: What `urllib.parse.quote_plus` leaves as it is; every other byte is `%XX`, a space `+`.
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_QUOTE_TABLE = {b: "+" if b == 0x20 else f"%{b:02X}" for b in range(256) if b not in _SAFE_BYTES}


#: Anything but what the usual activity data holds: safe characters, `@`, `,`, line breaks
#: and spaces.
_UNUSUAL = re.compile(r"[^A-Za-z0-9_.~\-@,\n ]")


def _quote(text: str) -> str:
    """`quote_plus(text)`. Text of safe characters and the four that every activity's data
    holds (an email's `@`, the CSV's commas and line breaks, spaces) is quoted by four
    `str.replace`, seven times faster than the per-character table that any other text
    takes (a search for another character costs less than the table)."""
    if _UNUSUAL.search(text) is None:
        return text.replace("@", "%40").replace(",", "%2C").replace("\n", "%0A").replace(" ", "+")
    return text.encode("utf-8").decode("latin-1").translate(_QUOTE_TABLE)


def form_encode(form: Sequence[tuple[str, str]]) -> str:
    """`urllib.parse.urlencode(form)`, byte for byte, at C speed: its `quote_plus` loops in
    Python over every byte of a value, and an activity's data is megabytes (a third of
    the CPU of encoding one). Each value's UTF-8 bytes are mapped by one `str.translate`."""
    return "&".join(f"{_quote(key)}={_quote(value)}" for key, value in form)


def encode_add_contacts(
    rows: Iterable[Mapping[str, str]],
    list_uris: Sequence[str],
    *,
    fields: Sequence[str] = (),
    max_rows: int = MAX_ACTIVITY_ROWS,
    max_bytes: int = MAX_ACTIVITY_BYTES,
) -> bytes:
    """Encode an `ADD_CONTACTS` activity body.

    Args:
        rows: one mapping per contact, keyed by v1 element name; `EmailAddress` required.
        list_uris: the target lists (id URIs, http form), at least one.
        fields: the other element names to send as columns; only columns present are
            overwritten by the server, so send only what the source provides.
        max_rows: the row cap.
        max_bytes: the cap on the encoded body, checked after encoding.

    Raises:
        ActivityTooLargeError: over either cap; nothing is sent.
        ValueError: no rows, no lists, or an unknown field.
    """
    pairs = ((row.get("EmailAddress") or "", row) for row in rows)
    return encode_contact_pairs(
        pairs, list_uris, fields=fields, max_rows=max_rows, max_bytes=max_bytes
    )


def encode_contact_pairs(
    contacts: Iterable[tuple[str, Mapping[str, str]]],
    list_uris: Sequence[str],
    *,
    fields: Sequence[str] = (),
    max_rows: int = MAX_ACTIVITY_ROWS,
    max_bytes: int = MAX_ACTIVITY_BYTES,
    cleaned: bool = False,
) -> bytes:
    """`encode_add_contacts` of (email, fields) pairs, read once, in order.

    The data is written and form-encoded a thousand lines at a time (quoting is per
    character, so the pieces join into the same body): an activity of 20,000 contacts is
    never held as rows, nor as one unquoted text beside the quoted one.

    `cleaned`: the pairs are as the reader makes them (the email normalised, each value
    `field_text`'s), and are written as they are; otherwise that is done here.
    """
    if not list_uris:
        raise ValueError("an activity needs at least one list")
    unknown = [f for f in fields if f not in COLUMN_NAMES or f == "EmailAddress"]
    if unknown:
        raise ValueError(f"no activity column for fields {unknown}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # quotes values with commas or quotes
    writer.writerow([COLUMN_NAMES[n] for n in ("EmailAddress", *fields)])
    pieces = ["activityType=ADD_CONTACTS&data="]
    count = 0
    for chunk in slices(contacts):
        count += len(chunk)
        if count > max_rows:
            raise ActivityTooLargeError(
                f"at least {count} rows: over the cap of {max_rows} per activity"
            )
        if cleaned:  # a missing field is None, which csv writes as an empty cell
            writer.writerows([email, *map(values.get, fields)] for email, values in chunk)
        else:
            writer.writerows(
                [" ".join(email.splitlines()), *(field_text(values.get(n) or "") for n in fields)]
                for email, values in chunk
            )
        pieces.append(_quote(text.getvalue()))
        text.seek(0)
        text.truncate()
    if not count:
        raise ValueError("an activity needs at least one row")
    pieces[-1] = pieces[-1].removesuffix("%0A")  # no line break after the last line
    pieces += [f"&lists={_quote(uri)}" for uri in list_uris]
    body = "".join(pieces).encode("ascii")
    if len(body) > max_bytes:
        raise ActivityTooLargeError(
            f"the activity body is {len(body)} bytes, over the cap of {max_bytes}"
        )
    return body
