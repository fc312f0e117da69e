"""What a contact field's value becomes before any path writes it, on any API.

The reader applies `field_text` to every field it reads, so the per-contact path and the bulk
path write the same text for the same row, and the length limits are checked on what is sent.
"""

from __future__ import annotations

import re

__all__ = ["field_text"]

#: A number or a phone number: a leading + or - that a spreadsheet shows as it is.
_PLAIN_NUMBER = re.compile(r"[+-][0-9 ().\-/]*")


#: The first characters `_inert` looks at (a value starting with none of them, and holding no
#: line break, is written as it is).
_FIRST = "=@\t\r+-"


def _flat(value: str) -> str:
    # The bulk data format is line-based: a line break inside a value would shift every later
    # line number. Breaks become spaces, on every path alike.
    return " ".join(value.splitlines()) if ("\n" in value or "\r" in value) else value


def _inert(value: str) -> str:
    # An export of the account opened in a spreadsheet would run a cell such as `=cmd()` or
    # `@SUM(A1)` ("CSV injection", OWASP): such a value gets a leading single quote, which
    # spreadsheets read as "text". Numbers and phone numbers starting with + or - stay as
    # they are.
    if value[:1] in ("=", "@", "\t", "\r") or (
        value[:1] in ("+", "-") and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def field_text(value: str) -> str:
    """The text written for a field value (not the email): line breaks become spaces, and a
    value a spreadsheet would run as a formula gets a leading `'`. Idempotent."""
    if not value or (value[0] not in _FIRST and "\n" not in value and "\r" not in value):
        return value  # the usual cases: nothing to change
    return _inert(_flat(value))
