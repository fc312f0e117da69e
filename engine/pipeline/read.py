"""The read stage: sources to validated rows, one `SourceRow` per email, or `Rejected`.

Sources: a CSV file (any common delimiter; UTF-8, or UTF-16/32 by their byte-order mark,
or another encoding when asked), a JSON file (an array of objects, read one item at a
time, or JSON Lines), or any (async) iterable of mappings. Columns are recognised
by their usual header names, case-insensitively (`Email Address`, `email`, `E-mail`,
`First Name`, `first_name`, … the v1 field set), or by an explicit mapping.

Files are read twice. The first pass (`scan`) validates every row, collects the list names
of the lists column and finds the emails that occur more than once, keeping only an 8-byte
hash per row; the second pass holds the rows of a duplicated email until its last
occurrence and yields them coalesced, so memory stays flat and each email is planned once
(invariant I5). Iterables are read once; the planner coalesces their duplicates instead.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from array import array
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import anyio.lowlevel
import anyio.to_thread

from engine.errors import ConfigError, SourceError
from engine.fields import field_text
from engine.pipeline.models import Rejected, SourceRow

__all__ = [
    "FIELD_LIMITS",
    "ReadOptions",
    "Scan",
    "Source",
    "SourceReader",
    "csv_lines",
    "decoded_lines",
    "describe_columns",
    "normalise_email",
    "sniff_dialect",
]

#: What `migrate` accepts as a source.
Source = str | Path | Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]]

EMAIL = "EmailAddress"
LISTS = "__lists__"
#: The most rows `SourceReader.chunks` gives at once.
CHUNK = 1024

#: v1 element -> the header spellings that mean it, compared without case, space or
#: punctuation. The first spelling is the import vocabulary's own (API doc §6.2).
_ALIASES: dict[str, tuple[str, ...]] = {
    EMAIL: (
        "Email Address",
        "email",
        "e-mail",
        "e-mail address",
        "mail",
        "email_address",
        "E-mail 1 - Value",  # Google Contacts
        "Email 1",
    ),
    "EmailType": ("Email Type", "format"),
    "FirstName": ("First Name", "first_name", "firstname", "given name", "forename"),
    "MiddleName": ("Middle Name", "middle_name", "middle initial"),
    "LastName": ("Last Name", "last_name", "surname", "family name"),
    "JobTitle": ("Job Title", "job_title", "position"),
    "CompanyName": ("Company Name", "company", "organization", "organisation"),
    "HomePhone": ("Home Phone", "phone", "home_phone", "telephone", "Phone Number"),
    "WorkPhone": ("Work Phone", "work_phone", "business phone"),
    "Addr1": ("Address Line 1", "address", "address 1", "addr1", "street", "Street Address"),
    "Addr2": ("Address Line 2", "address 2", "addr2"),
    "Addr3": ("Address Line 3", "address 3", "addr3"),
    "City": ("City", "town"),
    "StateCode": (
        "US State/CA Province",
        "state",
        "state code",
        "province",
        "State/Province (US/Canada)",
    ),
    "StateName": ("Other State/Province", "state name", "region", "State/Region"),
    "CountryCode": ("Country", "country code", "Country/Region"),
    "CountryName": ("Country Name",),
    "PostalCode": ("Zip/Postal Code", "zip", "zip code", "postal code", "postcode"),
    "SubPostalCode": ("Sub Zip/Postal Code", "zip4", "zip+4"),
    "Note": ("Notes", "note", "comments"),
    **{f"CustomField{n}": (f"Custom field {n}", f"custom{n}") for n in range(1, 16)},
}


def _norm(header: str) -> str:
    return re.sub(r"[^0-9a-z]", "", header.lower())


_BY_HEADER: dict[str, str] = {
    _norm(alias): element for element, aliases in _ALIASES.items() for alias in (element, *aliases)
}

#: Field length limits. The v1 numbers are [U] (API doc §4.4): these follow v2's 50 and the
#: simulator's defaults, so an over-long value is a `rejected` row, not a 400 mid-run.
FIELD_LIMITS: dict[str, int] = {
    EMAIL: 80,
    "PostalCode": 25,
    "SubPostalCode": 25,
    "Note": 500,
    "EmailType": 4,
}
_DEFAULT_LIMIT = 50

_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_RE = re.compile(rf"^{_LOCAL}@(?:{_LABEL}\.)+(?:[A-Za-z]{{2,63}}|xn--[A-Za-z0-9-]{{1,59}})$")


def normalise_email(raw: str) -> tuple[str, str]:
    """Return `(email, "")` trimmed, lower-cased and valid, or `("", reason)`.

    An internationalised domain is converted to its ASCII (punycode) form; a non-ASCII
    local part is refused, since the v1 API predates SMTPUTF8.
    """
    email = raw.strip().lower()
    if email.isascii() and len(email) <= FIELD_LIMITS[EMAIL] and _EMAIL_RE.match(email):
        return email, ""  # the usual case (the pattern allows one `@` only)
    if not email:
        return "", "no email address"
    if email.count("@") != 1:
        return "", f"invalid email address {raw.strip()!r}"
    local, domain = email.split("@")
    if not local.isascii():
        return "", f"invalid email address {raw.strip()!r}: the API accepts ASCII local parts only"
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return "", f"invalid email address {raw.strip()!r}: bad internationalised domain"
        email = f"{local}@{domain}"
    if len(email) > FIELD_LIMITS[EMAIL]:
        return "", f"email address longer than {FIELD_LIMITS[EMAIL]} characters"
    if not _EMAIL_RE.match(email):
        return "", f"invalid email address {raw.strip()!r}"
    return email, ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadOptions:
    """How to read a source.

    Attributes:
        columns: explicit source column -> v1 element name (`EmailAddress`, `FirstName`,
            …), or `lists` for the per-row lists column; wins over header recognition.
        lists_column: the source column holding each row's list names, if any.
        list_separator: separates list names in the lists column.
        encoding: the text encoding of a file ("utf-8" also accepts a BOM).
        format: "csv", "jsonl", or None to decide by the file extension.
        truncate: cut a field over the API's limit to the limit instead of leaving it out
            (either way the contact goes to its lists, with a warning on its outcome).
        field_limits: the fields the API writes, with the longest value each accepts (the
            backend's `Capabilities.fields`, set by `MigrationConfig.for_backend`); a field
            it does not write is left out with a warning. None: every known field, with
            `FIELD_LIMITS`.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    lists_column: str | None = None
    list_separator: str = ";"
    encoding: str = "utf-8"
    format: str | None = None
    truncate: bool = False
    field_limits: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        for column, element in self.columns.items():
            if element != "lists" and element not in _ALIASES:
                known = ", ".join(sorted(_ALIASES))
                raise ConfigError(
                    f"column {column!r} maps to {element!r}, which is no v1 field; use one "
                    f"of: {known}, or 'lists'"
                )
        if self.format not in (None, "csv", "jsonl"):
            raise ConfigError(f"format must be 'csv' or 'jsonl', not {self.format!r}")
        try:
            "".encode(self.encoding)
        except LookupError as exc:
            raise ConfigError(f"unknown encoding {self.encoding!r}") from exc


@dataclass(slots=True)
class Scan:
    """What the first pass over a file found.

    Attributes:
        rows: data rows read.
        rejected: rows rejected.
        list_names: the names met in the lists column.
        duplicates: hash -> number of rows, for the emails seen more than once.
        digest: SHA-256 of the file's bytes ("" for iterables).
    """

    rows: int = 0
    rejected: int = 0
    list_names: set[str] = field(default_factory=set)
    duplicates: dict[int, int] = field(default_factory=dict)
    digest: str = ""


class _Columns:
    """A header, mapped once: position -> element (or LISTS)."""

    def __init__(
        self, header: Iterable[str], options: ReadOptions, *, lists_required: bool = True
    ) -> None:
        explicit = {_norm(k): v for k, v in options.columns.items()}
        lists_column = _norm(options.lists_column) if options.lists_column else None
        self.names = [str(h) for h in header]
        self.mapping: dict[int, str] = {}
        for position, name in enumerate(self.names):
            key = _norm(name)
            element = explicit.get(key)
            if element == "lists" or (lists_column is not None and key == lists_column):
                self.mapping[position] = LISTS
            elif element is not None:
                self.mapping[position] = element
            elif key in _BY_HEADER and _BY_HEADER[key] not in explicit.values():
                # A field mapped explicitly takes no other column by its usual name.
                self.mapping[position] = _BY_HEADER[key]
        #: The positions the first pass reads: the email's and the lists'.
        self.keys_at = [p for p, e in self.mapping.items() if e in (EMAIL, LISTS)]
        found = set(self.mapping.values())
        if EMAIL not in found:
            shown = ", ".join(repr(n) for n in self.names) or "no columns"
            raise SourceError(
                f"no email column: the header has {shown}. Name one 'Email Address' or "
                "'email', or map it with --column 'HEADER=EmailAddress'"
            )
        if options.lists_column and LISTS not in found and lists_required:
            raise SourceError(f"the lists column {options.lists_column!r} is not in the header")

    def describe(self) -> str:
        """Which column feeds which field, and which columns are ignored, in one line."""
        fed = ", ".join(
            f"{self.names[p]!r} -> {'lists' if e == LISTS else e}" for p, e in self.mapping.items()
        )
        ignored = [repr(n) for p, n in enumerate(self.names) if p not in self.mapping]
        return f"columns: {fed}" + (f"; ignored: {', '.join(ignored)}" if ignored else "")


def describe_columns(source: str | Path, options: ReadOptions | None = None) -> str:
    """For a file source: which column feeds which field and which are ignored (the header
    of a CSV file, the first item of a JSON file), as shown before a run starts.

    Raises:
        SourceError: the file has no email column (every header is named).
    """
    options = options or ReadOptions()
    reader = SourceReader(source, options)
    assert reader.path is not None
    if reader.format == "jsonl":  # the first item's keys (later items may have others)
        first = _first_json_keys(reader.path, options)
        try:
            return _Columns(first, options, lists_required=False).describe() if first else ""
        except SourceError as exc:  # each such item is rejected, with this reason
            return f"the first item: {exc}"
    lines = decoded_lines(reader.path, options.encoding)
    head = [text for _, text, _ in islice(lines, 50)]
    header = next(csv.reader(head, sniff_dialect("".join(head))), [])
    return _Columns(header, options).describe()


def _first_json_keys(path: Path, options: ReadOptions) -> list[str]:
    if _starts_with_bracket(path, options.encoding):
        for value in _json_array_items(path, options, None):
            return list(_flat(value)) if isinstance(value, Mapping) else []
        return []
    for _, text, _ in decoded_lines(path, options.encoding):
        if text.strip():
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return []
            return list(_flat(value)) if isinstance(value, Mapping) else []
    return []


def _row(
    line: int, values: Mapping[str, Any] | list[str], columns: _Columns, options: ReadOptions
) -> SourceRow | Rejected:
    if isinstance(values, list):
        return _csv_row(line, values, columns, options)
    fields: dict[str, str] = {}
    lists: tuple[str, ...] = ()
    raw_email = ""
    warnings: list[str] = []
    for position, element in columns.mapping.items():
        value = values.get(columns.names[position])
        if value is None:
            continue
        if element == LISTS:
            names = value if isinstance(value, list) else str(value).split(options.list_separator)
            lists = tuple(dict.fromkeys(n.strip() for n in map(str, names) if str(n).strip()))
            continue
        if isinstance(value, dict | list):  # never a Python repr on a contact
            if element == EMAIL:
                return Rejected(line, "", "the email is a nested JSON value")
            warnings.append(
                f"{element} left out: {columns.names[position]!r} is a nested JSON value "
                f"(map one part of it with --column '{columns.names[position]}.KEY={element}')"
            )
            continue
        text = str(value).strip()
        if element == EMAIL:
            raw_email = text
        elif text:
            _add_field(fields, element, text, options, warnings)
    email, reason = normalise_email(raw_email)
    if reason:
        return Rejected(line, raw_email, reason)
    return SourceRow((line,), email, fields, lists, tuple(warnings))


def _csv_row(
    line: int, values: list[str], columns: _Columns, options: ReadOptions
) -> SourceRow | Rejected:
    """`_row` for a CSV record: every value a `str` (of a row that may be short)."""
    fields: dict[str, str] = {}
    lists: tuple[str, ...] = ()
    raw_email = ""
    warnings: list[str] = []
    count = len(values)
    for position, element in columns.mapping.items():
        if position >= count:
            continue
        if element == LISTS:
            names = (n.strip() for n in values[position].split(options.list_separator))
            lists = tuple(dict.fromkeys(n for n in names if n))
            continue
        text = values[position].strip()
        if element == EMAIL:
            raw_email = text
        elif text:
            _add_field(fields, element, text, options, warnings)
    email, reason = normalise_email(raw_email)
    if reason:
        return Rejected(line, raw_email, reason)
    return SourceRow((line,), email, fields, lists, tuple(warnings))


def _add_field(
    fields: dict[str, str], element: str, text: str, options: ReadOptions, warnings: list[str]
) -> None:
    """Put a field's non-empty text on a row as every path writes it, or say why not."""
    text = field_text(text)  # what every path writes; the limit applies to it
    limits = options.field_limits
    if limits is not None and element not in limits:
        # Written by neither path, or by one only: left out, so a row gives the same contact
        # whichever path it takes.
        warnings.append(f"{element} left out: the API does not take it on every path")
        return
    limit = (limits or FIELD_LIMITS).get(element, _DEFAULT_LIMIT)
    if len(text) > limit:
        # Lists are the job: the contact goes to them without this field (or with it cut,
        # when asked), and the outcome says so.
        if not options.truncate:
            warnings.append(
                f"{element} left out: {len(text)} characters, the API's limit is "
                f"{limit} (--truncate-long-fields keeps the first {limit})"
            )
            return
        warnings.append(f"{element} cut from {len(text)} to {limit} characters")
        text = text[:limit].rstrip()
    fields[element] = text


#: Builds a row from its line number, values, columns and options: `_row`, or `_scan_row`.
RowMaker = Callable[
    [int, "Mapping[str, Any] | list[str]", "_Columns", "ReadOptions"], "SourceRow | Rejected"
]


def _scan_row(
    line: int, values: Mapping[str, Any] | list[str], columns: _Columns, options: ReadOptions
) -> SourceRow | Rejected:
    """`_row` for the first pass, which needs a row's email and lists only: a CSV row's
    fields are neither cleaned nor checked (no field rejects a row; the second pass warns)."""
    if not isinstance(values, list):
        return _row(line, values, columns, options)
    raw_email = ""
    lists: tuple[str, ...] = ()
    for position in columns.keys_at:
        if position >= len(values):
            continue
        if columns.mapping[position] == LISTS:
            names = (n.strip() for n in values[position].split(options.list_separator))
            lists = tuple(dict.fromkeys(n for n in names if n))
        else:
            raw_email = values[position].strip()
    email, reason = normalise_email(raw_email)
    if reason:
        return Rejected(line, raw_email, reason)
    return SourceRow((line,), email, {}, lists, ())


def _flat(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A JSON object with its nested objects flattened to dotted keys (`address.street`),
    so that `--column address.street=Addr1` can map one part of them."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat[name] = item  # the whole object is still named (and left out if mapped)
            flat.update(_flat(item, f"{name}."))
        else:
            flat[name] = item
    return flat


#: Byte-order marks and the codec each one announces (UTF-32 first: its LE mark starts
#: with UTF-16's). A mark wins over `--encoding`: it is what the file says it is.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8-sig"),
)


def _file_codec(path: Path, encoding: str) -> str:
    """The codec to read `path` with: the one its byte-order mark names, else `encoding`
    (UTF-8 read as `utf-8-sig`, which also takes a BOM)."""
    with path.open("rb") as binary:
        start = binary.read(4)
    for bom, codec in _BOMS:
        if start.startswith(bom):
            return codec
    name = codecs.lookup(encoding).name
    return "utf-8-sig" if name == "utf-8" else name


def _byte_lines(codec: str) -> bool:
    """Whether a newline is the single byte 0x0A in `codec` (false for UTF-16 and UTF-32,
    whose text must be decoded before it can be split into lines)."""
    return "\n".encode(codec.replace("-sig", "")) == b"\n"


def sniff_dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """The CSV dialect of a sample (comma, semicolon, tab or pipe); Excel's by default."""
    try:
        return csv.Sniffer().sniff(sample, ",;\t|")
    except csv.Error:
        return csv.excel


def decoded_lines(path: Path, encoding: str, digest: Any = None) -> Iterator[tuple[int, str, str]]:
    """(line number, text, error) per physical line; undecodable bytes become an error.

    `digest`, a hashlib object, is fed every byte of the file (the journal's key of the
    source). Excel's "Unicode Text" (UTF-16 with a BOM, tab-separated) is read like UTF-8.
    """
    codec = _file_codec(path, encoding)
    if not _byte_lines(codec):
        yield from _wide_lines(path, codec, digest)
        return
    with path.open("rb") as binary:
        yield from _decoded(enumerate(binary, 1), encoding, codec, digest)


def _decoded(
    lines: Iterable[tuple[int, bytes]], encoding: str, codec: str, digest: Any = None
) -> Iterator[tuple[int, str, str]]:
    """(line number, text, error) of each numbered line of bytes (`decoded_lines`)."""
    for number, raw in lines:
        if digest is not None:
            digest.update(raw)
        try:
            yield number, raw.decode(codec if number == 1 else codec.replace("-sig", "")), ""
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.end]
            yield (
                number,
                raw.decode(encoding, "replace"),
                (
                    f"line {number} has bytes {bad!r} that are not {encoding}; re-save the "
                    "file as UTF-8 or pass --encoding (e.g. latin-1)"
                ),
            )


#: Bytes `csv_lines` reads at a time (its text is held four times over while its lines are
#: read: `io.StringIO` keeps four bytes a character).
_BLOCK = 1 << 16


def csv_lines(
    path: Path, encoding: str, digest: Any = None, errors: dict[int, str] | None = None
) -> Iterator[str]:
    """The text of each physical line of a CSV file, for `csv.reader`: `decoded_lines`
    without the tuple and the generator step per line. A file in an encoding whose newline
    is the byte 0x0A is read and decoded 64 KiB at a time, cut after its last newline,
    and split into lines in C (`io.StringIO` splits on "\n" only, as the file's own lines);
    a block that does not decode goes line by line, and each line whose bytes do not gets
    its error in `errors` (by line number) and is given decoded with replacements. A million
    rows read this way take half the time of `decoded_lines`, in each of the two passes."""
    errors = {} if errors is None else errors
    codec = _file_codec(path, encoding)
    if not _byte_lines(codec):
        return _lines_with_errors(_wide_lines(path, codec, digest), errors)
    return chain.from_iterable(_blocks(path, encoding, codec, digest, errors))


def _lines_with_errors(
    lines: Iterator[tuple[int, str, str]], errors: dict[int, str]
) -> Iterator[str]:
    for number, text, error in lines:
        if error:
            errors[number] = error
        yield text


def _blocks(
    path: Path, encoding: str, codec: str, digest: Any, errors: dict[int, str]
) -> Iterator[Iterator[str]]:
    """The lines of each block of `csv_lines`."""
    number = 0  # lines before the block
    rest = b""
    with path.open("rb") as binary:
        while True:
            read = binary.read(_BLOCK)
            block = rest + read
            cut = len(block) if not read else block.rfind(b"\n") + 1
            if not block:
                return
            if cut == 0:  # no line ends in it yet
                rest = block
                continue
            block, rest = block[:cut], block[cut:]
            if digest is not None:
                digest.update(block)
            try:
                text = block.decode(codec if number == 0 else codec.replace("-sig", ""))
            except UnicodeDecodeError:
                yield _undecodable(block, number, encoding, codec, errors)
            else:
                yield io.StringIO(text, newline="\n")
            number += block.count(b"\n")


def _undecodable(
    block: bytes, number: int, encoding: str, codec: str, errors: dict[int, str]
) -> Iterator[str]:
    """The lines of a block that does not decode, one at a time (after `number` lines)."""
    pieces = block.split(b"\n")
    last = pieces.pop()  # after the last newline: nothing, unless the file ends without one
    lines = [piece + b"\n" for piece in pieces]
    if last:
        lines.append(last)
    return _lines_with_errors(_decoded(enumerate(lines, number + 1), encoding, codec), errors)


def _wide_lines(path: Path, codec: str, digest: Any) -> Iterator[tuple[int, str, str]]:
    """The lines of a UTF-16 or UTF-32 file, decoded as a stream (a line's bytes cannot be
    cut at 0x0A); a line with bytes that do not decode gets an error."""
    if digest is not None:
        with path.open("rb") as binary:
            for chunk in iter(lambda: binary.read(1 << 20), b""):
                digest.update(chunk)
    with path.open("r", encoding=codec, errors="replace", newline="") as text:
        for number, line in enumerate(text, 1):
            error = (
                f"line {number} has bytes that are not {codec}; re-save the file as UTF-8"
                if "\ufffd" in line
                else ""
            )
            yield number, line, error


#: The most text one JSON item may take (a contact is a few hundred bytes).
_MAX_JSON_ITEM = 1 << 24


def _starts_with_bracket(path: Path, encoding: str) -> bool:
    """Whether a JSON file holds an array (its first character that is not blank is `[`)."""
    with path.open("r", encoding=_file_codec(path, encoding), errors="replace") as text:
        while chunk := text.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped.startswith("[")
    return False


def _json_array_items(path: Path, options: ReadOptions, digest: Any) -> Iterator[Any]:
    """The items of the top-level JSON array in `path`, decoded one at a time.

    Written here rather than taken from a streaming parser (ijson): the stdlib decoder does
    the parsing (`raw_decode` reads one value from a position); this only walks the
    array's brackets and commas over a window of text that holds one item at a time.
    """
    if digest is not None:
        with path.open("rb") as binary:
            for block in iter(lambda: binary.read(1 << 20), b""):
                digest.update(block)
    decoder = json.JSONDecoder()
    with path.open("r", encoding=_file_codec(path, options.encoding)) as text:
        buffer, position, started, done = "", 0, False, False
        while not done:
            chunk = text.read(1 << 16)
            buffer = buffer[position:] + chunk
            position = 0
            while True:
                while position < len(buffer) and buffer[position] in " \t\r\n,":
                    position += 1
                if position >= len(buffer):
                    break
                if not started:
                    if buffer[position] != "[":
                        raise json.JSONDecodeError("expected '['", buffer, position)
                    started, position = True, position + 1
                    continue
                if buffer[position] == "]":
                    done = True
                    break
                try:
                    value, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError:
                    if not chunk or len(buffer) - position > _MAX_JSON_ITEM:
                        raise  # the whole rest is there (or a whole item's worth) and is broken
                    break  # the item continues in the next chunk
                if end == len(buffer) and chunk:
                    break  # a number at the end of the window may go on: read more first
                yield value
                position = end
            if not chunk and not done:
                raise json.JSONDecodeError("the array is not closed", buffer, position)


class SourceReader:
    """Reads a source into `SourceRow`s and `Rejected`s.

    Args:
        source: a path (CSV or JSON Lines by extension), or an (async) iterable of mappings.
        options: columns, lists column, encoding.
    """

    def __init__(self, source: Source, options: ReadOptions | None = None) -> None:
        self.options = options or ReadOptions()
        self.path: Path | None = None
        self._iterable: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]] | None
        if isinstance(source, str | Path):
            self.path = Path(source)
            self._iterable = None
            if not self.path.is_file():
                raise SourceError(f"the source {self.path} does not exist or is not a file")
            fmt = self.options.format or (
                "jsonl" if self.path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
            )
            self.format = fmt
        else:
            self._iterable = source
            self.format = "iterable"
        self.scan_result: Scan | None = None

    # --- files: synchronous, run in a worker thread -----------------------------------

    def _file_rows(
        self, digest: Any = None, make: RowMaker = _row
    ) -> Iterator[SourceRow | Rejected]:
        """The file's rows; `make` builds each CSV row (`_scan_row` for the first pass)."""
        assert self.path is not None
        if self.format == "jsonl":
            yield from self._jsonl_rows(digest)
        else:
            yield from self._csv_rows(digest, make)

    def _csv_rows(
        self, digest: Any = None, make: RowMaker = _row
    ) -> Iterator[SourceRow | Rejected]:
        assert self.path is not None
        errors: dict[int, str] = {}  # line number -> why its bytes do not decode
        lines = csv_lines(self.path, self.options.encoding, digest, errors)
        head = list(islice(lines, 50))
        sample = "".join(head)
        if not sample.strip():
            raise SourceError(f"the source {self.path} is empty")
        dialect = sniff_dialect(sample)
        # csv's field limit (128 KiB) is process-wide; a longer cell would stop the whole
        # run with csv.Error instead of rejecting its row, so it is raised to 64 MiB (the
        # row is then rejected by FIELD_LIMITS, with the field's name and length).
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
        reader = csv.reader(chain(head, lines), dialect)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"the source {self.path} has no header row") from None
        except csv.Error as exc:
            raise SourceError(f"{self.path} line {reader.line_num}: {exc}") from exc
        columns = _Columns(header, self.options)
        start = reader.line_num + 1
        try:
            for record in reader:
                line, start = start, reader.line_num + 1
                if not (record and record[0].strip()) and not any(c.strip() for c in record):
                    continue  # blank line
                if errors:  # a line that did not decode (rare: checked only then)
                    bad = next((errors.pop(n) for n in range(line, start) if n in errors), "")
                    if bad:
                        yield Rejected(line, "", bad)
                        continue
                yield make(line, record, columns, self.options)
        except csv.Error as exc:
            raise SourceError(f"{self.path} line {reader.line_num}: {exc}") from exc

    def _jsonl_rows(self, digest: Any = None) -> Iterator[SourceRow | Rejected]:
        assert self.path is not None
        if _starts_with_bracket(self.path, self.options.encoding):
            yield from self._json_array_rows(digest)
            return
        cache: dict[tuple[str, ...], _Columns] = {}
        any_line = False
        for number, text, error in decoded_lines(self.path, self.options.encoding, digest):
            if not text.strip():
                continue
            any_line = True
            if error:
                yield Rejected(number, "", error)
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Rejected(number, "", f"line {number} is not JSON: {exc.msg}")
                continue
            if not isinstance(value, dict):
                yield Rejected(number, "", f"line {number} is not a JSON object")
                continue
            yield self._mapping_row(number, value, cache)
        if not any_line:
            raise SourceError(f"the source {self.path} is empty")

    def _json_array_rows(self, digest: Any = None) -> Iterator[SourceRow | Rejected]:
        """The items of a JSON array file ("export as JSON"), numbered from 1, one at a time:
        memory holds one item and one chunk of text, whatever the file's size."""
        assert self.path is not None
        cache: dict[tuple[str, ...], _Columns] = {}
        count = 0
        try:
            for number, value in enumerate(_json_array_items(self.path, self.options, digest), 1):
                count = number
                if not isinstance(value, dict):
                    yield Rejected(number, "", f"item {number} is not a JSON object")
                    continue
                yield self._mapping_row(number, value, cache)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"{self.path} is not a valid JSON array after item {count}: {exc.msg} "
                f"(line {exc.lineno}, column {exc.colno} of that part)"
            ) from exc
        if count == 0:
            raise SourceError(f"the source {self.path} is an empty JSON array")

    def _mapping_row(
        self, number: int, value: Mapping[str, Any], cache: dict[tuple[str, ...], _Columns]
    ) -> SourceRow | Rejected:
        if any(isinstance(v, Mapping) for v in value.values()):
            value = _flat(value)
        keys = tuple(str(k) for k in value)
        columns = cache.get(keys)
        if columns is None:
            try:
                # A mapping without the lists key has no lists of its own, like an empty
                # cell; it still needs an email.
                columns = _Columns(keys, self.options, lists_required=False)
            except SourceError as exc:
                return Rejected(number, "", str(exc))
            if len(cache) < 1000:
                cache[keys] = columns
        return _row(number, value, columns, self.options)

    def _scan(self) -> Scan:
        scan = Scan()
        # 8 bytes per row, in 256 buckets by the low byte, so the sort below never holds
        # more than one bucket as Python ints: memory stays flat in the input size.
        buckets = [array("q") for _ in range(256)]
        digest = hashlib.sha256()
        for item in self._file_rows(digest, _scan_row):
            scan.rows += 1
            if isinstance(item, Rejected):
                scan.rejected += 1
                continue
            scan.list_names.update(item.lists)
            h = hash(item.email)
            buckets[h & 0xFF].append(h)
        for index, bucket in enumerate(buckets):
            ordered = sorted(bucket)
            buckets[index] = array("q")
            for i in range(1, len(ordered)):
                if ordered[i] == ordered[i - 1]:
                    scan.duplicates[ordered[i]] = scan.duplicates.get(ordered[i], 1) + 1
        scan.digest = digest.hexdigest()
        return scan

    async def scan(self) -> Scan:
        """First pass over a file (in a worker thread); a no-op for iterables."""
        if self.path is None:
            self.scan_result = Scan()
        else:
            self.scan_result = await anyio.to_thread.run_sync(self._scan)
        return self.scan_result

    def _coalesced(self, scan: Scan) -> Iterator[SourceRow | Rejected]:
        # hash -> email -> the rows seen so far, accumulated in place (a file may repeat one
        # email 100,000 times: rebuilding a tuple per repeat would be quadratic).
        held: dict[int, dict[str, _Group]] = {}
        seen: dict[int, int] = {}
        for item in self._file_rows():
            if isinstance(item, Rejected):
                yield item
                continue
            h = hash(item.email)
            total = scan.duplicates.get(h)
            if total is None:
                yield item
                continue
            group = held.setdefault(h, {})
            if item.email in group:
                group[item.email].add(item)
            else:
                group[item.email] = _Group(item)
            seen[h] = seen.get(h, 0) + 1
            if seen[h] >= total:
                yield from (g.row() for g in held.pop(h).values())
                del seen[h]
        for groups in held.values():  # only if the file changed between the passes
            yield from (g.row() for g in groups.values())

    async def rows(self) -> AsyncIterator[SourceRow | Rejected]:
        """Yield every row, duplicates of a file coalesced; call `scan()` first for files."""
        async for chunk in self.chunks():
            for item in chunk:
                yield item

    async def chunks(self) -> AsyncIterator[list[SourceRow | Rejected]]:
        """`rows` in lists, in order: a file's as its worker thread reads them, up to
        `CHUNK` at a time (a million rows handed over one at a time cost the event loop
        a second or two); an iterable's `CHUNK` at a time too, an async iterable's one at a
        time, as it gives them (it may wait between them)."""
        if self._iterable is not None:
            number = 0
            cache: dict[tuple[str, ...], _Columns] = {}
            if isinstance(self._iterable, AsyncIterable):
                async for value in self._iterable:
                    number += 1
                    yield [self._item(number, value, cache)]
            else:
                chunk: list[SourceRow | Rejected] = []
                for value in self._iterable:
                    number += 1
                    chunk.append(self._item(number, value, cache))
                    if len(chunk) >= CHUNK:
                        yield chunk
                        chunk = []
                        await anyio.lowlevel.checkpoint()
                if chunk:
                    yield chunk
            return
        scan = self.scan_result or await self.scan()
        iterator = self._coalesced(scan)
        while True:
            chunk = await anyio.to_thread.run_sync(lambda: list(islice(iterator, CHUNK)))
            if not chunk:
                return
            yield chunk

    def _item(
        self, number: int, value: Any, cache: dict[tuple[str, ...], _Columns]
    ) -> SourceRow | Rejected:
        if not isinstance(value, Mapping):
            return Rejected(number, "", f"item {number} is not a mapping")
        return self._mapping_row(number, value, cache)


class _Group:
    """The rows of one email being coalesced: lines in order, later non-empty fields win,
    lists unioned in order of appearance."""

    __slots__ = ("email", "fields", "lines", "lists", "warnings")

    def __init__(self, first: SourceRow) -> None:
        self.email = first.email
        self.lines = list(first.lines)
        self.fields = dict(first.fields)
        self.lists = dict.fromkeys(first.lists)
        self.warnings = dict.fromkeys(first.warnings)

    def add(self, later: SourceRow) -> None:
        self.lines.extend(later.lines)
        self.fields.update(later.fields)
        self.lists.update(dict.fromkeys(later.lists))
        self.warnings.update(dict.fromkeys(later.warnings))

    def row(self) -> SourceRow:
        return SourceRow(
            tuple(self.lines), self.email, self.fields, tuple(self.lists), tuple(self.warnings)
        )
