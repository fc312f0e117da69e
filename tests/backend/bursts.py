"""A watch on a backend's burst pool (`Backend.burst`) during a run, for the bulk probe's
tests on both backends: where each lookup, read and activity submission went."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from engine.backend import Backend
from engine.backend._http import session_for

#: What `session_for` gives outside a burst: the client's own session is not needed.
_OUTSIDE = cast(aiohttp.ClientSession, object())


@dataclass
class BurstWatch:
    """The run as the backend saw it.

    Attributes:
        events: in order, `enter` and `exit` of a burst, and `find`, `read` or `submit`
            followed by ` inside` (sent over a burst's pool) or ` outside`.
        sessions: the burst pools' sessions, in the order they were opened.
    """

    events: list[str] = field(default_factory=list)
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    def check_one_probe(self) -> None:
        """Assert that one burst was opened and closed, that it carried the probe's lookups
        (first), reads and activity and nothing else, and that the rest of the run's
        lookups, reads and submissions (one at least) went over the client's own pool."""
        assert self.events.count("enter") == self.events.count("exit") == 1
        assert all(session.closed for session in self.sessions)
        start, end = self.events.index("enter"), self.events.index("exit")
        probe, rest = self.events[start + 1 : end], self.events[:start] + self.events[end + 1 :]
        assert probe[0] == "find inside"
        assert {"read inside", "submit inside"} <= set(probe)
        assert all(event.endswith(" inside") for event in probe)
        assert "submit outside" in rest
        assert all(event.endswith(" outside") for event in rest)


def watch_bursts(backend: Backend, client: object) -> BurstWatch:
    """Record, on `backend` (whose requests `client` sends), its bursts and where each
    lookup, read and submission went."""
    watch = BurstWatch()
    burst, find, read, submit = backend.burst, backend.find, backend.read, backend.submit

    def where() -> str:
        return "inside" if session_for(client, _OUTSIDE) is not _OUTSIDE else "outside"

    @asynccontextmanager
    async def watched() -> AsyncIterator[None]:
        async with burst():
            watch.sessions.append(session_for(client, _OUTSIDE))
            watch.events.append("enter")
            try:
                yield
            finally:
                watch.events.append("exit")

    async def finding(emails: Sequence[str], *, strict: bool = False) -> Any:
        watch.events.append(f"find {where()}")
        return await find(emails, strict=strict)

    async def reading(ref: Any) -> Any:
        watch.events.append(f"read {where()}")
        return await read(ref)

    async def submitting(request: object, **kwargs: Any) -> Any:
        watch.events.append(f"submit {where()}")
        return await submit(request, **kwargs)

    backend.burst = watched  # type: ignore[method-assign]
    backend.find = finding  # type: ignore[method-assign]
    backend.read = reading  # type: ignore[method-assign]
    backend.submit = submitting  # type: ignore[method-assign]
    return watch
