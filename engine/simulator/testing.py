"""Helpers for tests that run the simulator beside code that runs its own event loop.

`serve_in_thread` (`serve_v3_in_thread` for the V3 simulator) serves a simulator from a
thread with its own loop, for code under test that calls `asyncio.run` itself (the CLI's
`main`), or for tests that count the tasks of their own loop; `read_stats` reads its request
counters without an event loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

from . import v3
from .v1.config import SimulatorConfig
from .v1.server import RunningSimulator, serve
from .v1.store import AccountStore

__all__ = ["read_stats", "serve_in_thread", "serve_v3_in_thread"]


@contextmanager
def serve_in_thread(
    config: SimulatorConfig, store: AccountStore | None = None
) -> Iterator[RunningSimulator]:
    """Serve a simulator from its own thread and event loop until the block exits."""
    with _in_thread(lambda: serve(config, store)) as sim:
        yield sim


@contextmanager
def serve_v3_in_thread(
    config: v3.SimulatorConfig, store: v3.AccountStore | None = None
) -> Iterator[v3.RunningSimulator]:
    """Serve a V3 simulator from its own thread and event loop until the block exits.

    The store belongs to that thread's loop: seed it before, or use it only through its
    thread-safe parts (`writes`, `auth.issue_tokens`, `auth.approve`) while it serves.
    """
    with _in_thread(lambda: v3.serve(config, store)) as sim:
        yield sim


_Sim = TypeVar("_Sim")


@contextmanager
def _in_thread(open_server: Callable[[], AbstractAsyncContextManager[_Sim]]) -> Iterator[_Sim]:
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        async with open_server() as sim:
            box.update(sim=sim, loop=asyncio.get_running_loop(), stop=stop)
            ready.set()
            await stop.wait()

    def target() -> None:
        try:
            asyncio.run(serve_until_stopped())
        except BaseException as exc:  # reported to the caller's thread below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, name="simulator", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the simulator did not start")
    if "error" in box:
        raise box["error"]
    try:
        yield box["sim"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError("the simulator thread did not stop")


def read_stats(sim: RunningSimulator | v3.RunningSimulator) -> dict[str, Any]:
    """The simulator's request counters (`GET /_sim/stats`), blocking."""
    context = ssl.create_default_context(cafile=str(sim.ca_path)) if sim.ca_path else None
    with urllib.request.urlopen(sim.stats_url, context=context, timeout=30) as answer:
        stats: dict[str, Any] = json.load(answer)
    return stats
