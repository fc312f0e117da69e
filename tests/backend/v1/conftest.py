"""Fixtures of the API-layer tests: a mocked HTTP layer, an opened account, captured XML."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy

#: Responses of the real v1 server (the gem's MIT fixtures; provenance in their README).
CAPTURED = Path(__file__).resolve().parents[2] / "fixtures" / "ctct-v1-captured"

BASE_URL = "https://api.example.test/ws/customers/acme/"


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
