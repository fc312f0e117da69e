"""What both simulators share to misbehave: seeded latency, failures before the handler
(a reset or a 5xx: no effect on the account), and failures after a write was applied (its
answer replaced by a 500, or lost with the connection).

`Faults` makes every draw from the app's one seeded generator, always in the same order,
and a zero rate draws nothing; `Faults.serve` plays them around a handler. Each dialect keeps
only its path prefix and the body of its 5xx answers (v1: a Tomcat HTML page; V3: a JSON
array).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol

from aiohttp import web

__all__ = ["ABORTED", "WRITE_METHODS", "FaultSettings", "Faults", "abort"]

#: Set on a request whose connection was aborted: its answer never reached the client (the
#: stats count it as `reset`).
ABORTED = web.RequestKey("aborted", bool)
#: The methods that change the account when they succeed.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: A failure before the handler: the connection reset, or a 500 or 503 answer.
Before = Literal["reset", 500, 503]
_SERVER_ERRORS: tuple[Literal[500, 503], ...] = (500, 503)
#: A failure after an applied write: a 500 answer ("error after commit"), or no answer.
After = Literal["error", "lose"]


class _Revisioned(Protocol):
    revision: int


class FaultSettings(Protocol):
    """The fault settings both dialects' configs name alike (see `Faults`)."""

    @property
    def latency_ms(self) -> float: ...
    @property
    def latency_jitter_ms(self) -> float: ...
    @property
    def reset_rate(self) -> float: ...
    @property
    def error_rate(self) -> float: ...
    @property
    def lose_answer_rate(self) -> float: ...


def abort(request: web.Request) -> None:
    """Drop `request`'s connection without an answer, and mark the request `ABORTED`."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    request[ABORTED] = True


class Faults:
    """The fault settings of one app, drawn from its seeded generator.

    Args:
        rng: The app's one seeded generator.
        latency_ms: Fixed latency of every request.
        latency_jitter_ms: Extra latency, uniform in `[0, latency_jitter_ms]`, or the median
            of a log-normal tail (sigma 0.6) with `latency_lognormal`.
        latency_lognormal: Draw the extra latency from the log-normal.
        reset_rate: Probability of a reset before the handler.
        error_rate: Probability of a 500 or 503 (even odds) before the handler.
        route_error_rates: Extra probabilities of a 500 or 503 by route label.
        error_after_commit_rate: Probability that an applied write is answered 500.
        lose_answer_rate: Probability that an applied write gets no answer.
        route_lose_rates: Extra probabilities of a lost answer by route label.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        latency_ms: float = 0.0,
        latency_jitter_ms: float = 0.0,
        latency_lognormal: bool = False,
        reset_rate: float = 0.0,
        error_rate: float = 0.0,
        route_error_rates: Mapping[str, float] | None = None,
        error_after_commit_rate: float = 0.0,
        lose_answer_rate: float = 0.0,
        route_lose_rates: Mapping[str, float] | None = None,
    ) -> None:
        self._rng = rng
        self._latency_ms = latency_ms
        self._jitter_ms = latency_jitter_ms
        self._lognormal = latency_lognormal
        self._reset_rate = reset_rate
        self._error_rate = error_rate
        self._route_rates = dict(route_error_rates or {})
        self._after_commit_rate = error_after_commit_rate
        self._lose_rate = lose_answer_rate
        self._route_lose = dict(route_lose_rates or {})

    @classmethod
    def from_config(
        cls,
        rng: random.Random,
        config: FaultSettings,
        *,
        latency_lognormal: bool = False,
        route_error_rates: Mapping[str, float] | None = None,
        error_after_commit_rate: float = 0.0,
        route_lose_rates: Mapping[str, float] | None = None,
    ) -> Faults:
        """The faults of a dialect's `config`, plus the settings only one dialect has."""
        return cls(
            rng,
            latency_ms=config.latency_ms,
            latency_jitter_ms=config.latency_jitter_ms,
            latency_lognormal=latency_lognormal,
            reset_rate=config.reset_rate,
            error_rate=config.error_rate,
            route_error_rates=route_error_rates,
            error_after_commit_rate=error_after_commit_rate,
            lose_answer_rate=config.lose_answer_rate,
            route_lose_rates=route_lose_rates,
        )

    def delay(self) -> float:
        """Seconds to wait before serving a request."""
        delay_ms = self._latency_ms
        if self._jitter_ms:
            if self._lognormal:
                delay_ms += self._rng.lognormvariate(math.log(self._jitter_ms), 0.6)
            else:
                delay_ms += self._rng.uniform(0.0, self._jitter_ms)
        return delay_ms / 1000

    def before(self, route: str = "") -> Before | None:
        """The failure of a request to `route` before its handler runs, if any."""
        rng, reset, error = self._rng, self._reset_rate, self._error_rate
        route_rate = self._route_rates.get(route, 0.0)
        if not (reset or error or route_rate):
            return None
        draw = rng.random()
        if draw < reset:
            return "reset"
        if draw < reset + error or (route_rate and rng.random() < route_rate):
            return rng.choice(_SERVER_ERRORS)
        return None

    def after_write(self, route: str = "") -> After | None:
        """The failure of a write to `route` after it was applied, if any."""
        rng = self._rng
        if self._after_commit_rate and rng.random() < self._after_commit_rate:
            return "error"
        if self._lose_rate and rng.random() < self._lose_rate:
            return "lose"
        route_rate = self._route_lose.get(route, 0.0)
        if route_rate and rng.random() < route_rate:
            return "lose"
        return None

    async def serve(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        *,
        store: _Revisioned,
        server_error: Callable[[int], web.StreamResponse],
        route: str = "",
    ) -> web.StreamResponse:
        """Serve `request` with `handler`, the faults played around it.

        A reset or 5xx request never reaches the handler, so it has no effect on the
        account. A write that succeeded bumps `store.revision` (the account changed); its
        answer may then be replaced by `server_error(500)`, or lost: the connection is
        aborted before it is sent.

        Args:
            request: The request.
            handler: What serves it.
            store: The account, whose `revision` tells a saver it changed.
            server_error: The dialect's 500 or 503 answer, by status.
            route: The request's route label, for `route_error_rates`.
        """
        delay = self.delay()
        if delay > 0:
            await asyncio.sleep(delay)
        before = self.before(route)
        if before == "reset":
            abort(request)
            # Nobody is left to read this answer: aiohttp's write fails with ConnectionError,
            # which it handles quietly.
            return web.Response(status=500)
        if before is not None:
            return server_error(before)
        response = await handler(request)
        if request.method in WRITE_METHODS and response.status < 400:
            store.revision += 1
            after = self.after_write(route)
            if after == "error":
                return server_error(500)
            if after == "lose":
                abort(request)  # applied, but the client never learns it
        return response
