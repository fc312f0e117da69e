"""Fixtures for the V3 simulator: a fake clock, fast settings, a served simulator and
client sessions that trust its CA (bearer token minted through the test hook)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from engine.simulator.v3 import AccountStore, RunningSimulator, SimulatorConfig, serve

#: 2026-03-10T12:00:00Z: a fixed start, far from midnight UTC.
START = 1_773_144_000.0
TIMEOUT = aiohttp.ClientTimeout(total=20)
TERMINAL = ("completed", "failed", "cancelled", "timed_out")


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """The injected clock of the store (timestamps, quota days, token and code expiry)."""
    return FakeClock()


@pytest.fixture
def v3_config() -> SimulatorConfig:
    """Fast settings: no rate limits (tests that need them turn them on), activities that
    start within about 20 ms and process a million rows a second."""
    return SimulatorConfig(
        host="127.0.0.1",
        port=0,
        rps=None,
        daily_quota=None,
        token_rps=None,
        activity_delay=0.02,
        activity_jitter=0.5,
        activity_rows_per_second=1_000_000.0,
        seed=1234,
    )


def ssl_context(sim: RunningSimulator) -> ssl.SSLContext:
    """A client context that trusts the simulator's CA."""
    assert sim.ca_path is not None
    return ssl.create_default_context(cafile=str(sim.ca_path))


@asynccontextmanager
async def open_session(
    sim: RunningSimulator, token: str | None = None, *, base: str | None = None
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on the API base (or `base`), sending `Bearer <token>` when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(
        base_url=base or sim.base_url,
        connector=aiohttp.TCPConnector(ssl=ssl_context(sim)),
        headers=headers,
        timeout=TIMEOUT,
    ) as session:
        yield session


Started = tuple[RunningSimulator, aiohttp.ClientSession]
V3Starter = Callable[..., AbstractAsyncContextManager[Started]]


@pytest.fixture
def start_v3(v3_config: SimulatorConfig, clock: FakeClock) -> V3Starter:
    """Start a V3 simulator with some settings changed and a session holding a fresh
    `contact_data offline_access` token: `async with start_v3(rps=4) as (sim, api): ...`.
    Pass `store=` to serve a given account (its clock is then its own)."""

    @asynccontextmanager
    async def start(store: AccountStore | None = None, **overrides: Any) -> AsyncIterator[Started]:
        config = dataclasses.replace(v3_config, **overrides)
        account = store if store is not None else AccountStore(config, clock=clock)
        async with serve(config, account) as sim:
            token = sim.issue_tokens().access_token
            async with open_session(sim, token) as api:
                yield sim, api

    return start


@pytest.fixture
async def v3(start_v3: V3Starter) -> AsyncIterator[Started]:
    """A V3 simulator with the default test settings, and an authorized session."""
    async with start_v3() as started:
        yield started


async def wait_for_activity(
    api: aiohttp.ClientSession, activity_id: str, *, seconds: float = 10.0
) -> dict[str, Any]:
    """Poll `GET activities/{id}` until a terminal state (bounded)."""
    async with asyncio.timeout(seconds):
        while True:
            async with api.get(f"activities/{activity_id}") as response:
                assert response.status == 200, await response.text()
                body: dict[str, Any] = await response.json()
            if body["state"] in TERMINAL:
                return body
            await asyncio.sleep(0.01)


async def post_json(
    api: aiohttp.ClientSession, path: str, body: Any, *, expect: int | None = None
) -> tuple[int, Any]:
    """POST a JSON body; returns the status and the JSON answer (checked against `expect`)."""
    async with api.post(path, json=body) as response:
        answer = await response.json() if response.content_type == "application/json" else None
        if expect is not None:
            assert response.status == expect, answer
        return response.status, answer


async def put_json(
    api: aiohttp.ClientSession, path: str, body: Any, *, expect: int | None = None
) -> tuple[int, Any]:
    """PUT a JSON body; returns the status and the JSON answer (checked against `expect`)."""
    async with api.put(path, json=body) as response:
        answer = await response.json() if response.content_type == "application/json" else None
        if expect is not None:
            assert response.status == expect, answer
        return response.status, answer


async def get_json(
    api: aiohttp.ClientSession, path: str, *, expect: int | None = 200, **params: str
) -> Any:
    """GET a JSON answer (checked against `expect`)."""
    async with api.get(path, params=params) as response:
        answer = await response.json()
        if expect is not None:
            assert response.status == expect, answer
        return answer
