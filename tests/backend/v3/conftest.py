"""Fixtures for the V3 backend: the V3 simulator over https on 127.0.0.1 (port 0) on a fake
clock, and a `V3Backend` logged in to it through a token file in a temporary folder."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.backend.governor import RateGovernor
from engine.backend.retry import RetryPolicy
from engine.backend.v3 import (
    FileTokenStore,
    OAuthEndpoints,
    TokenSet,
    V3Auth,
    V3Backend,
    V3Client,
)
from engine.simulator.v3 import AccountStore, RunningSimulator, SimulatorConfig, serve

#: 2026-03-10T12:00:00Z: far from midnight UTC.
START = 1_773_144_000.0


class FakeClock:
    """Epoch seconds that move only when a test says so (the simulator's and the auth's)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


async def no_sleep(seconds: float) -> None:
    """A retry sleep that does not wait."""


#: Quick retries: the tests' faults are injected, not slow.
FAST_RETRY = RetryPolicy(attempts=3, timeout=20.0, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0)


@pytest.fixture
def clock() -> FakeClock:
    """The shared fake clock."""
    return FakeClock()


@pytest.fixture
def v3_config() -> SimulatorConfig:
    """Fast settings: no rate limits (a test turns them on), activities within ~20 ms."""
    return SimulatorConfig(
        host="127.0.0.1",
        port=0,
        rps=None,
        daily_quota=None,
        token_rps=None,
        activity_delay=0.02,
        activity_jitter=0.5,
        activity_rows_per_second=1_000_000.0,
        seed=4321,
    )


SimStarter = Callable[..., AbstractAsyncContextManager[RunningSimulator]]


@pytest.fixture
def start_sim(v3_config: SimulatorConfig, clock: FakeClock) -> SimStarter:
    """Start a simulator with some settings changed: `async with start_sim(rps=4) as sim`."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningSimulator]:
        config = dataclasses.replace(v3_config, **overrides)
        async with serve(config, AccountStore(config, clock=clock)) as sim:
            yield sim

    return start


@pytest.fixture
async def sim(start_sim: SimStarter) -> AsyncIterator[RunningSimulator]:
    """A simulator with the default test settings."""
    async with start_sim() as running:
        yield running


def endpoints_for(sim: RunningSimulator) -> OAuthEndpoints:
    """The simulator's authorization server, unthrottled on the client side."""
    return OAuthEndpoints(
        sim.config.client_id,
        auth_url=sim.auth_url,
        ca_file=sim.ca_path,
        sleep=no_sleep,
        governor=RateGovernor(rate=None),
    )


def login(sim: RunningSimulator, folder: Path, clock: FakeClock, **ttl: float) -> FileTokenStore:
    """A token file holding a fresh login's tokens (as `device_login` would write it)."""
    issued = sim.issue_tokens(access_ttl=ttl.get("access_ttl"))
    store = FileTokenStore(folder / "tokens" / "v3-demo-client.json")
    store.save(
        TokenSet(
            issued.access_token,
            issued.refresh_token,
            clock() + issued.expires_in,
            issued.scope,
        )
    )
    return store


BackendOpener = Callable[..., AbstractAsyncContextManager[V3Backend]]


@pytest.fixture
def open_backend(tmp_path: Path, clock: FakeClock) -> BackendOpener:
    """`async with open_backend(sim) as backend`: a backend on `sim` with a fresh login
    (pass `store=` to use a given token file, `access_ttl=` to shorten the token)."""

    @asynccontextmanager
    async def opened(
        sim: RunningSimulator,
        *,
        store: FileTokenStore | None = None,
        access_ttl: float | None = None,
        governor: RateGovernor | None = None,
    ) -> AsyncIterator[V3Backend]:
        if store is None:
            extra = {} if access_ttl is None else {"access_ttl": access_ttl}
            store = login(sim, tmp_path, clock, **extra)
        auth = V3Auth(endpoints_for(sim), store=store, clock=clock)
        async with V3Client(
            auth,
            base_url=sim.base_url,
            ca_file=sim.ca_path,
            governor=governor or RateGovernor(rate=None),
            retry=FAST_RETRY,
            sleep=no_sleep,
            timeout=20.0,
        ) as client:
            yield V3Backend(client)

    return opened
