"""The fault suite: one migration per fault knob of the simulator (5xx, resets, timeouts,
slow answers, throttling as 403, 429 and 503 with and without Retry-After, activities ending
in ERROR, search misses as 500, activities finishing out of order); each completes with
every valid row done and I1–I3 holding over the whole account. Then the daily quota (a
clean, resumable stop that says when the quota resets) and a concurrent writer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.backend.v1.records import ContactEntry
from engine.cli import main
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import MigrationReport, migrate
from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig, serve
from engine.simulator.v1._xml import Renderer

from .conftest import (
    API_KEY,
    PASSWORD,
    USERNAME,
    Scenario,
    build_scenario,
    check_migration,
    journal_outcomes,
    memberships,
    read_report,
    set_lists,
    sim_stats,
    simulator_in_thread,
)

#: A quick retry policy that still outlasts the fault rates below.
RETRY = RetryPolicy(attempts=10, timeout=60, wait_initial=0.02, wait_max=0.3, wait_jitter=0.02)
CONFIG = MigrationConfig(poll_initial=0.02, poll_max=0.1, progress_interval=0.1)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A seeded account and a source of about 230 rows, both paths."""
    return build_scenario(tmp_path_factory.mktemp("scenario"), bulk=(60, 40, 30), per_set=8)


def sim_config(**changes: Any) -> SimulatorConfig:
    """The simulator's settings for these tests, with `changes`."""
    base = SimulatorConfig(
        host="127.0.0.1",
        port=0,
        username=USERNAME,
        api_key=API_KEY,
        password=PASSWORD,
        activity_delay=0.05,
        seed=99,
    )
    return dataclasses.replace(base, **changes)


def new_account(
    sim: RunningSimulator, *, timeout: float = 10.0, retry: RetryPolicy = RETRY
) -> Account:
    """An `Account` on `sim`: no client-side rate limit (the server's throttling is what is
    tested), 16 requests in flight, the quick retry policy."""
    return Account(
        Credentials(USERNAME, API_KEY, PASSWORD),
        base_url=sim.base_url,
        ca_file=sim.ca_path,
        governor=RateGovernor(rate=None, concurrency=16),
        retry=retry,
        timeout=timeout,
    )


@asynccontextmanager
async def running(scenario: Scenario, **changes: Any) -> AsyncIterator[RunningSimulator]:
    """The simulator, in this event loop, serving a copy of the scenario's seeded account."""
    config = sim_config(**changes)
    async with serve(config, AccountStore.load(scenario.seed, config)) as sim:
        yield sim


async def run(
    account: Account, scenario: Scenario, tmp_path: Path, config: MigrationConfig = CONFIG
) -> MigrationReport:
    """Migrate the scenario's source (lists from its Lists column) with a journal."""
    read = dataclasses.replace(config.read, lists_column="Lists")
    return await migrate(
        account,
        scenario.source,
        config=dataclasses.replace(config, read=read),
        report=tmp_path / "report.jsonl",
        journal=tmp_path / "journal.sqlite",
    )


@dataclasses.dataclass(frozen=True)
class Fault:
    """A fault scenario.

    Attributes:
        sim: simulator settings.
        timeout: the client's per-request timeout, in seconds.
        proof: answer statuses the simulator must have sent (the fault really happened).
        attempts: tries per request.
    """

    sim: Mapping[str, Any]
    timeout: float = 10.0
    proof: tuple[str, ...] = ()
    attempts: int = RETRY.attempts


FAULTS = [
    # A request fails all of 10 tries at 30% once in 170,000; a run sends several hundred,
    # so one in a few hundred runs would end with a failed row: 20 tries make it negligible.
    pytest.param(Fault({"error_rate": 0.3}, proof=("500", "503"), attempts=20), id="5xx"),
    pytest.param(Fault({"reset_rate": 0.2}, proof=("reset",)), id="connection-resets"),
    # Latency uniform in 0–300 ms against a 200 ms timeout: a third of the requests time
    # out, and the server may still apply them, so repeating a write must be safe. A busy
    # machine adds its own delay to every answer (the simulator shares the test's event
    # loop), so more of them time out there: enough tries that none runs out of them.
    pytest.param(Fault({"latency_jitter_ms": 300.0}, timeout=0.2, attempts=30), id="timeouts"),
    pytest.param(Fault({"latency_ms": 40.0, "latency_jitter_ms": 40.0}), id="slow-responses"),
    pytest.param(
        Fault({"rate_limit": 20.0, "throttle_status": 403}, proof=("403",)),
        id="throttle-403-no-retry-after",
    ),
    pytest.param(
        Fault({"rate_limit": 20.0, "throttle_status": 403, "retry_after": 1.0}, proof=("403",)),
        id="throttle-403-retry-after",
    ),
    pytest.param(
        Fault({"rate_limit": 20.0, "throttle_status": 429}, proof=("429",)),
        id="throttle-429-no-retry-after",
    ),
    pytest.param(
        Fault({"rate_limit": 20.0, "throttle_status": 429, "retry_after": 1.0}, proof=("429",)),
        id="throttle-429-retry-after",
    ),
    pytest.param(
        Fault({"rate_limit": 20.0, "throttle_status": 503, "retry_after": 1.0}, proof=("503",)),
        id="throttle-503-retry-after",
    ),
    pytest.param(Fault({"search_miss_500": True}), id="search-miss-500"),
    # Contact POSTs and PUTs and activity POSTs applied, their answers lost: repeating them
    # must be safe and every row must still end in one true outcome.
    # (Every activity POST among them: the seeded draws fall on other requests as the
    # order of requests changes with the machine's pace.)
    pytest.param(
        Fault(
            {"lose_answer_rate": 0.25, "route_lose_rates": {"POST activities": 1.0}},
            proof=("reset",),
        ),
        id="lost-answers",
    ),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_scenario_completes(fault: Fault, scenario: Scenario, tmp_path: Path) -> None:
    """Under the fault, every valid row is done and I1–I3 hold over the whole account."""
    async with running(scenario, **fault.sim) as sim:
        retry = dataclasses.replace(RETRY, attempts=fault.attempts)
        async with new_account(sim, timeout=fault.timeout, retry=retry) as account:
            report = await run(account, scenario, tmp_path)
        stats = await sim_stats(sim)
        check_migration(scenario, sim.store, tmp_path / "report.jsonl")
    assert report.pending == report.outcomes["failed"] == 0
    for status in fault.proof:
        assert stats["by_status"].get(status, 0) > 0, f"no {status} answer: {stats}"
    if fault.timeout < 1:
        assert report.retries > 0, "no request timed out"
    if fault.sim.get("lose_answer_rate"):
        # Every activity the server made is one the engine knew (none posted blindly twice),
        # and every contact the engine's POSTs made is reported created, not unchanged.
        assert len(sim.store.activities_desc()) == report.activities
        lost_posts = stats["by_route_status"].get("POST activities reset", 0)
        assert lost_posts > 0, f"no activity POST lost its answer: {stats}"
        lines = read_report(tmp_path / "report.jsonl")
        was = memberships(scenario.before())
        created = {line["email"] for line in lines if line["outcome"] == "created"}
        made = {line["email"] for line in lines if line.get("path") == "contact"} - set(was)
        assert made <= created, sorted(made - created)
    if "rate_limit" in fault.sim:
        assert report.throttles > 0


async def test_search_misses_answered_500_are_read_as_not_found(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Searches that miss answer 500: read as not found, each contact created once, I1-I3 hold."""
    new = [f"fresh{i}@example.org" for i in range(20)]
    source = tmp_path / "new.csv"
    source.write_text("Email Address,Lists\n" + "".join(f"{e},Epsilon\n" for e in new))
    fresh = Scenario(
        seed=scenario.seed,
        source=source,
        rows=tuple(range(2, 22)),
        targets={e: frozenset({"Epsilon"}) for e in new},
        rejected_rows=(),
        opted_out=frozenset(),
    )
    async with running(scenario, search_miss_500=True) as sim:
        async with new_account(sim) as account:
            report = await run(account, fresh, tmp_path)
        stats = await sim_stats(sim)
        lines = check_migration(fresh, sim.store, tmp_path / "report.jsonl")
    assert stats["by_status"]["500"] == 2  # the search, and its one retry
    assert stats["by_route"]["POST contacts"] == 20
    assert {line["outcome"] for line in lines} == {"created"}
    assert report.ok


async def test_a_burst_of_throttles_lowers_the_rate_once() -> None:
    """Throttles of requests sent before the last decrease, or within its check just after
    it, lower rate and concurrency once."""
    governor = RateGovernor(rate=None, concurrency=8)

    async def refused() -> None:
        async with governor.slot():
            await anyio.sleep(0.01)
        governor.on_throttle(None)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(refused)
    stats = governor.stats()
    # No second of history to measure from: a quarter off the 8 requests of the last second.
    assert (stats.rate, stats.concurrency, stats.throttles) == (6.0, 6, 8)
    await refused()  # sent just after the decrease: counted by its check, no new decrease
    stats = governor.stats()
    assert (stats.rate, stats.concurrency, stats.throttles) == (6.0, 6, 9)


async def test_activities_ending_in_error_fall_back(scenario: Scenario, tmp_path: Path) -> None:
    """Activities ending in ERROR fall back contact by contact; every valid row done, I1-I3 hold."""
    async with running(scenario, activity_error_rate=0.5) as sim:
        async with new_account(sim) as account:
            report = await run(account, scenario, tmp_path)
        statuses = [a.status for a in sim.store.activities_desc()]
        check_migration(scenario, sim.store, tmp_path / "report.jsonl")
    assert "ERROR" in statuses
    assert report.pending == report.outcomes["failed"] == 0
    assert report.bulk_enabled


async def test_activities_finishing_out_of_order(scenario: Scenario, tmp_path: Path) -> None:
    """Activities finishing out of order map to their own rows; every valid row done, I1-I3 hold."""
    finished: list[int] = []
    async with running(scenario, activity_delay=0.4, activity_jitter=1.0, seed=6) as sim:
        store = sim.store
        finish = store.finish_activity

        def record_finish(activity_id: str) -> None:
            finish(activity_id)
            finished.append(store.get_activity(activity_id).seq)

        # An instance attribute shadows the method the activity runner calls: a spy.
        store.finish_activity = record_finish  # type: ignore[method-assign]
        async with new_account(sim) as account:
            report = await run(account, scenario, tmp_path)
        lines = check_migration(scenario, store, tmp_path / "report.jsonl")
    assert finished != sorted(finished), f"the activities finished in order: {finished}"
    assert report.pending == report.outcomes["failed"] == 0
    assert sum(line["outcome"] == "bulk_added" for line in lines) >= 100


def cli_args(sim: RunningSimulator, scenario: Scenario, report: Path) -> list[str]:
    """`migrate` of the scenario through the CLI, quick polls, no rate limit."""
    return [
        "migrate",
        str(scenario.source),
        "--lists-column",
        "Lists",
        "--report",
        str(report),
        "--base-url",
        sim.base_url,
        "--ca-file",
        str(sim.ca_path),
        "--rate-limit",
        "10000",
        "--concurrency",
        "16",
        "--poll-initial",
        "0.05",
        "--poll-max",
        "0.2",
        "--quiet",
    ]


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario's credentials in `CTCT_*`, as a user sets them."""
    monkeypatch.setenv("CTCT_USERNAME", USERNAME)
    monkeypatch.setenv("CTCT_API_KEY", API_KEY)
    monkeypatch.setenv("CTCT_PASSWORD", PASSWORD)


@pytest.mark.usefixtures("credentials")
def test_daily_quota_stops_cleanly_and_resumes_after_the_reset(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spent daily quota: exit 1 saying when it resets, resumable journal; then it completes."""
    report = tmp_path / "report.jsonl"
    store = AccountStore.load(scenario.seed, sim_config())
    with simulator_in_thread(sim_config(daily_quota=120), store) as sim:
        status = main(cli_args(sim, scenario, report))
    out, err = capsys.readouterr()
    assert status == 1, out + err
    assert "Traceback" not in err
    assert "daily request quota is spent" in err
    assert "resets at midnight UTC" in err
    assert "run the same command again" in err.lower()
    journal = report.with_name("report.journal.sqlite")
    done = journal_outcomes(journal)
    assert 0 < done < len(scenario.targets)
    assert len(read_report(report)) == done
    was = memberships(scenario.before())
    now = memberships(store)
    assert all(now[email][1] >= lists for email, (_, lists) in was.items()), "I1 at the stop"

    # The next day (here: the same account, the quota raised), the same command resumes.
    with simulator_in_thread(sim_config(), store) as sim:
        status = main(cli_args(sim, scenario, report))
    out, err = capsys.readouterr()
    assert status == 1, out + err  # 1: the five invalid rows
    assert "not done yet" not in out
    assert "rows were done by an earlier run" in out
    check_migration(scenario, store, report)


# --- a concurrent writer ------------------------------------------------------------------


# Without ETags, only a read right before the PUT catches a change made inside the
# GET->PUT window, and only a read back after it catches a stale writer that follows: two
# requests more per updated contact, so it is `--verify-writes all`, not the default (which
# re-reads only entries older than `stale_after`). The README says to use it when other
# writers are active during a migration.
@pytest.mark.parametrize(
    "config",
    [pytest.param(dataclasses.replace(CONFIG, verify_writes="all"), id="verify-writes-all")],
)
async def test_concurrent_writer_keeps_its_lists_and_targets_are_restored(
    config: MigrationConfig, scenario: Scenario, tmp_path: Path
) -> None:
    """Another writer's lists survive the engine's PUT and targets it removes are restored."""
    async with running(scenario) as sim:
        store = sim.store
        store.create_list("Zeta")
        store.create_list("Eta")
        per_contact = sorted(e for e in scenario.targets if e.startswith("s") and "@" in e)
        existing = [e for e in per_contact if store.contact_by_email(e) is not None]
        adds_between, stale_after_put = set(existing[0::4]), set(existing[1::4])
        seen_get: set[str] = set()
        seen_put: set[str] = set()
        read_by_engine: dict[str, frozenset[str]] = {}

        async with new_account(sim) as account:
            get_contact: Callable[[str], Awaitable[ContactEntry]] = account.get_contact
            put_contact: Callable[..., Awaitable[None]] = account.put_contact

            async def racing_get(key: str) -> ContactEntry:
                entry = await get_contact(key)
                email = entry.email.lower()
                if email not in seen_get:
                    seen_get.add(email)
                    read_by_engine[email] = memberships(store)[email][1]
                    if email in adds_between:  # the other writer adds Zeta just now
                        set_lists(store, email, read_by_engine[email] | {"Zeta"})
                return entry

            async def racing_put(entry: ContactEntry, body: bytes, **options: Any) -> None:
                await put_contact(entry, body, **options)
                email = entry.email.lower()
                if email in stale_after_put and email not in seen_put:
                    seen_put.add(email)
                    # A writer that read before the engine's PUT writes its view back, plus
                    # Eta: the engine's targets are gone again.
                    set_lists(store, email, read_by_engine[email] | {"Eta"})

            # Instance attributes shadow the methods the pipeline calls.
            account.get_contact = racing_get  # type: ignore[method-assign]
            account.put_contact = racing_put  # type: ignore[method-assign]
            report = await run(account, scenario, tmp_path, config)

        assert adds_between <= seen_get, "the race between GET and PUT never ran"
        assert stale_after_put <= seen_put, "the race after the PUT never ran"
        lines = check_migration(scenario, store, tmp_path / "report.jsonl")
        now = memberships(store)
    assert report.pending == report.outcomes["failed"] == 0
    dropped = sorted(e for e in adds_between if "Zeta" not in now[e][1])
    assert not dropped, f"the engine's PUT removed the other writer's list from {dropped}"
    for email in stale_after_put:
        assert "Eta" in now[email][1]
        missing = scenario.targets[email] - now[email][1]
        assert not missing, f"{email} lost its targets {sorted(missing)} to the stale writer"
    outcome = {line["email"]: line["outcome"] for line in lines if line.get("path")}
    assert {outcome[e] for e in adds_between | stale_after_put} == {"updated"}


async def test_the_get_to_put_window_stays_short_under_a_rate_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a rate limit that makes requests queue (8/s, 8 put workers), every PUT reaches the
    server within `stale_after` (plus a round trip) of the GET its body was built from: the
    PUT's rate turn is taken before the staleness check, not after it."""
    stale_after = 0.3
    config = sim_config()
    store = AccountStore(config)
    store.create_list("New")
    old = store.create_list("Old")
    emails = [f"c{i}@example.com" for i in range(40)]
    for email in emails:
        store.add_contact(email, lists=[old])
    source = tmp_path / "in.csv"
    source.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
    # Seen by the server: when each contact's entry was last served, and each PUT's window.
    served: dict[int, float] = {}
    windows: list[float] = []
    contact_entry = Renderer.contact_entry
    update_contact = AccountStore.update_contact

    def timed_entry(self: Renderer, contact: Any, now: str) -> bytes:
        served[contact.id] = time.monotonic()
        return contact_entry(self, contact, now)

    def timed_update(self: AccountStore, contact_id: int, body: Any) -> Any:
        windows.append(time.monotonic() - served[contact_id])
        return update_contact(self, contact_id, body)

    monkeypatch.setattr(Renderer, "contact_entry", timed_entry)
    monkeypatch.setattr(AccountStore, "update_contact", timed_update)
    async with serve(config, store) as sim:
        account = Account(
            Credentials(USERNAME, API_KEY, PASSWORD),
            base_url=sim.base_url,
            ca_file=sim.ca_path,
            governor=RateGovernor(rate=8.0, concurrency=16),
            retry=RETRY,
        )
        async with account:
            report = await migrate(
                account,
                source,
                lists=["New"],
                config=dataclasses.replace(CONFIG, bulk_threshold=None, stale_after=stale_after),
            )
    assert report.outcomes["updated"] == 40
    assert len(windows) == 40
    # Before, the PUT waited for its rate token after the check: windows near a second.
    assert max(windows) < stale_after + 0.2, sorted(windows)[-5:]
