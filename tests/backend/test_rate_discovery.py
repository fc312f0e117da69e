"""The governor's rate discovery, simulated: its `RateProbe` driven the way `RateGovernor`
drives it (turns taken one at a time, first come first served; one taken again after a
decrease), on a clock of its own, against the simulators' own token buckets
(`engine.simulator._throttle`) at 4, 40 and 400 requests/s and against a limit that changes
during the run. Minutes of traffic run in a fraction of a second, the same every time.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from engine.backend.governor import DOCUMENTED_RATE, RateProbe
from engine.simulator._throttle import TokenBuckets


@dataclass
class Traffic:
    """What a simulated run sent and learned."""

    seconds: float
    limit: Callable[[float], float]
    accepted: list[float] = field(default_factory=list)  # when each accepted answer came
    throttled: int = 0
    rates: list[tuple[float, float]] = field(default_factory=list)  # (when, rate) changes

    def achieved(self, start: float = 0.0) -> float:
        """Accepted requests per second from `start` on, over the limit then."""
        accepted = sum(1 for t in self.accepted if t >= start)
        allowed = sum(self.limit(start + i / 10) for i in range(int((self.seconds - start) * 10)))
        return accepted / (allowed / 10)

    @property
    def throttled_share(self) -> float:
        return self.throttled / (len(self.accepted) + self.throttled)

    def rate_at(self, when: float) -> float:
        return [rate for t, rate in self.rates if t <= when][-1]


def simulate(
    limit: Callable[[float], float],
    seconds: float,
    *,
    start: float = DOCUMENTED_RATE,
    discover: bool = True,
    concurrency: int = 8,
    rtt: float = 0.02,
    jitter: float = 0.0,
) -> Traffic:
    """`concurrency` workers, always busy, each sending its next request when its answer
    comes (`rtt` round trips, plus up to `jitter` seconds each way)."""
    now = [0.0]
    server = TokenBuckets(lambda: now[0])
    probe = RateProbe(start, ceiling=None if discover else start)
    draw = random.Random(7)
    traffic = Traffic(seconds, limit, rates=[(0.0, start)])
    events: list[tuple[float, int, str, float]] = []
    order = 0

    def push(when: float, kind: str, sent: float = 0.0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, kind, sent))

    queue: list[float] = []  # workers waiting for a turn, first come first served
    turn: tuple[float, int] | None = None  # the head's turn: when, and the decreases then

    def take_turn(when: float) -> None:
        nonlocal turn
        start = probe.turn(when)
        turn = (start, probe.decreases)
        push(start, "go")

    for _ in range(concurrency):
        push(0.0, "ready")
    while events:
        when, _, kind, sent = heapq.heappop(events)
        if when > seconds:
            break
        now[0] = when
        if kind == "ready":
            queue.append(when)
            if turn is None:
                take_turn(when)
        elif kind == "go":
            assert turn is not None
            if probe.decreases != turn[1]:  # lowered while it waited: taken again
                take_turn(when)
                continue
            queue.pop(0)
            push(when + rtt / 2 + draw.uniform(0, jitter), "arrive", when)
            turn = None
            if queue:
                take_turn(when)
        elif kind == "arrive":
            allowed = server.take("account", limit(when))
            push(when + rtt / 2 + draw.uniform(0, jitter), "ok" if allowed else "no", sent)
        else:
            if kind == "ok":
                traffic.accepted.append(when)
                probe.success(when, sent)
            else:
                traffic.throttled += 1
                probe.throttle(when, sent)
            assert probe.rate is not None
            if probe.rate != traffic.rates[-1][1]:
                traffic.rates.append((when, probe.rate))
            push(when, "ready")
    return traffic


@pytest.mark.parametrize(
    ("limit", "concurrency", "achieved"),
    [(4.0, 8, 0.95), (40.0, 8, 0.93), (400.0, 64, 0.85)],
    ids=["4/s", "40/s", "400/s"],
)
@pytest.mark.parametrize("jitter", [0.0, 0.05], ids=["steady", "jittery"])
def test_an_unannounced_limit_is_found_from_the_documented_rate(
    limit: float, concurrency: int, achieved: float, jitter: float
) -> None:
    """From 4/s, two minutes against an unannounced limit: most of it used, under 2% of the
    requests throttled, the first tries above the limit included."""
    traffic = simulate(lambda _: limit, 120, concurrency=concurrency, jitter=jitter)
    assert traffic.achieved() >= achieved, traffic.rates
    assert traffic.throttled_share < 0.02, (traffic.throttled, traffic.rates)


def test_no_rate_is_tried_above_twice_what_the_server_accepted() -> None:
    """Never a burst wider than the evidence: each rate tried is at most twice the most
    the server accepted in any one second (any span of a second, not only whole clock
    seconds) before it, or the start."""
    traffic = simulate(lambda _: 40.0, 60)
    for when, rate in traffic.rates[1:]:
        before = [t for t in traffic.accepted if t < when]
        best = max(
            (bisect.bisect_left(before, t + 1.0) - i for i, t in enumerate(before)), default=0
        )
        assert rate <= 2 * max(best, DOCUMENTED_RATE) + 1e-9, (when, rate, best)


def test_a_limit_that_falls_then_rises_during_the_run_is_followed() -> None:
    """40/s, then 10/s from the first minute, then 40/s from the second: within 10 s of the
    fall the rate is under the new limit, and within two minutes of the rise it is back
    over three quarters of it; throttles stay few."""

    def limit(t: float) -> float:
        return 10.0 if 60 <= t < 120 else 40.0

    traffic = simulate(limit, 240)
    assert traffic.rate_at(59) >= 0.85 * 40
    assert traffic.rate_at(70) <= 10.0
    assert traffic.achieved(70) >= 0.6
    assert traffic.rate_at(240) >= 0.75 * 40
    assert traffic.throttled_share < 0.03


def test_a_configured_rate_is_never_exceeded_and_meets_no_throttle() -> None:
    """Not discovering: the configured rate is a ceiling; at the server's own limit no
    request is throttled."""
    traffic = simulate(lambda _: 4.0, 60, discover=False, jitter=0.05)
    assert max(rate for _, rate in traffic.rates) == 4.0
    assert traffic.throttled == 0
    assert traffic.achieved() >= 0.97
