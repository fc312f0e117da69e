"""JSON plumbing of the V3 simulator: its errors, field validators, timestamps, paging
cursors and the reader that recovers the complete rows of a truncated import body.

Pure: no aiohttp, no store. Sections of `ctct-v3-api.md` are cited where a rule comes from.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "TooManyRequests",
    "decode_cursor",
    "encode_cursor",
    "iso_date",
    "iso_time",
    "parse_iso",
    "read_truncated_import",
]

ErrorShape = Literal["array", "object"]


# ---------------------------------------------------------------------------------------------
# Errors (§2.2): validation and business errors are arrays, rate limits are objects.


class ApiError(Exception):
    """A request the API refuses.

    Attributes:
        status: The HTTP status.
        key: `error_key` of the body.
        message: `error_message` of the body.
        shape: `"array"` (`[{error_key, error_message}]`) or `"object"`.
    """

    status = 400
    default_key = "general.api.error"
    shape: ErrorShape = "array"

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key or self.default_key

    def body(self) -> list[dict[str, str]] | dict[str, str]:
        """The JSON body of the refusal."""
        item = {"error_key": self.key, "error_message": self.message}
        return item if self.shape == "object" else [item]


class BadRequest(ApiError):
    """400: malformed JSON or a validation failure."""

    status = 400
    default_key = "contacts.api.validation.error"


class Forbidden(ApiError):
    """403: a missing scope or privilege, or a deactivated application."""

    status = 403
    default_key = "forbidden"


class NotFound(ApiError):
    """404: unknown id."""

    status = 404
    default_key = "contacts.api.not_found"


class Conflict(ApiError):
    """409: the email or the list name exists already."""

    status = 409
    default_key = "contacts.api.conflict"


class TooManyRequests(ApiError):
    """429 with an object body: throttled, over quota, or too many queued activities."""

    status = 429
    default_key = "throttled"
    shape: ErrorShape = "object"


# ---------------------------------------------------------------------------------------------
# Field validators: `where` prefixes the message (e.g. "email_address.").


def opt_str(body: Mapping[str, Any], key: str, max_len: int, where: str = "") -> str | None:
    """An optional string field of at most `max_len` characters (`None` when absent or null).

    Raises:
        BadRequest: Not a string, or too long.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where}{key} must be a string")
    if len(value) > max_len:
        raise BadRequest(f"{where}{key} must be at most {max_len} characters")
    return value


def opt_int(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    """An optional integer field in `[low, high]`.

    Raises:
        BadRequest: Not an integer, or out of range.
    """
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer")
    if not low <= value <= high:
        raise BadRequest(f"{key} must be between {low} and {high}")
    return value


def opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    """An optional boolean field.

    Raises:
        BadRequest: Not a boolean.
    """
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequest(f"{key} must be a boolean")


def opt_list(
    body: Mapping[str, Any], key: str, max_items: int, *, min_items: int = 0, where: str = ""
) -> list[Any] | None:
    """An optional array field with `min_items..max_items` entries.

    Raises:
        BadRequest: Not an array, or a wrong length.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest(f"{where}{key} must be an array")
    if len(value) > max_items:
        raise BadRequest(f"{where}{key} must have at most {max_items} items")
    if len(value) < min_items:
        raise BadRequest(f"{where}{key} must have at least {min_items} items")
    return value


def id_list(
    body: Mapping[str, Any], key: str, max_items: int, *, min_items: int = 0, where: str = ""
) -> list[str] | None:
    """An optional array of UUID strings, duplicates dropped, order kept.

    Raises:
        BadRequest: Not an array of UUIDs, or a wrong length.
    """
    items = opt_list(body, key, max_items, min_items=min_items, where=where)
    if items is None:
        return None
    for item in items:
        if not isinstance(item, str) or not is_uuid(item):
            raise BadRequest(f"{where}{key} must hold UUID strings, not {item!r}")
    return list(dict.fromkeys(items))


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EMAIL_RE = re.compile(r"[^@\s\"<>,;()]+@[^@\s\"<>,;()]+\.[^@\s\"<>,;().]+")


def is_uuid(text: str) -> bool:
    """Whether `text` is a lower-case 8-4-4-4-12 UUID (§2.1)."""
    return _UUID_RE.fullmatch(text) is not None


def is_email(text: str) -> bool:
    """Whether `text` looks like an email address."""
    return _EMAIL_RE.fullmatch(text) is not None


# ---------------------------------------------------------------------------------------------
# Timestamps (§2.1): ISO-8601; `mixed` also writes the millisecond and offset forms seen.


def iso_time(t: float, *, mixed: bool = False) -> str:
    """Epoch seconds as ISO-8601 UTC (`2024-10-30T18:56:35Z`).

    With `mixed`, the form depends on the time itself (stable for one value): `Z`,
    milliseconds (`2016-01-23T13:48:44.108Z`) or a `-05:00` offset, as the real API mixes
    them (§2.1, §10.6.32).
    """
    whole = int(t)
    if not mixed or whole % 3 == 0:
        return _second(whole) + "Z"
    if whole % 3 == 1:
        ms = round((t - whole) * 1000) % 1000
        return _second(whole) + f".{ms:03d}Z"
    return _second(whole - 5 * 3600) + "-05:00"


@functools.lru_cache(maxsize=4096)
def _second(whole: int) -> str:
    """`2024-10-30T18:56:35`: cached, since the contacts a run writes share their seconds
    (a read-back of a million of them formats four stamps each)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def iso_date(t: float) -> str:
    """Epoch seconds as a plain date, the form of a contact's `deleted_at` (§2.1)."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def parse_iso(text: str, name: str) -> float:
    """An ISO-8601 date or date-time query value as epoch seconds (UTC when no offset).

    Raises:
        BadRequest: Not ISO-8601.
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO-8601 date-time", "general.api.error") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# ---------------------------------------------------------------------------------------------
# Cursors (§3.2): the captured one is base64 of `limit=1&next=2`; ours carry the whole query.


def encode_cursor(params: Sequence[tuple[str, str]]) -> str:
    """An opaque cursor holding the query of the next page (base64 of a query string)."""
    return base64.urlsafe_b64encode(urlencode(params).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, str]:
    """The query inside a cursor.

    Raises:
        BadRequest: Not a cursor this simulator made.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        params = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True))
    except (binascii.Error, UnicodeError, ValueError):
        raise BadRequest("The cursor is invalid", "general.api.error") from None
    if "next" not in params or "limit" not in params:
        raise BadRequest("The cursor is invalid", "general.api.error")
    return params


# ---------------------------------------------------------------------------------------------
# Import bodies over the size limit (§5.2): "only imports the first 4 MB and drops the
# remaining data". The cut leaves broken JSON; this reads every member and row that is
# complete before the cut (the recovery is [I]).

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    return match.end() if match else at


def read_truncated_import(text: str) -> dict[str, Any]:
    """The top-level members of a JSON object cut at an arbitrary point.

    Members complete before the cut are kept; of a cut `import_data` array, the rows
    complete before the cut are kept; whatever follows the cut is dropped.

    Raises:
        BadRequest: The text does not start as a JSON object.
    """
    out: dict[str, Any] = {}
    at = _skip(text, 0)
    if not text.startswith("{", at):
        raise BadRequest("The request body is not a JSON object", "general.api.error")
    at += 1
    while True:
        at = _skip(text, at)
        try:
            key, at = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            return out
        at = _skip(text, at)
        if not isinstance(key, str) or not text.startswith(":", at):
            return out
        at = _skip(text, at + 1)
        try:
            value, at = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            if key == "import_data" and text.startswith("[", at):
                out[key] = _complete_items(text, at + 1)
            return out
        out[key] = value
        at = _skip(text, at)
        if not text.startswith(",", at):
            return out
        at += 1


def _complete_items(text: str, at: int) -> list[Any]:
    items: list[Any] = []
    while True:
        at = _skip(text, at)
        try:
            item, at = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            return items
        items.append(item)
        at = _skip(text, at)
        if not text.startswith(",", at):
            return items
        at += 1
