"""JSON in and out of the hot paths: orjson when the `fast` extra installed it, else the
standard library, with the same documents either way.

The V3 bulk path decodes every page of a read-back (500 contacts each) and encodes every
import (40,000 rows), and the V3 simulator encodes every answer: with the standard library
these were a sixth of the engine's CPU and a quarter of the simulator's on a million rows.
orjson does the same work several times faster. Only these few calls go through here; the
rest of the code (small bodies, files, error texts) uses `json`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BACKEND", "dumps", "loads"]

#: Which library does the work: "orjson" or "json".
BACKEND = "orjson"
try:
    import orjson
except ImportError:  # pragma: no cover - the `fast` extra is not installed
    orjson = None  # type: ignore[assignment]
    BACKEND = "json"


def loads(data: bytes | str) -> Any:
    """The document in `data` (UTF-8 when bytes).

    Raises:
        ValueError: not JSON (orjson's error is a `json.JSONDecodeError`, as the standard
            library's), or nested too deep for the standard library's recursion limit
            (`RecursionError` is turned into a `ValueError`).
    """
    if orjson is not None:
        return orjson.loads(data)
    try:  # type: ignore[unreachable]
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("the JSON document is nested too deeply") from exc


def dumps(value: Any) -> bytes:
    """`value` as compact JSON in UTF-8: no spaces, non-ASCII characters as they are (as
    `json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()` writes it).

    Raises:
        TypeError: a value JSON cannot hold (only str, int, float, bool, None, and lists,
            tuples and dicts with str keys of those are written).
    """
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()  # type: ignore[unreachable]
