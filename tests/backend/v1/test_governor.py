"""The rate governor: spacing, burst, throttle response, recovery, budget, and its state."""

from __future__ import annotations

import asyncio
import itertools
import time

import anyio
import pytest

from engine.backend.governor import _SENT_AT, RateGovernor
from engine.errors import ConfigError, QuotaExhaustedError


class FakeClock:
    """A monotonic clock that only moves when the governor sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock; anyio.sleep advances it instead of waiting (for this test only)."""
    fake = FakeClock()
    monkeypatch.setattr(anyio, "sleep", fake.sleep)
    return fake


async def _starts(governor: RateGovernor, clock: FakeClock, n: int) -> list[float]:
    """Take `n` slots one after another; return the (fake) time each request went out."""
    starts = []
    for _ in range(n):
        async with governor.slot():
            starts.append(clock.now)
    return starts


async def test_requests_spaced_one_over_rate(clock: FakeClock) -> None:
    """At rate 4/s, back-to-back requests go out 0.25 s apart, the first at once."""
    governor = RateGovernor(rate=4.0, clock=clock)
    starts = await _starts(governor, clock, 5)
    assert [s - 1000.0 for s in starts] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


async def test_idle_time_is_not_saved_up_without_burst(clock: FakeClock) -> None:
    """With burst 1, an idle spell does not allow two requests back to back afterwards."""
    governor = RateGovernor(rate=2.0, clock=clock)
    await _starts(governor, clock, 1)
    clock.now += 10.0
    starts = await _starts(governor, clock, 2)
    assert starts[1] - starts[0] == pytest.approx(0.5)


async def test_burst(clock: FakeClock) -> None:
    """With burst 3, three requests go out at once, then the rest are spaced 1/rate."""
    governor = RateGovernor(rate=4.0, burst=3, clock=clock)
    starts = await _starts(governor, clock, 6)
    assert [s - 1000.0 for s in starts] == pytest.approx([0.0, 0.0, 0.0, 0.25, 0.5, 0.75])


async def test_unlimited_rate_never_waits(clock: FakeClock) -> None:
    """rate=None lets requests through without any wait."""
    governor = RateGovernor(rate=None, clock=clock)
    await _starts(governor, clock, 20)
    assert clock.sleeps == []
    assert governor.stats().requests == 20


async def test_tiny_real_rate_spaces_requests() -> None:
    """With the real clock, three requests at 50/s take at least two intervals."""
    governor = RateGovernor(rate=50.0)
    began = time.monotonic()
    for _ in range(3):
        async with governor.slot():
            pass
    assert time.monotonic() - began >= 2 / 50 - 0.005


def test_throttle_without_a_measure_cuts_a_quarter() -> None:
    """With under a second of history, a throttle cuts rate and concurrency by a quarter,
    never below 0.1/s and 1."""
    governor = RateGovernor(rate=4.0, concurrency=8)
    governor.on_throttle(None)
    assert (governor.stats().rate, governor.stats().concurrency) == (3.0, 6)
    governor.on_throttle(None)
    assert (governor.stats().rate, governor.stats().concurrency) == (2.25, 4)
    for _ in range(40):
        governor.on_throttle(None)
    stats = governor.stats()
    assert (stats.rate, stats.concurrency, stats.throttles) == (0.1, 1, 42)


async def test_throttle_sets_the_rate_just_under_the_accepted_rate(clock: FakeClock) -> None:
    """After seconds of history, a throttle sets the rate to 97% of what the server accepted
    over the last three seconds: its limit, measured."""
    governor = RateGovernor(rate=None, clock=clock)
    for _ in range(40):  # 4 s at 10 requests/s, every one accepted
        await _starts(governor, clock, 1)
        governor.on_success()
        clock.now += 0.1
    governor.on_throttle(None)
    assert governor.stats().rate == pytest.approx(0.97 * 10, rel=0.04)


def test_requests_in_flight_before_a_decrease_do_not_lower_it_again() -> None:
    """The refusals of requests sent before the last decrease count as throttles but lower
    the rate only once (one decrease per round trip)."""
    governor = RateGovernor(rate=4.0, concurrency=8)
    sent = _SENT_AT.set(0.0)  # this task's request left before the decrease below
    try:
        governor._probe._changed = 1.0  # a decrease happened after it was sent
        governor.on_throttle(None)
        governor.on_throttle(None)
    finally:
        _SENT_AT.reset(sent)
    stats = governor.stats()
    assert (stats.rate, stats.concurrency, stats.throttles) == (4.0, 8, 2)


async def test_throttle_honours_retry_after(clock: FakeClock) -> None:
    """After a throttle with retry_after, the next request waits that long."""
    governor = RateGovernor(rate=None, clock=clock)
    await _starts(governor, clock, 1)
    governor.on_throttle(12.5)
    (start,) = await _starts(governor, clock, 1)
    assert start - 1000.0 == pytest.approx(12.5)


async def test_throttle_without_retry_after_does_not_pause(clock: FakeClock) -> None:
    """A throttle without retry_after slows the rate but adds no pause of its own."""
    governor = RateGovernor(rate=4.0, clock=clock)
    await _starts(governor, clock, 1)
    clock.now += 5.0
    governor.on_throttle(None)
    await _starts(governor, clock, 1)
    assert clock.sleeps == []


async def test_success_recovers_gradually_up_to_the_cap(clock: FakeClock) -> None:
    """After a throttle, successes bring concurrency back one slot per `concurrency`
    successes, and the rate back to its cap by trials (a busy stretch with no throttle),
    never above it."""
    governor = RateGovernor(rate=4.0, concurrency=8, clock=clock)
    await _starts(governor, clock, 1)
    governor.on_throttle(None)  # 3.0/s, 6 in flight
    assert (governor.stats().rate, governor.stats().concurrency) == (3.0, 6)
    for _ in range(6):
        governor.on_success()
    assert governor.stats().concurrency == 7  # one more slot after `concurrency` successes
    rates: list[float] = []
    for _ in range(400):  # busy: one request after another, each accepted
        await _starts(governor, clock, 1)
        governor.on_success()
        rate = governor.stats().rate
        assert rate is not None
        rates.append(rate)
    assert rates == sorted(rates)
    assert rates[0] == 3.0
    assert max(rates) == 4.0
    assert governor.stats().concurrency == 8


async def test_a_rate_above_the_proven_one_is_tried_soon_far_from_it_late_near_it(
    clock: FakeClock,
) -> None:
    """Discovering: twice the rate after each busy second while nothing is refused; then
    halfway between the proven and the refused rate, soon (after the 1.5 s check and a 2 s
    trial) while the refused one is over 25% above, and only after a 10 s wait when it is closer."""
    governor = RateGovernor(rate=4.0, discover=True, clock=clock)
    changes: list[tuple[float, float]] = []

    async def busy_until_above(rate: float) -> float:
        """Busy until the governor tries a rate above `rate`; when it did."""
        while True:
            await _starts(governor, clock, 1)
            governor.on_success()
            now = governor.stats().rate
            assert now is not None
            if not changes or changes[-1][1] != now:
                changes.append((clock.now - 1000.0, now))
            if now > rate:
                return clock.now - 1000.0

    await busy_until_above(8.0)
    assert [r for _, r in changes] == [4.0, 8.0, 16.0]
    assert all(b - a >= 1.0 for (a, _), (b, _) in itertools.pairwise(changes)), changes
    for refused, tried in [(16.0, 12.0), (12.0, 10.0), (10.0, 9.0)]:
        governor.on_throttle(None)  # refused: back just under the proven 8/s
        assert governor.stats().rate == pytest.approx(0.95 * 8)
        since = clock.now - 1000.0
        when = await busy_until_above(8.0)
        assert governor.stats().rate == pytest.approx(tried)  # halfway to the refused
        wide = refused > 1.25 * 8
        assert when - since >= (1.5 + 2.0 if wide else 10.0)
        assert when - since < (10.0 if wide else 30.0)


def test_success_at_the_cap_changes_nothing() -> None:
    """Successes without any throttle keep rate and concurrency at their configured caps."""
    governor = RateGovernor(rate=4.0, concurrency=3)
    for _ in range(50):
        governor.on_success()
    assert (governor.stats().rate, governor.stats().concurrency) == (4.0, 3)


async def test_unlimited_rate_learns_on_first_throttle(clock: FakeClock) -> None:
    """With rate=None and too little history to measure, the first throttle sets the rate
    to three quarters of the last second's requests."""
    governor = RateGovernor(rate=None, clock=clock)
    for _ in range(8):
        await _starts(governor, clock, 1)
        clock.now += 0.05
    governor.on_throttle(None)
    assert governor.stats().rate == pytest.approx(0.75 * 8)


def test_unlimited_rate_learns_a_floor_without_history() -> None:
    """A throttle before any request gives rate=None a rate of 0.75/s (a quarter off 1/s)."""
    governor = RateGovernor(rate=None)
    governor.on_throttle(None)
    assert governor.stats().rate == 0.75


async def test_daily_budget(clock: FakeClock) -> None:
    """After `daily_budget` requests, the next raises QuotaExhaustedError and is not counted."""
    governor = RateGovernor(rate=None, daily_budget=3, clock=clock)
    await _starts(governor, clock, 3)
    assert governor.used_today == 3
    with pytest.raises(QuotaExhaustedError, match="daily budget of 3"):
        await _starts(governor, clock, 1)
    assert governor.stats().requests == 3
    assert governor.stats().in_flight == 0


async def test_daily_budget_counts_earlier_use(clock: FakeClock) -> None:
    """Requests already spent today (used_today) count against the budget."""
    governor = RateGovernor(rate=None, daily_budget=10, used_today=9, clock=clock)
    await _starts(governor, clock, 1)
    with pytest.raises(QuotaExhaustedError):
        await _starts(governor, clock, 1)


async def test_the_daily_budget_is_whole_again_on_the_next_utc_day(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget spent, a request the next UTC day (after 00:00:00) goes and counts as the
    first of that day; one a second before midnight is still refused."""
    import datetime as dt

    from engine.backend import governor as module

    day = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    monkeypatch.setattr(module.time, "time", lambda: day.timestamp() + 86_399.0)
    governor = RateGovernor(rate=None, daily_budget=2, used_today=2, clock=clock)
    with pytest.raises(QuotaExhaustedError):
        await _starts(governor, clock, 1)

    monkeypatch.setattr(module.time, "time", lambda: day.timestamp() + 86_400.0)
    await _starts(governor, clock, 1)
    assert governor.used_today == 1


async def test_concurrency_bounds_requests_in_flight() -> None:
    """No more than `concurrency` requests hold a slot at once; the others wait."""
    governor = RateGovernor(rate=None, concurrency=2)
    release = anyio.Event()
    peak = 0

    async def request() -> None:
        nonlocal peak
        async with governor.slot():
            peak = max(peak, governor.stats().in_flight)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(request)
        await anyio.wait_all_tasks_blocked()
        stats = governor.stats()
        assert (stats.in_flight, stats.waiting) == (2, 3)
        release.set()
    assert peak == 2
    assert governor.stats().requests == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"rate": 0.0}, "rate", id="zero-rate"),
        pytest.param({"rate": -4.0}, "rate", id="negative-rate"),
        pytest.param({"rate": float("nan")}, "rate", id="nan-rate"),
        pytest.param({"concurrency": 0}, "concurrency", id="zero-concurrency"),
        pytest.param({"burst": 0}, "burst", id="zero-burst"),
        pytest.param({"daily_budget": 0}, "budget", id="zero-budget"),
    ],
)
def test_invalid_settings_refused(kwargs: dict[str, float], match: str) -> None:
    """Settings that cannot work raise ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=match):
        RateGovernor(**kwargs)  # type: ignore[arg-type]


async def test_repr_shows_state(clock: FakeClock) -> None:
    """repr shows the rate, slots in flight, waiting tasks, requests and throttles."""
    governor = RateGovernor(rate=4.0, concurrency=8, clock=clock)
    assert repr(governor) == (
        "<RateGovernor [rate 4.00/s | 0/8 in flight, 0 waiting | 0 requests, 0 throttled]>"
    )
    await _starts(governor, clock, 2)
    governor.on_throttle(None)
    async with governor.slot():
        assert repr(governor) == (
            "<RateGovernor [rate 3.00/s | 1/6 in flight, 0 waiting | 3 requests, 1 throttled]>"
        )
    assert "rate unlimited" in repr(RateGovernor(rate=None))
