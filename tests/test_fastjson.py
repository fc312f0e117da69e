"""The hot paths' JSON (`engine.fastjson`, the simulator's `json_bytes`): the same documents
with orjson (the `fast` extra) as with the standard library."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import fastjson
from engine.simulator import _shared

orjson = pytest.importorskip("orjson")

DOCUMENTS: list[Any] = [
    {"contacts": [{"email": "zoë@example.com", "rows": [1, 2], "fields": {"FirstName": "Zoë"}}]},
    [["a@example.com", [3], {}], ["b@example.com", [4, 5], {"City": 'Łódź "quoted" \\ /'}]],
    {"n": 0, "big": 2**53, "neg": -7, "t": True, "f": False, "none": None, "empty": [], "e": {}},
    "just a string with a tab\t and a newline\n and an emoji 🎉",
]


@pytest.fixture(params=["orjson", "json"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each library in turn (the standard library by hiding orjson)."""
    if request.param == "json":
        monkeypatch.setattr(fastjson, "orjson", None)
        monkeypatch.setattr(_shared, "orjson", None)
    return str(request.param)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_dumps_writes_compact_utf8_the_same_with_either_library(
    backend: str, document: Any
) -> None:
    """Both libraries write the bytes the standard library writes compact, non-ASCII kept."""
    expected = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    assert fastjson.dumps(document) == expected
    assert _shared.json_bytes(document) == expected


@pytest.mark.parametrize("document", DOCUMENTS)
def test_loads_reads_back_what_was_written_from_bytes_and_str(backend: str, document: Any) -> None:
    """A document decodes to the same value from UTF-8 bytes, from text, and from ASCII-escaped
    JSON (what the standard library writes by default)."""
    assert fastjson.loads(fastjson.dumps(document)) == document
    assert fastjson.loads(fastjson.dumps(document).decode()) == document
    assert fastjson.loads(json.dumps(document)) == document


@pytest.mark.parametrize(
    "bad", [b"", b"{", b'{"a": 1,}', b"[1, 2", b"\xff\xfe", b"[" * 5000 + b"]" * 5000]
)
def test_loads_refuses_what_is_not_json_with_a_value_error(backend: str, bad: bytes) -> None:
    """Malformed, truncated, non-UTF-8 or absurdly nested input is a ValueError with either
    library (the V3 client turns it into a malformed answer), never another exception."""
    with pytest.raises(ValueError):  # noqa: PT011 - each library words it its own way
        fastjson.loads(bad)


def test_the_fast_library_is_used_when_installed() -> None:
    """With the `fast` extra installed (as `make test` does), orjson does the work."""
    assert fastjson.BACKEND == "orjson"
    assert fastjson.orjson is orjson
