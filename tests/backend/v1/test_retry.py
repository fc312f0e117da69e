"""The retry policy: what is retried, how long it waits, and how it ends."""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest
import tenacity

from engine.backend.retry import RetryPolicy
from engine.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConflictError,
    ConnectionLostError,
    DoNotMailError,
    MalformedResponseError,
    NotFoundError,
    QuotaExhaustedError,
    ServerError,
    ThrottledError,
    UnsupportedMediaError,
)

NO_WAIT = {"wait_initial": 0.0, "wait_max": 0.0, "wait_jitter": 0.0}


class FakeTime:
    """A clock for tenacity that only moves when the policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """Tenacity's clock, replaced by one that advances only on (fake) sleeps."""
    fake = FakeTime()
    monkeypatch.setattr(tenacity, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


async def _run(
    policy: RetryPolicy,
    errors: list[BaseException | None],
    sleep: Callable[[float], object],
    on_retry: Callable[[object, float], None] | None = None,
) -> tuple[str, int]:
    """Run attempts that raise `errors` in turn (None: succeed); return the result and calls."""
    calls = 0
    async for attempt in policy.retrying(sleep=sleep, on_retry=on_retry):  # type: ignore[arg-type]
        with attempt:
            error = errors[min(calls, len(errors) - 1)]
            calls += 1
            if error is not None:
                raise error
            return "ok", calls
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"attempts": 0}, id="zero-attempts"),
        pytest.param({"attempts": -1}, id="negative-attempts"),
        pytest.param({"timeout": -1.0}, id="negative-timeout"),
        pytest.param({"wait_initial": -0.1}, id="negative-initial"),
        pytest.param({"wait_max": -1.0}, id="negative-max"),
        pytest.param({"wait_jitter": -1.0}, id="negative-jitter"),
    ],
)
def test_invalid_policy_refused(kwargs: dict[str, float]) -> None:
    """Impossible settings raise ConfigError naming the setting."""
    (name,) = kwargs
    with pytest.raises(ConfigError, match=name):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults_bound_attempts_and_time() -> None:
    """The default policy bounds both attempts and total time, stamina-style."""
    policy = RetryPolicy()
    assert policy.attempts == 8
    assert 0 < policy.timeout < float("inf")
    assert policy.wait_initial <= policy.wait_max


def test_policy_is_frozen_and_keyword_only() -> None:
    """A policy cannot be changed after creation or built positionally."""
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]


async def test_success_after_retryable_errors(fake_time: FakeTime) -> None:
    """Retryable errors are retried until an attempt succeeds."""
    errors: list[BaseException | None] = [
        ServerError("boom", status=500),
        ConnectionLostError("reset"),
        MalformedResponseError("cut short"),
        None,
    ]
    assert await _run(RetryPolicy(attempts=4, **NO_WAIT), errors, fake_time.sleep) == ("ok", 4)


@pytest.mark.parametrize("attempts", [1, 2, 5])
async def test_attempts_bounded_and_last_error_raised(fake_time: FakeTime, attempts: int) -> None:
    """After `attempts` tries the last error itself is raised, never tenacity's RetryError."""
    errors: list[BaseException | None] = [ServerError(f"boom {n}") for n in range(10)]
    with pytest.raises(ServerError, match=f"boom {attempts - 1}$") as caught:
        await _run(RetryPolicy(attempts=attempts, **NO_WAIT), errors, fake_time.sleep)
    assert not isinstance(caught.value, tenacity.RetryError)
    assert len(fake_time.sleeps) == attempts - 1


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(BadRequestError("400"), id="400"),
        pytest.param(AuthenticationError("401"), id="401"),
        pytest.param(DoNotMailError("403"), id="403-dnm"),
        pytest.param(NotFoundError("404"), id="404"),
        pytest.param(ConflictError("409"), id="409"),
        pytest.param(UnsupportedMediaError("415"), id="415"),
        pytest.param(QuotaExhaustedError("quota"), id="quota"),
        pytest.param(ApiError("plain"), id="api-error"),
        pytest.param(ValueError("a bug"), id="not-an-api-error"),
    ],
)
async def test_non_retryable_errors_pass_through_at_once(
    fake_time: FakeTime, error: BaseException
) -> None:
    """Errors that are not RetryableApiError are raised on the first attempt, unchanged."""
    calls: list[int] = []

    async def attempt_once() -> None:
        async for attempt in RetryPolicy(attempts=5, **NO_WAIT).retrying(sleep=fake_time.sleep):
            with attempt:
                calls.append(1)
                raise error

    with pytest.raises(type(error)) as caught:
        await attempt_once()
    assert caught.value is error
    assert calls == [1]
    assert fake_time.sleeps == []


async def test_wait_honours_retry_after(fake_time: FakeTime) -> None:
    """A ThrottledError's retry_after is the least the policy waits before the next try."""
    errors: list[BaseException | None] = [
        ThrottledError("slow down", retry_after=7.5),
        ThrottledError("slow down", retry_after=None),
        None,
    ]
    result = await _run(RetryPolicy(attempts=3, **NO_WAIT), errors, fake_time.sleep)
    assert result == ("ok", 3)
    assert fake_time.sleeps == [7.5, 0.0]


async def test_a_throttle_without_retry_after_is_retried_soon_then_backs_off(
    fake_time: FakeTime,
) -> None:
    """A throttle without Retry-After is retried within a quarter of the jitter (the
    governor paces it); the same request throttled again backs off from the first step."""
    policy = RetryPolicy(attempts=4, wait_initial=1.0, wait_max=8.0, wait_jitter=0.4)
    errors: list[BaseException | None] = [ThrottledError("slow", retry_after=None)] * 3 + [None]
    result = await _run(policy, errors, fake_time.sleep)
    assert result == ("ok", 4)
    first, second, third = fake_time.sleeps
    assert 0.0 <= first <= 0.1
    assert 1.0 <= second <= 1.4
    assert 2.0 <= third <= 2.4


async def test_retry_after_below_backoff_does_not_shorten_it(fake_time: FakeTime) -> None:
    """A Retry-After shorter than the backoff leaves the backoff as it is."""
    policy = RetryPolicy(attempts=2, wait_initial=4.0, wait_max=10.0, wait_jitter=0.0)
    errors: list[BaseException | None] = [ThrottledError("slow", retry_after=1.0), None]
    await _run(policy, errors, fake_time.sleep)
    assert fake_time.sleeps == [4.0]


async def test_backoff_is_exponential_capped_with_bounded_jitter(fake_time: FakeTime) -> None:
    """Waits double from wait_initial up to wait_max, each with at most wait_jitter added."""
    policy = RetryPolicy(attempts=7, timeout=1000, wait_initial=1.0, wait_max=8.0, wait_jitter=0.5)
    with pytest.raises(ServerError):
        await _run(policy, [ServerError("boom")], fake_time.sleep)
    assert len(fake_time.sleeps) == 6
    for wait, base in zip(fake_time.sleeps, [1, 2, 4, 8, 8, 8], strict=True):
        assert min(base, 8.0) <= wait <= base + 0.5


async def test_total_time_bounded_by_timeout(fake_time: FakeTime) -> None:
    """Retries stop before the total time would pass `timeout`, whatever `attempts` allows."""
    policy = RetryPolicy(attempts=100, timeout=5.0, wait_initial=1.0, wait_max=60.0, wait_jitter=0)
    with pytest.raises(ServerError):
        await _run(policy, [ServerError("boom")], fake_time.sleep)
    assert fake_time.sleeps == [1.0, 2.0]
    assert fake_time.now <= 5.0


async def test_retry_after_beyond_timeout_raises_at_once(fake_time: FakeTime) -> None:
    """A Retry-After longer than the time left ends the retries with that ThrottledError."""
    policy = RetryPolicy(attempts=5, timeout=60.0, **NO_WAIT)
    with pytest.raises(ThrottledError) as caught:
        await _run(
            policy, [ThrottledError("come back tomorrow", retry_after=86400)], fake_time.sleep
        )
    assert caught.value.retry_after == 86400
    assert fake_time.sleeps == []


async def test_on_retry_sees_each_error_and_wait(fake_time: FakeTime) -> None:
    """on_retry is called once per retry with the error and the wait chosen."""
    seen: list[tuple[object, float]] = []
    first, second = ThrottledError("t", retry_after=3.0), ServerError("s")
    await _run(
        RetryPolicy(attempts=3, **NO_WAIT),
        [first, second, None],
        fake_time.sleep,
        on_retry=lambda error, wait: seen.append((error, wait)),
    )
    assert seen == [(first, 3.0), (second, 0.0)]


async def _call(
    policy: RetryPolicy, errors: list[BaseException | None], sleep: Callable[[float], object]
) -> tuple[str, int, list[int]]:
    """`policy.call` on attempts that raise `errors` in turn; the result, calls, numbers."""
    numbers: list[int] = []

    async def attempt(number: int) -> str:
        numbers.append(number)
        error = errors[min(len(numbers) - 1, len(errors) - 1)]
        if error is not None:
            raise error
        return "ok"

    result = await policy.call(attempt, sleep=sleep)  # type: ignore[arg-type]
    return result, len(numbers), numbers


@pytest.mark.parametrize(
    "errors",
    [
        pytest.param([None], id="first-try"),
        pytest.param([ServerError("500"), None], id="second-try"),
        pytest.param(
            [ThrottledError("slow", retry_after=7.5), ServerError("503"), ServerError("500"), None],
            id="retry-after-then-backoff",
        ),
    ],
)
async def test_call_waits_and_numbers_attempts_as_retrying_does(
    fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch, errors: list[BaseException | None]
) -> None:
    """`call` (its first attempt outside tenacity) makes the same attempts, numbered 1, 2,
    …, with the same waits, as a `retrying` loop."""
    monkeypatch.setattr("engine.backend.retry.time", fake_time)
    policy = RetryPolicy(attempts=5, wait_initial=0.5, wait_max=3.0, wait_jitter=0.0)
    expected = await _run(policy, errors, fake_time.sleep)
    looped = list(fake_time.sleeps)
    fake_time.sleeps.clear()
    result, calls, numbers = await _call(policy, errors, fake_time.sleep)
    assert (result, calls) == expected
    assert numbers == list(range(1, calls + 1))
    assert fake_time.sleeps == looped


async def test_call_runs_a_first_success_without_tenacity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request answered at once never builds a tenacity loop."""

    def no_loop(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tenacity loop was built")

    monkeypatch.setattr(RetryPolicy, "retrying", no_loop)

    async def attempt(number: int) -> int:
        return number

    assert await RetryPolicy().call(attempt) == 1


async def test_call_raises_the_last_error_when_attempts_or_time_run_out(
    fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of attempts: the last error; out of time before the first retry: the first."""
    monkeypatch.setattr("engine.backend.retry.time", fake_time)
    errors: list[BaseException | None] = [ServerError("a"), ServerError("b"), ServerError("c")]
    with pytest.raises(ServerError, match="c"):
        await _call(RetryPolicy(attempts=3, **NO_WAIT), errors, fake_time.sleep)
    slow = RetryPolicy(attempts=5, timeout=1.0, wait_initial=2.0, wait_max=2.0, wait_jitter=0.0)
    with pytest.raises(ServerError, match="a"):
        await _call(slow, errors, fake_time.sleep)
