"""What both simulators share besides listening: request counters, state-file writes, and
the `simulate` command's serve-until-signalled loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = ["StateStore", "Stats", "json_bytes", "run_until_signalled", "save_json"]

try:
    import orjson
except ImportError:  # pragma: no cover - the `fast` extra is not installed
    orjson = None  # type: ignore[assignment]

log = logging.getLogger("engine.simulator")


def json_bytes(value: Any) -> bytes:
    """`value` as compact JSON in UTF-8 (orjson when the `fast` extra installed it: the V3
    simulator encodes every answer, pages of 500 contacts included, and the standard
    library took a quarter of its CPU on a million-row bulk run)."""
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()  # type: ignore[unreachable]


class Stats:
    """Request counters by route pattern and by status (served at `/_sim/stats`)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_route_status: Counter[str] = Counter()

    def record(self, route: str, status: str) -> None:
        """Count one answer."""
        self.total += 1
        self.by_route[route] += 1
        self.by_status[status] += 1
        self.by_route_status[f"{route} {status}"] += 1

    def reset(self) -> None:
        """Forget every count."""
        self.total = 0
        self.by_route.clear()
        self.by_status.clear()
        self.by_route_status.clear()

    def as_json(self) -> dict[str, object]:
        """`{"total": n, "by_route": {...}, "by_status": {...}, "by_route_status": {...}}`
        (`by_route_status` keys are "ROUTE STATUS", e.g. "POST activities reset")."""
        return {
            "total": self.total,
            "by_route": dict(sorted(self.by_route.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "by_route_status": dict(sorted(self.by_route_status.items())),
        }


def save_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write `to_json` output atomically and durably (fsync, then rename); callable from
    a worker thread with a snapshot taken in the event loop."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateStore(Protocol):
    """What the `simulate` command needs of either simulator's account store."""

    @property
    def revision(self) -> int:
        """Changes whenever the account changes."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The account as a state document."""
        ...

    def save(self, path: Path) -> None:
        """Write the state document to `path`, atomically."""
        ...

    def contact_count(self) -> int:
        """Contacts in the account."""
        ...


C = TypeVar("C")
S = TypeVar("S", bound=StateStore)
R = TypeVar("R")


async def _save_periodically(store: StateStore, state: Path, every: float) -> None:
    """Save the state whenever it changed, at most every `every` seconds: a SIGKILL loses at
    most the last `every` seconds of writes (a clean stop saves everything)."""
    saved = store.revision
    while True:
        await asyncio.sleep(every)
        if store.revision == saved:
            continue
        saved = store.revision
        data = store.to_json()  # a consistent snapshot, taken in the loop
        await asyncio.to_thread(save_json, data, state)


async def _serve_until_signalled(
    serving: AbstractAsyncContextManager[R],
    announce: Callable[[R], None],
    store: StateStore,
    state: Path | None,
    save_every: float,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serving as sim:
            announce(sim)
            saver = (
                asyncio.create_task(_save_periodically(store, state, save_every))
                if state is not None and save_every > 0
                else None
            )
            try:
                await stop.wait()
            finally:
                if saver is not None:
                    saver.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await saver
            log.info("stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_until_signalled(
    make_config: Callable[[], C],
    load: Callable[[Path, C], S],
    new: Callable[[C], S],
    serve: Callable[[C, S], AbstractAsyncContextManager[R]],
    announce: Callable[[R], None],
    state: Path | None,
    save_every: float,
) -> int:
    """The `simulate` command for either simulator: its settings, its account (loaded from
    `state` when the file exists), served until SIGINT or SIGTERM, saved periodically and at
    the end. Returns 0 after a clean stop, 2 for an invalid setting or state file."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s"
        )
    try:
        config = make_config()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        if state is not None and state.exists():
            age = time.time() - state.stat().st_mtime
            store = load(state, config)
            log.info(
                "loaded %d contacts from %s, saved %.0f s ago", store.contact_count(), state, age
            )
        else:
            store = new(config)
        serving = serve(config, store)
        asyncio.run(_serve_until_signalled(serving, announce, store, state, save_every))
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if state is not None:
        store.save(state)
        log.info("saved state to %s", state)
    return 0
