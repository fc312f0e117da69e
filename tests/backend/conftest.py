"""Fixtures shared by the tests of both API backends."""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Any

import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses


class _Response(ClientResponse):
    """aioresponses 0.7.9 builds responses without the `stream_writer` that aiohttp 3.14
    requires (pnuckowski/aioresponses#289, open): supply a finished writer's stand-in."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@pytest.fixture
def m(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """Every aiohttp request of the test goes to this scripted fake."""
    if "stream_writer" in inspect.signature(ClientResponse.__init__).parameters:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _Response)
    with aioresponses() as mocked:
        yield mocked
