"""The parts both simulators share: throttling (`_throttle`), faults (`_faults`) and the
activity runner (`_activities`), on fake clocks, seeded generators and a fake store."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.simulator._activities import ACTIVITY_CHUNK, ActivityRunner
from engine.simulator._faults import ABORTED, Faults
from engine.simulator._throttle import DAY, DailyQuota, Throttle, TokenBuckets

#: 2026-03-10T12:00:00Z.
NOON = 1_773_144_000.0


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- throttling --------------------------------------------------------------------------------


def test_bucket_allows_its_burst_then_refuses_on_a_frozen_clock() -> None:
    """A full bucket allows `burst` requests at once; a frozen clock never refills it."""
    buckets = TokenBuckets(FakeClock())
    assert [buckets.take("k", 2.0, burst=3) for _ in range(5)] == [True] * 3 + [False] * 2


def test_bucket_refills_at_its_rate_and_keys_are_apart() -> None:
    """Tokens come back at `rate` per second, up to the burst; each key has its own bucket."""
    clock = FakeClock()
    buckets = TokenBuckets(clock)
    assert [buckets.take("a", 4.0) for _ in range(5)] == [True] * 4 + [False]
    assert buckets.take("b", 4.0)
    clock.now += 0.5  # two tokens back
    assert [buckets.take("a", 4.0) for _ in range(3)] == [True, True, False]
    clock.now += 100  # never more than the burst (4 = ceil(rate))
    assert [buckets.take("a", 4.0) for _ in range(5)] == [True] * 4 + [False]


def test_bucket_refills_nothing_when_its_clock_goes_back() -> None:
    """A clock going back adds no token."""
    clock = FakeClock()
    buckets = TokenBuckets(clock)
    assert buckets.take("k", 1.0)
    clock.now -= 10
    assert not buckets.take("k", 1.0)


def test_daily_quota_resets_at_midnight_utc() -> None:
    """The quota counts per key and UTC day; refusals are not counted; 00:00 UTC resets it."""
    clock = FakeClock(NOON)
    quota = DailyQuota(2, clock)
    assert [quota.take("k") for _ in range(3)] == [True, True, False]
    assert quota.remaining("k") == 0
    assert quota.remaining("other") == 2
    assert quota.seconds_to_reset() == DAY / 2
    clock.now = NOON + DAY / 2 - 1  # 23:59:59
    assert not quota.take("k")
    clock.now += 1  # 00:00:00 the next day
    assert quota.remaining("k") == 2
    assert quota.take("k")
    assert quota.remaining("k") == 1


def test_throttle_checks_rate_then_endpoint_then_quota() -> None:
    """A refusal for rate counts nothing against the quota; endpoint rates apply on top."""
    clock = FakeClock()
    throttle = Throttle(
        rate=2.0,
        quota=3,
        endpoint_rates={"POST contacts": 1.0},
        bucket_clock=clock,
        day_clock=clock,
    )
    assert throttle.refusal("k", "POST contacts") is None
    assert throttle.refusal("k", "POST contacts") == "rate"  # the endpoint's bucket
    assert throttle.refusal("k", "GET lists") == "rate"  # the key's bucket
    assert throttle.remaining("k") == 2
    clock.now += 1
    assert throttle.refusal("k", "GET lists") is None
    assert throttle.refusal("k", "GET lists") is None
    clock.now += 1
    assert throttle.refusal("k", "GET lists") == "quota"
    assert throttle.remaining("k") == 0


def test_throttle_without_limits_allows_everything() -> None:
    """No rate and no quota: every request passes and `remaining` is `None`."""
    throttle = Throttle(rate=None, quota=None, bucket_clock=time.monotonic, day_clock=time.time)
    assert all(throttle.refusal("k") is None for _ in range(1000))
    assert throttle.remaining("k") is None


def test_throttle_buckets_and_days_can_run_on_different_clocks() -> None:
    """A frozen day clock (a test's fake epoch) does not freeze a bucket on another clock."""
    days, buckets = FakeClock(), FakeClock(0.0)
    throttle = Throttle(rate=1.0, burst=1, quota=None, bucket_clock=buckets, day_clock=days)
    assert throttle.refusal("k") is None
    assert throttle.refusal("k") == "rate"
    buckets.now += 1
    assert throttle.refusal("k") is None


# -- faults ------------------------------------------------------------------------------------


def test_latency_is_fixed_plus_jitter() -> None:
    """The delay is `latency_ms` plus uniform jitter (or a positive log-normal tail)."""
    rng = random.Random(1)
    uniform = Faults(rng, latency_ms=100, latency_jitter_ms=20)
    assert all(0.1 <= uniform.delay() <= 0.12 for _ in range(200))
    lognormal = Faults(rng, latency_ms=100, latency_jitter_ms=20, latency_lognormal=True)
    assert all(lognormal.delay() > 0.1 for _ in range(200))


def test_zero_rates_draw_nothing() -> None:
    """Without jitter and with zero rates nothing is drawn: the generator's state is unchanged."""
    rng = random.Random(5)
    before = rng.getstate()
    faults = Faults(rng, latency_ms=10, route_error_rates={"POST other": 1.0})
    assert faults.delay() == 0.01
    assert faults.before("GET lists") is None
    assert faults.after_write() is None
    assert rng.getstate() == before


def test_failures_before_the_handler() -> None:
    """`reset_rate` resets; `error_rate` and a route's rate answer 500 or 503 (both seen)."""
    assert Faults(random.Random(1), reset_rate=1.0).before() == "reset"
    errors = Faults(random.Random(1), error_rate=1.0)
    assert {errors.before() for _ in range(50)} == {500, 503}
    by_route = Faults(random.Random(1), route_error_rates={"POST contacts": 1.0})
    assert by_route.before("POST contacts") in (500, 503)
    assert by_route.before("GET contacts") is None


def test_the_same_seed_plays_the_same_faults() -> None:
    """Two apps with the same seed and settings meet the same faults in the same order."""

    def play(seed: int) -> list[object]:
        faults = Faults(
            random.Random(seed),
            latency_jitter_ms=5,
            reset_rate=0.2,
            error_rate=0.2,
            error_after_commit_rate=0.2,
            lose_answer_rate=0.2,
        )
        return [(faults.delay(), faults.before(), faults.after_write()) for _ in range(100)]

    assert play(7) == play(7)
    assert play(7) != play(8)


def test_failures_after_a_write() -> None:
    """`error_after_commit_rate` answers 500, `lose_answer_rate` loses the answer."""
    assert Faults(random.Random(1), error_after_commit_rate=1.0).after_write() == "error"
    assert Faults(random.Random(1), lose_answer_rate=1.0).after_write() == "lose"


#: Handler calls, aborted connections and the account's revision, by name.
Counts = dict[str, int]


class Account:
    """Just a revision, bumped by applied writes."""

    def __init__(self) -> None:
        self.revision = 0


@asynccontextmanager
async def served_with(faults: Faults) -> AsyncIterator[tuple[aiohttp.ClientSession, Counts]]:
    """An app on 127.0.0.1 whose handlers count their calls (`GET /`, `POST /`), faults
    around them; the counts hold `"handled"`, `"aborted"` and `"revision"`."""
    account = Account()
    counts: Counts = {"handled": 0, "aborted": 0, "revision": 0}

    @web.middleware
    async def outer(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await faults.serve(
                request,
                handler,
                store=account,
                server_error=lambda status: web.Response(status=status, text="boom"),
            )
        finally:
            counts["aborted"] += bool(request.get(ABORTED))
            counts["revision"] = account.revision

    async def handle(_request: web.Request) -> web.Response:
        counts["handled"] += 1
        return web.Response(text="ok")

    app = web.Application(middlewares=[outer])
    app.router.add_get("/", handle)
    app.router.add_post("/", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(
            base_url=str(server.make_url("/")),
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as session:
            yield session, counts
    finally:
        await server.close()


async def test_served_errors_and_resets_never_reach_the_handler() -> None:
    """A 5xx is the dialect's answer and a reset drops the connection; neither is handled."""
    async with served_with(Faults(random.Random(1), error_rate=1.0)) as (session, counts):
        async with session.post("/") as response:
            assert (response.status, await response.text()) in ((500, "boom"), (503, "boom"))
        assert counts == {"handled": 0, "aborted": 0, "revision": 0}
    async with served_with(Faults(random.Random(1), reset_rate=1.0)) as (session, counts):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post("/"):
                pass
        assert counts == {"handled": 0, "aborted": 1, "revision": 0}


async def test_served_writes_are_applied_before_their_answer_fails() -> None:
    """After a successful write the revision is bumped, then its answer is a 500 or lost;
    reads are never failed after the handler."""
    async with served_with(Faults(random.Random(1), error_after_commit_rate=1.0)) as (
        session,
        counts,
    ):
        async with session.post("/") as response:
            assert (response.status, await response.text()) == (500, "boom")
        async with session.get("/") as response:
            assert response.status == 200
        assert counts == {"handled": 2, "aborted": 0, "revision": 1}
    async with served_with(Faults(random.Random(1), lose_answer_rate=1.0)) as (session, counts):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post("/"):
                pass
        assert counts == {"handled": 1, "aborted": 1, "revision": 1}


async def test_served_requests_wait_their_latency() -> None:
    """`latency_ms` delays the answer."""
    async with served_with(Faults(random.Random(1), latency_ms=100)) as (session, _):
        started = time.perf_counter()
        async with session.get("/") as response:
            assert response.status == 200
        assert time.perf_counter() - started >= 0.1


# -- the activity runner -----------------------------------------------------------------------


class FakeStore:
    """Activities of `rows` rows each: `pending` -> `running` -> `done` (or `failed`), with
    the loop time of each change, the batch sizes asked for, and ids that raise when
    processed (`broken`)."""

    def __init__(self, rows: dict[str, int] | None = None, broken: frozenset[str] = frozenset()):
        self.claimed_activities: set[str] = set()
        self.revision = 0
        self.rows: dict[str, int] = {}
        self.state: dict[str, str] = {}
        self.applied: dict[str, int] = {}
        self.batches: list[int] = []
        self.at: dict[tuple[str, str], float] = {}
        self.finished: list[str] = []
        self.broken = broken
        for activity_id, count in (rows or {}).items():
            self.submit(activity_id, count)

    def submit(self, activity_id: str, rows: int) -> str:
        """A new pending activity."""
        self.rows[activity_id] = rows
        self.state[activity_id] = "pending"
        self.applied[activity_id] = 0
        return activity_id

    def _mark(self, activity_id: str, state: str) -> None:
        self.state[activity_id] = state
        self.at[activity_id, state] = asyncio.get_running_loop().time()

    def unfinished_activities(self) -> list[str]:
        return [i for i, s in self.state.items() if s in ("pending", "running")]

    def start_activity(self, activity_id: str) -> None:
        if self.state[activity_id] == "pending":
            self._mark(activity_id, "running")

    def process_activity(self, activity_id: str, max_rows: int) -> bool:
        if activity_id in self.broken:
            raise LookupError("its list is gone")
        self.batches.append(max_rows)
        left = self.rows[activity_id] - self.applied[activity_id]
        self.applied[activity_id] += min(left, max_rows)
        if left > max_rows:
            return False
        self._mark(activity_id, "done")
        self.finished.append(activity_id)
        return True

    def fail_activity(self, activity_id: str) -> None:
        self.state[activity_id] = "failed"


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait (bounded) until `condition()` holds."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"still not true after {seconds} s")


@asynccontextmanager
async def running(runner: ActivityRunner) -> AsyncIterator[asyncio.Task[None]]:
    """The runner's `run()` as a task, cancelled at the end."""
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def done(store: FakeStore) -> Callable[[], bool]:
    return lambda: not store.unfinished_activities()


async def test_v1_pacing_runs_at_half_the_delay_and_applies_all_rows_at_the_end() -> None:
    """With `running_at=0.5` and no row rate an activity turns running halfway through its
    delay, and all its rows are applied at the end, a chunk at a time."""
    store = FakeStore()
    runner = ActivityRunner(store, random.Random(1), delay=0.2, running_at=0.5)
    async with running(runner):
        scheduled = asyncio.get_running_loop().time()
        runner.schedule(store.submit("a", 2 * ACTIVITY_CHUNK + 1))
        await until(done(store))
    assert store.at["a", "running"] - scheduled >= 0.1 - 0.01
    assert store.at["a", "done"] - scheduled >= 0.2 - 0.01
    assert store.batches == [ACTIVITY_CHUNK] * 3
    assert store.applied["a"] == 2 * ACTIVITY_CHUNK + 1
    assert store.claimed_activities == set()
    assert store.revision > 0


async def test_v3_pacing_processes_at_rows_per_second() -> None:
    """With a row rate an activity is processed in steps of a tick's rows, one tick apart."""
    store = FakeStore()
    runner = ActivityRunner(store, random.Random(1), delay=0.01, rows_per_second=1000)
    async with running(runner):
        runner.schedule(store.submit("a", 100))
        await until(done(store))
    assert store.batches == [50, 50]  # 1000 rows/s * 0.05 s
    assert store.at["a", "done"] - store.at["a", "running"] >= 0.05 - 0.01


async def test_jitter_finishes_activities_out_of_order() -> None:
    """Seeded jitter gives each activity its own delay: they finish in delay order, not in
    the order they were scheduled."""
    ids = [f"a{n}" for n in range(6)]
    store = FakeStore()
    runner = ActivityRunner(store, random.Random(1), delay=0.1, jitter=1.0)
    replay = random.Random(1)
    delays = {i: 0.1 * (1 + replay.uniform(-1.0, 1.0)) for i in ids}
    async with running(runner):
        for activity_id in ids:
            runner.schedule(store.submit(activity_id, 1))
        await until(done(store))
    assert store.finished == sorted(ids, key=delays.__getitem__)
    assert store.finished != ids


async def test_one_failing_activity_never_stops_the_others() -> None:
    """An activity that raises ends failed; the others complete."""
    store = FakeStore(broken=frozenset({"bad"}))
    runner = ActivityRunner(store, random.Random(1), delay=0.01)
    async with running(runner):
        for activity_id in ("a", "bad", "c"):
            runner.schedule(store.submit(activity_id, 1))
        await until(done(store))
    assert store.state == {"a": "done", "bad": "failed", "c": "done"}
    assert store.claimed_activities == set()


async def test_unfinished_activities_are_adopted_unless_another_app_claimed_them() -> None:
    """At start the runner runs the store's unfinished activities, except claimed ones."""
    store = FakeStore({"left": 3, "theirs": 3})
    store.claimed_activities.add("theirs")
    runner = ActivityRunner(store, random.Random(1), delay=0.01)
    async with running(runner):
        await until(lambda: store.state["left"] == "done")
    assert store.state["theirs"] == "pending"


async def test_unfinished_activities_can_be_failed_at_start() -> None:
    """With `fail_unfinished` the activities found unfinished end failed, nothing applied."""
    store = FakeStore({"left": 3})
    runner = ActivityRunner(store, random.Random(1), delay=0.01, fail_unfinished=True)
    async with running(runner):
        await until(done(store))
    assert store.state == {"left": "failed"}
    assert store.applied == {"left": 0}


async def test_cancelling_hands_activities_back_for_the_next_app() -> None:
    """A cancelled runner releases its claims; a runner started next on the store finishes
    what the first left."""
    store = FakeStore()
    first = ActivityRunner(store, random.Random(1), delay=1000.0)
    async with running(first):
        first.schedule(store.submit("a", 1))
        assert store.claimed_activities == {"a"}
    assert store.claimed_activities == set()
    assert store.state == {"a": "pending"}
    second = ActivityRunner(store, random.Random(1), delay=0.01)
    async with running(second):
        await until(done(store))
    assert store.state == {"a": "done"}


async def test_a_claimed_activity_is_not_scheduled_twice() -> None:
    """Scheduling an activity already claimed does nothing (and draws no jitter)."""
    store = FakeStore()
    rng = random.Random(1)
    runner = ActivityRunner(store, rng, delay=1000.0, jitter=0.5)
    async with running(runner):
        runner.schedule(store.submit("a", 1))
        state = rng.getstate()
        runner.schedule("a")
        assert rng.getstate() == state
        assert store.claimed_activities == {"a"}
