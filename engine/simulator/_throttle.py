"""What both simulators share to throttle: a token bucket per key and a daily quota per key
that resets at 00:00 UTC, each on a clock of its own so tests can inject a fake one.

Each dialect keeps only how it answers a refusal (v1: a 403, 429 or 503 text page; V3: a 429
JSON object `throttled` or `quota_exceeded`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Literal

__all__ = ["DAY", "DailyQuota", "Refusal", "Throttle", "TokenBuckets", "default_burst"]

#: Seconds in a UTC day: quota days are `epoch seconds // DAY`.
DAY = 86400

#: Why a request was refused: over a request rate, or over the day's quota.
Refusal = Literal["rate", "quota"]


def default_burst(rate: float) -> float:
    """A bucket of one second's worth of requests (at least one)."""
    return float(max(1, math.ceil(rate)))


class TokenBuckets:
    """Token buckets by key, refilled continuously at each bucket's rate.

    Args:
        clock: Seconds; only differences matter (a monotonic clock, or an injected fake: a
            frozen one never refills a bucket). A clock going back refills nothing.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable, rate: float, burst: float | None = None) -> bool:
        """Take one token from `key`'s bucket (full at first): whether there was one.

        Args:
            key: The bucket.
            rate: Tokens added per second.
            burst: The bucket's size; `None` = `default_burst(rate)`.
        """
        size = default_burst(rate) if burst is None else burst
        now = self._clock()
        tokens, last = self._buckets.get(key, (size, now))
        tokens = min(size, tokens + max(0.0, now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


class DailyQuota:
    """At most `limit` requests per key per UTC day; a new day starts at 00:00 UTC.

    Args:
        limit: Requests per day per key.
        clock: Epoch seconds.
    """

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._days: dict[str, tuple[int, int]] = {}

    def _used(self, key: str, day: int) -> int:
        seen_day, count = self._days.get(key, (day, 0))
        return count if seen_day == day else 0

    def take(self, key: str) -> bool:
        """Count one request for `key`: whether today's quota allowed it (a refused one is
        not counted)."""
        day = int(self._clock() // DAY)
        count = self._used(key, day)
        if count >= self.limit:
            return False
        self._days[key] = (day, count + 1)
        return True

    def remaining(self, key: str) -> int:
        """Requests left today for `key`."""
        return self.limit - self._used(key, int(self._clock() // DAY))

    def seconds_to_reset(self) -> float:
        """Seconds until the next 00:00 UTC."""
        return DAY - self._clock() % DAY


class Throttle:
    """One rate per key, optional extra rates per (key, endpoint), and a daily quota per key.

    A request is checked against the key's rate, then its endpoint's, then the quota; the
    first refusal wins (a token already taken from a rate before is not given back, and a
    refused request does not count against the quota).

    Args:
        rate: Requests per second per key; `None` = no limit.
        burst: The key's bucket size; `None` = `default_burst(rate)`.
        quota: Requests per UTC day per key; `None` = no quota.
        endpoint_rates: Requests per second per key on one endpoint, by endpoint label
            (buckets of `default_burst(rate)`).
        bucket_clock: Seconds, for the buckets.
        day_clock: Epoch seconds, to tell UTC days apart.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        burst: float | None = None,
        quota: int | None,
        endpoint_rates: Mapping[str, float] | None = None,
        bucket_clock: Callable[[], float],
        day_clock: Callable[[], float],
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._endpoint_rates = dict(endpoint_rates or {})
        self._buckets = TokenBuckets(bucket_clock)
        self.quota = None if quota is None else DailyQuota(quota, day_clock)

    def refusal(self, key: str, endpoint: str = "") -> Refusal | None:
        """Take one request for `key` on `endpoint`: `None` when allowed, else `"rate"` or
        `"quota"`."""
        if self._rate is not None and not self._buckets.take((key, ""), self._rate, self._burst):
            return "rate"
        endpoint_rate = self._endpoint_rates.get(endpoint)
        if endpoint_rate is not None and not self._buckets.take((key, endpoint), endpoint_rate):
            return "rate"
        if self.quota is not None and not self.quota.take(key):
            return "quota"
        return None

    def remaining(self, key: str) -> int | None:
        """Requests left today for `key` (`None` without a quota)."""
        return None if self.quota is None else self.quota.remaining(key)
