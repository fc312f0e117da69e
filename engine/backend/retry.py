"""The one retry policy: what is retried, how often, and how long we wait.

Retried: `RetryableApiError` (connection lost, timeouts, 5xx, 429, throttle 403s, bodies
that do not parse). Never retried: 400, 401, 404, 409, 415 (they raise other classes).

The wait before attempt n+1 is ``min(wait_max, wait_initial * 2**(n-1)) + uniform(0,
wait_jitter)``, but never less than a `Retry-After` the server sent. A throttle without
`Retry-After` is the governor's to pace: after a first try throttled, the retry waits only up
to a quarter of the jitter; a later throttle's backoff is one step shorter than another
error's. Attempts and total time
are both bounded; when they run out the *last* error is raised (never tenacity's
`RetryError`). All times are float seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from engine.errors import ConfigError, RetryableApiError, ThrottledError

__all__ = ["SINGLE_ATTEMPT", "RetryPolicy"]

log = logging.getLogger("engine.backend")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How the client retries a request.

    Attributes:
        attempts: tries per request, the first included.
        timeout: total seconds one request may spend across its attempts.
        wait_initial: the first backoff, in seconds.
        wait_max: the cap on one backoff (before jitter), in seconds.
        wait_jitter: up to this many random seconds added to each backoff.
    """

    attempts: int = 8
    timeout: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")
        for name in ("timeout", "wait_initial", "wait_max", "wait_jitter"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RetryPolicy.{name} cannot be negative")

    def wait_before(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`, after `error` (the same backoff as
        `retrying`, for a caller that runs its own loop)."""
        retry_after = error.retry_after if isinstance(error, ThrottledError) else None
        if isinstance(error, ThrottledError) and retry_after is None:
            if attempt == 1:
                # The governor, told of the throttle, has already lowered its rate: the
                # retry waits for its turn at the new pace. A backoff as well would leave
                # the governor's check of its decrease without requests to measure the limit
                # by (a discovery at 40/s took 69 s instead of 63 for the same contacts).
                return random.uniform(0, self.wait_jitter / 4)
            attempt -= 1  # a second throttle of the same request backs off as usual
        seconds: float = min(self.wait_max, self.wait_initial * 2.0 ** (attempt - 1))
        seconds += random.uniform(0, self.wait_jitter)
        if retry_after is not None:
            seconds = max(seconds, float(retry_after))
        return seconds

    async def call(
        self,
        attempt: Callable[[int], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        on_retry: Callable[[RetryableApiError, float], None] | None = None,
    ) -> T:
        """`attempt(n)` for n = 1, 2, … until one returns, as `retrying` runs it: the same
        errors retried, the same waits, attempts and time budget, the last error raised.

        The first attempt runs outside tenacity: nearly every request needs no retry, and a
        tenacity loop per request (its objects, its wrapping of each call) was about a
        tenth of the per-contact path's CPU. A request that fails once goes on in
        `retrying`, for the attempts and the time left.
        """
        started = time.monotonic()
        try:
            return await attempt(1)
        except RetryableApiError as error:
            if self.attempts == 1:
                raise
            first = error
        seconds = self.wait_before(1, first)
        if time.monotonic() - started + seconds >= self.timeout:  # as stop_before_delay
            raise first
        log.info("retry 1 in %.2fs after: %s", seconds, first)
        if on_retry is not None:
            on_retry(first, seconds)
        await (sleep or anyio.sleep)(seconds)
        rest = dataclasses.replace(
            self,
            attempts=self.attempts - 1,
            timeout=max(0.0, self.timeout - (time.monotonic() - started)),
        )
        async for tries in rest.retrying(sleep=sleep, on_retry=on_retry, done=1):
            with tries:
                return await attempt(tries.retry_state.attempt_number + 1)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def retrying(
        self,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        on_retry: Callable[[RetryableApiError, float], None] | None = None,
        done: int = 0,
    ) -> AsyncRetrying:
        """A tenacity `AsyncRetrying` for this policy.

        Args:
            sleep: the sleep to use (tests pass a no-op).
            on_retry: called with the error and the wait before each retry.
            done: attempts made before this loop (`call`'s first): the backoff goes on
                from there.
        """

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.wait_before(state.attempt_number + done, error)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            seconds = state.next_action.sleep if state.next_action else 0.0
            if isinstance(error, RetryableApiError):
                number = state.attempt_number + done
                log.info("retry %d in %.2fs after: %s", number, seconds, error)
                if on_retry is not None:
                    on_retry(error, seconds)

        extra = {"sleep": sleep} if sleep is not None else {}
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableApiError),
            # stop_before_delay, not stop_after_delay: the latter lets one more wait (and a
            # server's Retry-After of any length) run past `timeout`.
            stop=stop_after_attempt(self.attempts) | stop_before_delay(self.timeout),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
            **extra,  # type: ignore[arg-type]
        )


#: One attempt, no retry: for a request whose caller retries it itself, redoing a check
#: before each attempt (see `Account.back_off`).
SINGLE_ATTEMPT = RetryPolicy(attempts=1)
