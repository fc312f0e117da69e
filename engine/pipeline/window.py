"""How many contacts may be read ahead of their writes: as many as the current rate lets
write before their reads go stale.

A merge worker reads a contact (a rate turn), builds its write and hands it to a put worker,
which takes the write's turn and checks the read's age: one older than `stale_after` is read
again (an extra request). Turns are served first come, first served, so a write waits behind
every read and write queued before it. With `n` contacts between their read and their
write, that is up to `2n` turns: at the rate `r`, `2n / r` seconds. The worker pools are
sized when the run starts, but the rate is not fixed (a throttle cuts it by a quarter,
discovery raises it): at 3 requests/s eight contacts in flight made nearly every write read
its contact again. The window follows the rate at every read instead.

It is a counter and a queue of waiters rather than an anyio `CapacityLimiter`: a contact's
place is taken by the merge worker that reads it and given back by the put worker that
writes it (two tasks), and the size changes with the rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["Place", "ReadWindow"]

#: The share of `stale_after` the window's own turns may fill; the rest is left for the
#: requests outside it (lookups, appends, retries) that queue at the same governor.
_HEADROOM = 0.8


class ReadWindow:
    """At most `size()` contacts between their read and their write.

    Args:
        rate: the governor's current rate, requests per second (None: no rate limit, and
            then no bound but the workers').
        stale_after: seconds after which a read is stale (`MigrationConfig.stale_after`).
        most: the most at any rate (the workers that read).
    """

    __slots__ = ("_held", "_most", "_rate", "_stale_after", "_waiters")

    def __init__(self, rate: Callable[[], float | None], *, stale_after: float, most: int) -> None:
        self._rate = rate
        self._stale_after = stale_after
        self._most = max(1, most)
        self._held = 0
        # First come, first served; a place given back wakes one waiter, not all of them
        # (sixty-four workers woken for each contact cost more than the contact's requests).
        self._waiters: deque[anyio.Event] = deque()

    @property
    def held(self) -> int:
        """Contacts read (or being read) whose writes have not been sent."""
        return self._held

    def size(self) -> int | None:
        """How many contacts the current rate lets read ahead: each takes two turns (its
        read and its write), all of them within `stale_after` (less the headroom). None
        without a rate limit: no turn to wait for, so no read goes stale waiting."""
        rate = self._rate()
        if rate is None:
            return None
        return max(1, min(self._most, int(rate * self._stale_after * _HEADROOM / 2)))

    def _has_room(self) -> bool:
        size = self.size()
        return size is None or self._held < size

    async def enter(self) -> Place:
        """Wait for a place (a checkpoint only when there is none)."""
        if not self._waiters and self._has_room():
            self._held += 1
            return Place(self)
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            # Handed a place in the instant before the cancellation came (anyio's asyncio
            # backend lets such a wait end normally; another backend may not): give it back.
            if event.is_set():
                self._leave()
            else:
                self._waiters.remove(event)
            raise
        return Place(self)  # taken on its behalf by `_leave`

    def _leave(self) -> None:
        self._held -= 1
        # Hand places to the first waiters, as many as fit now (the rate may have changed).
        while self._waiters and self._has_room():
            self._held += 1
            self._waiters.popleft().set()


class Place:
    """A contact's place in a `ReadWindow`; `leave` gives it back (once: later calls do
    nothing, so every path that may end a write can call it)."""

    __slots__ = ("_window",)

    def __init__(self, window: ReadWindow) -> None:
        self._window: ReadWindow | None = window

    def leave(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            window._leave()
