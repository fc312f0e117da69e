"""A token of an anyio `CapacityLimiter`, taken without a checkpoint when one is free.

`async with limiter` yields to the event loop twice even when a token is free (anyio's
`acquire` is a checkpoint), about 5 µs: a tenth of the engine's own cost of a request,
paid by every request (the governor's slot) and every intent's commit (the journal). This
takes the free token at once and waits (a checkpoint then) only when there is none. The
code inside is then not a cancellation point by itself: the request or the wait it holds
the token for is.
"""

from __future__ import annotations

from types import TracebackType

import anyio

__all__ = ["Held"]


class Held:
    """`async with Held(limiter):` holds one of its tokens for the block."""

    __slots__ = ("_borrower", "_limiter")

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._borrower = object()  # its own borrower: no lookup of the current task

    async def __aenter__(self) -> None:
        try:
            self._limiter.acquire_on_behalf_of_nowait(self._borrower)
        except anyio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(self._borrower)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._limiter.release_on_behalf_of(self._borrower)
