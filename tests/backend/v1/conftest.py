"""Fixtures of the API-layer tests: a mocked HTTP layer, an opened account, captured XML."""

from __future__ import annotations

import inspect
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy

#: Responses of the real v1 server (the gem's MIT fixtures; provenance in their README).
CAPTURED = Path(__file__).resolve().parents[2] / "fixtures" / "ctct-v1-captured"

BASE_URL = "https://api.example.test/ws/customers/acme/"


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


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the account's retry policy asked for (none is actually slept)."""
    return []


@pytest.fixture
def make_account(sleeps: list[float]) -> Callable[..., Account]:
    """Build an unopened `Account` with the test defaults; keyword arguments override them."""

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def make(**overrides: Any) -> Account:
        settings: dict[str, Any] = {
            "base_url": BASE_URL,
            "governor": RateGovernor(rate=None, concurrency=8),
            "retry": RetryPolicy(attempts=3, wait_initial=0, wait_max=0, wait_jitter=0),
            "sleep": no_sleep,
        }
        settings.update(overrides)
        credentials = settings.pop("credentials", Credentials("acme", "K", "P"))
        return Account(credentials, **settings)

    return make


@pytest.fixture
async def account(m: aioresponses, make_account: Callable[..., Account]) -> AsyncIterator[Account]:
    """An opened account on the mocked HTTP layer, with zero-sleep retries (3 attempts)."""
    async with make_account() as opened:
        yield opened


@pytest.fixture
def captured() -> Callable[[str], bytes]:
    """Read one captured real-server response by file name."""

    def read(name: str) -> bytes:
        return (CAPTURED / name).read_bytes()

    return read
