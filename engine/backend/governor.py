"""The request-rate governor every request of an account passes through.

One `RateGovernor` is shared by all stages (and may be shared by several accounts that
share an application's budget). It holds three limits:

- a rate: requests are spaced `1/rate` seconds apart (the generic cell rate algorithm, a
  token bucket of depth `burst`); `rate=None` means no rate limit until the server throttles;
- a concurrency: at most `concurrency` requests in flight (an anyio `CapacityLimiter`);
- a daily budget: at most `daily_budget` requests per UTC day, then `QuotaExhaustedError`.

A throttle answer sets the rate to 97% of the rate the server accepted over the last three
seconds (under throttling, that is its limit, measured) and cuts the concurrency by a
quarter, once for all the requests already in flight when it happened; it also pauses every
request for `Retry-After` when the server sent one. Successes raise the rate again: doubling
every second until a limit has been measured (a slow start), then 0.3% a second, so the
governor settles just under a limit it was never told, with a few percent of throttled
answers. With `rate=None` there is no limit until the first throttle.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import anyio

from engine.errors import ConfigError, QuotaExhaustedError

__all__ = ["GovernorStats", "RateGovernor"]

#: Seconds over which the accepted rate is measured when the server throttles.
_WINDOW = 3.0

#: When the current task's last request was let through (see `RateGovernor.on_throttle`).
_SENT_AT: ContextVar[float | None] = ContextVar("sent_at", default=None)


@dataclass(frozen=True, slots=True)
class GovernorStats:
    """A snapshot of the governor.

    Attributes:
        requests: requests let through so far.
        throttles: throttle answers reported.
        rate: the current rate limit in requests/s (None: unlimited).
        concurrency: the current concurrency limit.
        in_flight: requests holding a slot now.
        waiting: requests waiting for a slot.
    """

    requests: int
    throttles: int
    rate: float | None
    concurrency: int
    in_flight: int
    waiting: int


class RateGovernor:
    """Spaces, bounds and budgets requests; learns from throttle answers.

    Args:
        rate: requests per second (None: unlimited until the server throttles).
        concurrency: the most requests in flight at once.
        burst: how many requests may go back to back after an idle spell.
        daily_budget: the most requests per UTC day (None: no budget).
        used_today: requests already spent today (e.g. by an earlier run).
        clock: a monotonic clock in seconds (tests inject one).
    """

    def __init__(
        self,
        *,
        rate: float | None = 4.0,
        concurrency: int = 8,
        burst: int = 1,
        daily_budget: int | None = None,
        used_today: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ConfigError(f"the rate limit must be above 0 requests/s, not {rate}")
        if concurrency < 1:
            raise ConfigError(f"the concurrency must be at least 1, not {concurrency}")
        if burst < 1:
            raise ConfigError(f"the burst must be at least 1, not {burst}")
        if daily_budget is not None and daily_budget < 1:
            raise ConfigError(f"the daily budget must be at least 1, not {daily_budget}")
        self._max_rate = rate
        self._rate = rate
        self._burst = burst
        self._max_concurrency = concurrency
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._daily_budget = daily_budget
        self._used_today = used_today
        self._day = dt.datetime.now(dt.UTC).date()
        self._clock = clock
        self._tat = 0.0  # theoretical arrival time of the next request (GCRA)
        self._paused_until = 0.0
        self._last_decrease = -math.inf
        self._last_increase = clock()
        self._started: float | None = None  # when the first request was let through
        self._measured: float | None = None  # the accepted rate at the last throttle
        self._accepted: deque[float] = deque()  # successes of the last _WINDOW seconds
        self._recent: deque[float] = deque()
        self._requests = 0
        self._throttles = 0
        self._successes = 0

    def __repr__(self) -> str:
        s = self.stats()
        rate = "unlimited" if s.rate is None else f"{s.rate:.2f}/s"
        return (
            f"<RateGovernor [rate {rate} | {s.in_flight}/{s.concurrency} in flight, "
            f"{s.waiting} waiting | {s.requests} requests, {s.throttles} throttled]>"
        )

    def stats(self) -> GovernorStats:
        """The current limits and counters."""
        lim = self._limiter.statistics()
        return GovernorStats(
            requests=self._requests,
            throttles=self._throttles,
            rate=self._rate,
            concurrency=int(self._limiter.total_tokens),
            in_flight=lim.borrowed_tokens,
            waiting=lim.tasks_waiting,
        )

    @property
    def used_today(self) -> int:
        """Requests spent in the current UTC day."""
        return self._used_today

    async def take_turn(self) -> None:
        """Wait for a request's turn (rate and daily budget) now, for a request that is then
        sent with `slot(prepaid=True)` and leaves without waiting again.

        For a check that must happen right before its request (the staleness check before a
        PUT): taken the other way round, the request's wait for the rate would sit between
        the check and the request.

        Raises:
            QuotaExhaustedError: the daily budget is spent.
        """
        self._spend_budget()
        await self._wait_turn()

    @asynccontextmanager
    async def slot(self, *, prepaid: bool = False) -> AsyncIterator[None]:
        """Hold a slot for one request: within the concurrency, rate and daily budget.

        Args:
            prepaid: the request's turn was taken with `take_turn`: only the concurrency
                limit is waited for.

        Raises:
            QuotaExhaustedError: the daily budget is spent.
        """
        async with self._limiter:
            if not prepaid:
                self._spend_budget()
                await self._wait_turn()
            # The task that sends the request is the one that reports its throttle.
            _SENT_AT.set(self._clock())
            yield

    def _spend_budget(self) -> None:
        today = dt.datetime.now(dt.UTC).date()
        if today != self._day:
            self._day, self._used_today = today, 0
        if self._daily_budget is not None and self._used_today >= self._daily_budget:
            raise QuotaExhaustedError(
                f"the daily budget of {self._daily_budget} requests is spent; it resets at "
                "midnight UTC. Run the same command again then to resume."
            )
        self._used_today += 1

    async def _wait_turn(self) -> None:
        now = self._clock()
        start = max(now, self._paused_until)
        if self._rate is not None:
            interval = 1.0 / self._rate
            tolerance = (self._burst - 1) * interval
            tat = max(self._tat, start)
            start = max(start, tat - tolerance)
            self._tat = tat + interval
        if start > now:
            await anyio.sleep(start - now)
        self._requests += 1
        stamp = self._clock()
        if self._started is None:
            self._started = stamp
        self._recent.append(stamp)
        while self._recent and self._recent[0] < stamp - 1.0:
            self._recent.popleft()

    def on_success(self) -> None:
        """Report a success: raise the rate and concurrency gradually, up to their caps."""
        now = self._clock()
        self._successes += 1
        self._accepted.append(now)
        while self._accepted and self._accepted[0] < now - _WINDOW:
            self._accepted.popleft()
        if self._rate is not None:
            elapsed = min(1.0, max(0.0, now - self._last_increase))
            # Before a limit was measured, double every second (a slow start); after, creep
            # up 0.3% a second: a few percent of throttled answers at a 4 requests/s limit.
            growth = 2.0**elapsed if self._measured is None else 1.0 + 0.003 * elapsed
            ceiling = self._max_rate if self._max_rate is not None else math.inf
            self._rate = min(ceiling, self._rate * growth)
        self._last_increase = now
        total = int(self._limiter.total_tokens)
        if total < self._max_concurrency and self._successes >= total:
            self._successes = 0
            self._limiter.total_tokens = total + 1

    def _accepted_rate(self, now: float) -> float | None:
        """Successes per second over the last `_WINDOW` seconds, once that much has passed."""
        span = min(_WINDOW, now - self._started) if self._started is not None else 0.0
        if span < 1.0:
            return None
        return sum(1 for t in self._accepted if t >= now - span) / span

    def on_throttle(self, retry_after: float | None) -> None:
        """Report a throttle answer: lower rate and concurrency; pause for `retry_after`.

        The new rate is 97% of the rate the server accepted over the last few seconds (when
        throttled, that is the server's limit, measured), or 0.75 of the current one when
        too little has been seen yet. A request let through (by `slot`, in this task) before
        the last decrease left at the old pace, and its refusal is already accounted for: it
        pauses, but does not lower the rate again. Otherwise the N requests in flight when
        the server starts refusing would divide the rate N times at once, and recovery would
        take minutes (one decrease per round trip, as in TCP's congestion control).
        """
        self._throttles += 1
        self._successes = 0
        now = self._clock()
        sent_at = _SENT_AT.get()
        if sent_at is None or sent_at >= self._last_decrease:
            self._last_decrease = now
            accepted = self._accepted_rate(now)
            current = self._rate if self._rate is not None else len(self._recent) or 1.0
            if accepted is not None and accepted > 0:
                self._measured = accepted
                self._rate = max(0.1, min(0.97 * accepted, 0.97 * current))
            else:
                self._rate = max(0.1, 0.75 * current)
            self._limiter.total_tokens = max(1, int(self._limiter.total_tokens) * 3 // 4)
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
