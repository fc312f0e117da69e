"""The request-rate governor every request of an account passes through.

One `RateGovernor` is shared by all stages (and may be shared by several accounts that
share an application's budget). It holds three limits:

- a rate: requests are spaced `1/rate` seconds apart (the generic cell rate algorithm, a
  token bucket of depth `burst`); `rate=None` means no rate limit until the server throttles;
- a concurrency: at most `concurrency` requests in flight (an anyio `CapacityLimiter`);
- a daily budget: at most `daily_budget` requests per UTC day, then `QuotaExhaustedError`.

The rate moves only on evidence (`RateProbe`). A rate is *proven* when a trial at it passed:
a stretch in which demand kept it busy and no request was throttled (1 s while nothing was
refused yet, then 2 s or longer). Until the first refusal it doubles at each proven rate
(TCP's slow start: never more than twice what the server has just accepted). A throttle
above the proven rate goes back a little under it, and the next try comes later (after 10 s,
doubling up to a minute); a throttle at or below it means the limit fell: a quarter off,
nothing proven. Requests still throttled 0.75 s after a decrease measure the limit (what
the server accepted of them). Above a proven rate it then tries halfway to the rate refused,
until within 5%; and, after the wait, 5% above the proven rate again (then 10%, 20%, ... while
accepted), which finds a limit raised during the run. It never goes above `rate` unless asked
to `discover` the limit (starting from `rate`, by default the API's documented 4
requests/s). A throttle also cuts the concurrency by a quarter (regained one slot per
`concurrency` successes) and pauses every request for `Retry-After` when the server sent
one; the requests already in flight when it came count once.
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
from engine.limiter import Held

__all__ = ["DOCUMENTED_RATE", "GovernorStats", "RateGovernor", "RateProbe"]

#: The rate both APIs document (4 requests/s): the default, and where discovery starts.
DOCUMENTED_RATE = 4.0
#: Seconds over which the accepted rate is measured when the server throttles a governor
#: that had no rate (`rate=None`).
_WINDOW = 3.0
#: A trial's length in seconds: long enough that a server's burst allowance (typically a
#: second's worth of requests) cannot make a rate half as high again as its limit look
#: accepted.
_TRIAL = 2.0
#: A trial's length in seconds before anything was refused (the doublings from where the
#: governor started): the allowance can make twice the limit look accepted for a second, but
#: the next doubling then meets an empty allowance and the check of its decrease measures
#: the limit; the doublings reach 40/s from 4/s in under 5 s instead of 9.
_SLOW_TRIAL = 1.0
#: How long the proven rate is kept after a refusal before trying above it again: doubled
#: at each refusal, up to `_MAX_WAIT`.
_FIRST_WAIT = 10.0
_MAX_WAIT = 60.0
#: After a refusal, the rate the governor goes back to, as a share of the proven rate: a
#: little under it, so the server's allowance, spent by the refused rate, fills up again.
_RECOVER = 0.95
#: Seconds after a decrease whose requests check it: their throttles are that decrease's
#: own, not new ones (longer than a round trip; each second of it above the limit costs
#: throttled requests). If requests of its second half are still throttled, the server's
#: allowance is spent and the rate is above its limit: what it accepted of them is the
#: limit, measured, and sets the rate (throttles of the first half may only be the
#: allowance filling up again after the decrease).
_CHECK = 1.5
#: Above this share of the proven rate, a refused one leaves a wide gap, searched with
#: short trials.
_WIDE = 1.25
#: How close the proven and refused rates must be for the search between them to stop.
_CLOSE = 1.05
#: The lowest rate a throttle can bring the governor to.
_MIN_RATE = 0.1

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


class RateProbe:
    """Where the rate stands, learned from the server's answers; no I/O, no waiting (the
    governor sleeps until `turn` says; a simulation can drive it on a clock of its own).

    Args:
        rate: the rate to start at (None: unlimited until the first throttle).
        ceiling: the rate it never goes above (None: none, it discovers the limit).
        burst: how many requests may go back to back after an idle spell.
    """

    def __init__(self, rate: float | None, *, ceiling: float | None, burst: int = 1) -> None:
        self.rate = rate
        self.ceiling = ceiling
        self.burst = burst
        self.proven: float | None = None  # the highest rate a trial passed at
        self.refused: float | None = None  # the lowest rate throttled above `proven`
        self._wait = _FIRST_WAIT
        self._refusals = 0
        self._step = 0.1  # the next increase above a limit that was raised
        self._tat = 0.0  # theoretical arrival time of the next request (GCRA)
        self._trial_start: float | None = None  # None: the next request starts a trial
        self._trial_length = _SLOW_TRIAL
        self._trial_sent = 0
        self._changed = -math.inf  # when the rate last changed
        #: how many times the rate was lowered: a turn taken before the last decrease is
        #: taken again at the new pace (`RateGovernor._wait_turn`).
        self.decreases = 0
        self._check: tuple[float, int, int] | None = None  # since when; answers ok, throttled
        self._sent: deque[float] = deque()  # requests of the last second (rate=None)
        self._accepted: deque[float] = deque()  # successes of the last _WINDOW seconds
        self._first: float | None = None  # when the first request went

    def turn(self, now: float, paused_until: float = 0.0) -> float:
        """When the next request may go (not before `now` nor `paused_until`); it is
        counted as sent then."""
        start = max(now, paused_until)
        if self.rate is not None:
            interval = 1.0 / self.rate
            tat = max(self._tat, start)
            start = max(start, tat - (self.burst - 1) * interval)
            self._tat = tat + interval
            if self._trial_start is None:
                self._trial_start, self._trial_sent = start, 0
            self._trial_sent += 1
        if self._first is None:
            self._first = start
        self._sent.append(start)
        while self._sent and self._sent[0] < start - 1.0:
            self._sent.popleft()
        return start

    def success(self, now: float, sent_at: float | None) -> None:
        """A request sent at `sent_at` was answered without a throttle: it may end the
        check of a decrease, and a trial that has lasted its length, kept busy, passes (its
        rate is proven) and the next one starts."""
        self._accepted.append(now)
        while self._accepted and self._accepted[0] < now - _WINDOW:
            self._accepted.popleft()
        if sent_at is None:
            return
        if self._check is not None:
            since, ok, throttled = self._check
            if sent_at < since + _CHECK:
                if sent_at >= since + _CHECK / 2:
                    self._check = (since, ok + 1, throttled)
                return
            self._checked(now)
        start, rate = self._trial_start, self.rate
        if start is None or rate is None or sent_at < start:
            return
        elapsed = sent_at - start
        # Busy: at least 90% of the requests the rate allowed went (demand reached it).
        if elapsed < self._trial_length or self._trial_sent < 0.9 * rate * elapsed:
            if elapsed > 4 * self._trial_length:  # not busy: start again, nothing proven
                self._trial_start = None
            return
        self._proved(rate, sent_at)

    def _checked(self, now: float) -> None:
        """The check of the last decrease is over: if some of its requests were throttled,
        the server's allowance was spent and what it accepted of them is its limit."""
        assert self._check is not None
        _, ok, throttled = self._check
        self._check = None
        if not throttled or ok >= 0.9 * (ok + throttled):
            return  # none, or a few: the allowance refilling after the decrease
        measured = ok / (_CHECK / 2)
        self.refused = max(measured, _MIN_RATE)
        self.proven = self.rate = max(_MIN_RATE, 0.97 * measured)
        self._changed, self._trial_start = now, None
        self._check = (now, 0, 0)  # the allowance is empty: a few more may come
        self.decreases += 1
        self._tat = now

    def _proved(self, rate: float, now: float) -> None:
        higher = self.proven is None or rate > self.proven
        self.proven = rate if self.proven is None else max(self.proven, rate)
        self._trial_start = None
        if not self._refusals:  # at most twice what was just accepted (TCP's slow start)
            after, self._trial_length = 2 * self.proven, _SLOW_TRIAL
        else:
            # Once anything was refused, a rate above the proven one is tried for as long
            # as the wait (10 s and more): a server's burst allowance can make a short try
            # look accepted up to twice its limit, a long one only a few percent above it.
            if higher:  # a try above the proven rate passed: the next may come sooner
                self._wait = max(_FIRST_WAIT, self._wait / 2)
            wide = self.refused is not None and self.refused > _WIDE * self.proven
            self._trial_length = _TRIAL if wide else self._wait
            if self.refused is not None and rate >= self.refused:
                self.refused = None  # the limit was raised since
            if self.refused is None:  # growing steps: 10%, 20%, 40%, ... twice
                after = self.proven * (1 + self._step)
                self._step = min(1.0, 2 * self._step)
            elif self.refused / self.proven > _CLOSE:  # halfway to the rate refused
                after = (self.proven + self.refused) / 2
            else:  # close enough: 5% above, now and then
                after = self.proven * _CLOSE
        if self.ceiling is not None:
            after = min(after, self.ceiling)
        if after != rate:
            self.rate, self._changed = after, now

    def throttle(self, now: float, sent_at: float | None) -> bool:
        """A request sent at `sent_at` was throttled: lower the rate, once for all the
        requests sent before the last change (they left at the old pace: their refusals are
        already accounted for) and counted by the check of a decrease for those sent within
        `_CHECK` of it. Returns whether the rate was lowered."""
        if self._check is not None and sent_at is not None:
            since, ok, throttled = self._check
            if sent_at < since + _CHECK:
                if sent_at >= since + _CHECK / 2:
                    self._check = (since, ok, throttled + 1)
                return False
            self._checked(now)
        if sent_at is not None and sent_at < self._changed:
            return False
        self._changed = now
        self._check = (now, 0, 0)
        self._trial_start = None
        self.decreases += 1
        self._tat = now  # turns are taken afresh at the new pace
        rate = self.rate
        if rate is None:  # no rate yet: just under what the server accepted
            accepted = self._accepted_rate(now)
            sent = float(len(self._sent)) or 1.0
            self.refused = sent
            self.rate = max(_MIN_RATE, 0.97 * accepted if accepted else 0.75 * sent)
            self._trial_length = self._wait
        elif self.proven is not None and rate > self.proven:
            # Too far: back under what was proven. Far above it, the next try is soon (a
            # try fooled by the allowance is caught by the check of the decrease after
            # it); close to it, after a wait that grows with each refusal.
            self.refused = rate
            self.rate = _RECOVER * self.proven
            if rate > _WIDE * self.proven:
                self._trial_length = _CHECK + _TRIAL
            else:
                self._trial_length, self._wait = self._wait, min(_MAX_WAIT, 2 * self._wait)
        else:  # refused at a rate proven or never tried: the limit is lower
            self.refused = rate
            self.proven = None
            self.rate = max(_MIN_RATE, 0.75 * rate)
            self._trial_length = self._wait
        self._refusals += 1
        self._step = 0.1
        return True

    def _accepted_rate(self, now: float) -> float | None:
        """Successes per second over the last `_WINDOW` seconds, once a second has passed."""
        span = min(_WINDOW, now - self._first) if self._first is not None else 0.0
        if span < 1.0:
            return None
        return sum(1 for t in self._accepted if t >= now - span) / span


class RateGovernor:
    """Spaces, bounds and budgets requests; learns the rate from the server's answers.

    Args:
        rate: requests per second: the most it sends, or with `discover` where it starts
            (None: unlimited until the server throttles).
        discover: probe above `rate` for the server's limit (see the module's docstring).
        concurrency: the most requests in flight at once.
        burst: how many requests may go back to back after an idle spell.
        daily_budget: the most requests per UTC day (None: no budget).
        used_today: requests already spent today (e.g. by an earlier run).
        clock: a monotonic clock in seconds (tests inject one).
    """

    def __init__(
        self,
        *,
        rate: float | None = DOCUMENTED_RATE,
        discover: bool = False,
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
        self._probe = RateProbe(rate, ceiling=None if discover else rate, burst=burst)
        self._max_concurrency = concurrency
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._turns = anyio.Lock()
        self._daily_budget = daily_budget
        self._used_today = used_today
        self._day_ends = 0.0
        self._start_day()
        self._clock = clock
        self._paused_until = 0.0
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
            rate=self._probe.rate,
            concurrency=int(self._limiter.total_tokens),
            in_flight=lim.borrowed_tokens,
            waiting=lim.tasks_waiting,
        )

    def _start_day(self) -> None:
        """Note when the current UTC day ends (a timestamp: compared once a request)."""
        today = dt.datetime.fromtimestamp(time.time(), dt.UTC).date()
        self._day_ends = dt.datetime.combine(
            today + dt.timedelta(days=1), dt.time(), dt.UTC
        ).timestamp()

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
        async with Held(self._limiter):  # at once when a slot is free (engine/limiter.py)
            if not prepaid:
                self._spend_budget()
                await self._wait_turn()
            # The task that sends the request is the one that reports its answer.
            _SENT_AT.set(self._clock())
            yield

    def _spend_budget(self) -> None:
        if time.time() >= self._day_ends:  # a new UTC day: its budget is whole again
            self._start_day()
            self._used_today = 0
        if self._daily_budget is not None and self._used_today >= self._daily_budget:
            raise QuotaExhaustedError(
                f"the daily budget of {self._daily_budget} requests is spent; it resets at "
                "midnight UTC. Run the same command again then to resume."
            )
        self._used_today += 1

    async def _wait_turn(self) -> None:
        if self._probe.rate is None and self._paused_until <= self._clock():
            self._probe.turn(self._clock())  # unlimited: no turn to wait for
            self._requests += 1
            return
        # One task takes its turn at a time, the others queue (first come, first served):
        # no turn is booked far ahead at a pace the next answer may change.
        async with self._turns:
            while True:
                decreases = self._probe.decreases
                now = self._clock()
                start = self._probe.turn(now, self._paused_until)
                if start > now:
                    await anyio.sleep(start - now)
                if self._probe.decreases == decreases:
                    break
                # The rate was lowered while this turn waited: take one at the new pace.
        self._requests += 1

    def on_success(self) -> None:
        """Report a success (from the task that sent the request): it may prove the rate,
        and it regains one slot of concurrency per `concurrency` successes, up to the cap."""
        self._successes += 1
        self._probe.success(self._clock(), _SENT_AT.get())
        total = int(self._limiter.total_tokens)
        if total < self._max_concurrency and self._successes >= total:
            self._successes = 0
            self._limiter.total_tokens = total + 1

    def on_throttle(self, retry_after: float | None) -> None:
        """Report a throttle answer (from the task that sent the request): lower rate and
        concurrency, once for the requests in flight at the last change (see
        `RateProbe.throttle`); pause every request for `retry_after`."""
        self._throttles += 1
        self._successes = 0
        now = self._clock()
        if self._probe.throttle(now, _SENT_AT.get()):
            self._limiter.total_tokens = max(1, int(self._limiter.total_tokens) * 3 // 4)
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
