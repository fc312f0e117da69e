"""Shared fixtures: a running simulator on 127.0.0.1 over https, and a client session for it."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

# The per-test timeout that also ends a test hung inside uvloop: its hook is registered by
# being a name of this conftest (see hang_guard's docstring).
from hang_guard import pytest_timeout_set_timer  # noqa: F401

from engine.simulator import RunningSimulator, SimulatorConfig, serve

SimulatorStarter = Callable[
    ..., AbstractAsyncContextManager[tuple[RunningSimulator, aiohttp.ClientSession]]
]


@asynccontextmanager
async def open_session(
    sim: RunningSimulator, *, login: str = "demo-key%demo", password: str = "demo-password"
) -> AsyncIterator[aiohttp.ClientSession]:
    """A keep-alive session that trusts the simulator's CA and sends Basic credentials."""
    ssl_context = ssl.create_default_context(cafile=str(sim.ca_path)) if sim.ca_path else False
    headers = {"Authorization": aiohttp.encode_basic_auth(login, password)}
    connector = aiohttp.TCPConnector(ssl=ssl_context)
    async with aiohttp.ClientSession(
        base_url=sim.base_url, connector=connector, headers=headers
    ) as session:
        yield session


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    """Fast defaults for tests: activities finish within about 50 ms."""
    return SimulatorConfig(host="127.0.0.1", port=0, activity_delay=0.05, seed=1234)


@pytest.fixture
async def simulator(simulator_config: SimulatorConfig) -> AsyncIterator[RunningSimulator]:
    """A simulator serving https on 127.0.0.1 at a free port."""
    async with serve(simulator_config) as sim:
        yield sim


@pytest.fixture
async def sim_session(simulator: RunningSimulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for `simulator`: trusts its CA, sends `demo-key%demo:demo-password`,
    and resolves relative URLs against the API base (`contacts/1`)."""
    async with open_session(simulator) as session:
        yield session


SessionOpener = Callable[..., AbstractAsyncContextManager[aiohttp.ClientSession]]


@pytest.fixture
def session_for() -> SessionOpener:
    """Open another client session for a simulator: `async with session_for(sim, password="x")`."""
    return open_session


@pytest.fixture
def start_simulator(simulator_config: SimulatorConfig) -> SimulatorStarter:
    """Start another simulator with some settings changed: `async with start(error_rate=1) as
    (sim, session): ...`."""

    @asynccontextmanager
    async def start(
        **overrides: Any,
    ) -> AsyncIterator[tuple[RunningSimulator, aiohttp.ClientSession]]:
        config = dataclasses.replace(simulator_config, **overrides)
        async with serve(config) as sim, open_session(sim) as session:
            yield sim, session

    return start


@pytest.fixture(autouse=True)
def _no_backend_choice_from_the_shell(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A developer's `CTCT_BACKEND`, credentials or V3 logins must not change what the
    tests run against (the CLI picks the API from what is present)."""
    monkeypatch.delenv("CTCT_BACKEND", raising=False)
    for name in ("CTCT_USERNAME", "CTCT_API_KEY", "CTCT_PASSWORD", "CTCT_V3_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("CTCT_V3_REFRESH_TOKEN", "CTCT_V3_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
