"""The fault suite on a V3 account.

First the library (`migrate` on a `V3Backend`, the V3 simulator in the same event loop), one
migration per fault knob: 5xx answers, connection resets, 429 `throttled`, writes applied
and then answered 500 or never answered, activities ending `failed` or `timed_out` or
finishing out of order; each completes with every valid row done and I1-I3 holding over
the whole account.

Then the command line as a real subprocess (the simulator in a thread, on a clock the test
moves): the daily quota (a clean, resumable stop; the resume after midnight UTC completes),
an access token that expires in the middle of the run, many requests in flight meeting an
expired token at once (one refresh), and a refresh token revoked mid-run (the run stops
saying to log in again; after a new login the same command completes).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.backend.retry import RetryPolicy
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import MigrationReport, migrate
from engine.simulator import v3

from .conftest import (
    EngineResult,
    Scenario,
    build_scenario,
    check_migration,
    engine_process,
    journal_outcomes,
    read_report,
    run_engine,
)
from .v3_support import (
    V3Sim,
    saved_account,
    token_secrets,
    v3_backend,
    v3_env,
    v3_served,
    v3_simulator,
    v3_stats,
)

#: A quick retry policy that still outlasts the fault rates below.
RETRY = RetryPolicy(attempts=10, timeout=60, wait_initial=0.02, wait_max=0.3, wait_jitter=0.02)
CONFIG = MigrationConfig(poll_initial=0.02, poll_max=0.1, progress_interval=0.1)
#: The token endpoint's route in the simulator's stats.
TOKEN_ROUTE = "POST oauth2 token"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A V3 account and a source of about 230 rows, both paths."""
    return build_scenario(
        tmp_path_factory.mktemp("v3-scenario"), bulk=(60, 40, 30), per_set=8, backend="v3"
    )


# --- the library under faults -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    """A fault scenario.

    Attributes:
        sim: V3 simulator settings.
        proof: answer statuses the simulator must have sent (the fault really happened).
        states: activity end states the simulator must have reached.
        reverse: activities running together finish newest first.
    """

    sim: Mapping[str, Any]
    proof: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    reverse: bool = False


FAULTS = [
    pytest.param(Fault({"error_rate": 0.25}, proof=("500", "503")), id="5xx"),
    pytest.param(Fault({"reset_rate": 0.15}, proof=("reset",)), id="connection-resets"),
    # Low enough that even a slowed engine (a busy machine, parallel tests) goes over it.
    pytest.param(Fault({"rps": 50.0}, proof=("429",)), id="throttled-429"),
    # Writes applied, their answers lost or turned into 500: repeating them must be safe,
    # and every row must still end in one true outcome (a contact the lost POST made is
    # `created`, never `unchanged`: `check_migration` checks it).
    pytest.param(Fault({"lose_answer_rate": 0.25}, proof=("reset",)), id="lost-answers"),
    pytest.param(Fault({"error_after_commit_rate": 0.25}, proof=("500",)), id="500-after-commit"),
    pytest.param(Fault({"activity_fail_rate": 0.5}, states=("failed",)), id="activities-failed"),
    # A timed-out import applied part of its rows: the contacts it added are `bulk_added`.
    pytest.param(
        Fault({"activity_timeout_rate": 0.5}, states=("timed_out",)), id="activities-timed-out"
    ),
    pytest.param(Fault({}, reverse=True), id="activities-out-of-order"),
]


@dataclasses.dataclass
class LibraryRun:
    """What a library migration did: its summary, the simulator's counters and activities."""

    report: MigrationReport
    stats: dict[str, Any]
    activities: list[v3.store.StoredActivity]
    lines: list[dict[str, Any]]


def finish_newest_first(store: v3.AccountStore, hold: float = 1.5) -> None:
    """Make activities that run together finish newest first: one may end only once every
    activity submitted after it has ended (or after `hold` seconds). A spy on the store's
    `process_activity`, which the simulator's activity runner calls until it says done."""
    process = store.process_activity
    waiting: dict[str, float] = {}

    def newest_first(activity_id: str, max_rows: int) -> bool:
        mine = store.get_activity(activity_id)
        younger = [a for a in store.activities() if a.seq > mine.seq and not a.done]
        since = waiting.setdefault(activity_id, time.monotonic())
        if younger and time.monotonic() - since < hold:
            return False  # not yet: nothing applied
        return process(activity_id, max_rows)

    # An instance attribute shadows the method the activity runner calls.
    store.process_activity = newest_first  # type: ignore[method-assign]


async def run_library(
    scenario: Scenario, tmp_path: Path, *, reverse: bool = False, **fault: Any
) -> LibraryRun:
    """Migrate the scenario with the library on a simulator with `fault` (activities that
    run together finishing newest first with `reverse`), then check the whole account as
    saved (I1-I3, the write log, no token in the report or journal)."""
    report_path = tmp_path / "run" / "report.jsonl"
    report_path.parent.mkdir(parents=True)
    token_file = tmp_path / "tokens" / "v3.json"
    config = dataclasses.replace(
        CONFIG, read=dataclasses.replace(CONFIG.read, lists_column="Lists")
    )
    async with v3_served(scenario.seed, **fault) as sim:
        if reverse:
            finish_newest_first(sim.store)
        async with v3_backend(sim, token_file, retry=RETRY) as backend:
            report = await migrate(
                backend,
                scenario.source,
                config=config,
                report=report_path,
                journal=report_path.with_name("report.journal.sqlite"),
            )
        stats = await v3_stats(sim)
    store = sim.store
    lines = check_migration(
        scenario,
        saved_account(store, tmp_path / "sim"),
        report_path,
        writes=store.writes,
        secrets=token_secrets(token_file),
        outputs=[report_path.parent],
    )
    return LibraryRun(report, stats, store.activities(), lines)


@pytest.mark.parametrize("fault", FAULTS)
async def test_v3_fault_scenario_completes(
    fault: Fault, scenario: Scenario, tmp_path: Path
) -> None:
    """Under the fault, every valid row is done and I1-I3 hold over the whole V3 account."""
    run = await run_library(scenario, tmp_path, reverse=fault.reverse, **fault.sim)
    assert run.report.pending == run.report.outcomes["failed"] == 0
    for status in fault.proof:
        assert run.stats["by_status"].get(status, 0) > 0, f"no {status} answer: {run.stats}"
    states = {a.state for a in run.activities}
    for state in fault.states:
        assert state in states, f"no activity ended {state}: {states}"
    if "rps" in fault.sim:
        assert run.report.throttles > 0
    if fault.reverse:
        ended = [a.seq for a in sorted(run.activities, key=lambda a: a.completed_at or 0.0)]
        assert ended != sorted(ended), f"the activities finished in order: {ended}"
        assert sum(line["outcome"] == "bulk_added" for line in run.lines) >= 100


# --- the command line: quota and tokens -----------------------------------------------------


def run_until(
    args: list[str], sim: V3Sim, ready: Callable[[], bool], then: Callable[[], None]
) -> EngineResult:
    """Run the engine; once `ready()` holds (polled every 10 ms, at most 60 s), call
    `then()`; wait for the engine's end (at most 90 s)."""
    started = time.monotonic()
    with engine_process(args, env=v3_env()) as (process, out, err):
        deadline = started + 60
        while process.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, f"the run ended first: {err.read_text()}"
        then()
        returncode = process.wait(timeout=90)
        return EngineResult(
            returncode, out.read_text(), err.read_text(), time.monotonic() - started
        )


def assert_completes(
    scenario: Scenario, sim: V3Sim, report: Path, *results: EngineResult
) -> list[dict[str, Any]]:
    """The last run did every row; the account, as saved, passes the whole check."""
    final = results[-1]
    assert final.returncode == 1, final.output  # 1: the five invalid rows
    assert "Traceback" not in final.stderr
    assert "not done yet" not in final.stdout
    sim.stop()
    assert sim.account is not None
    return check_migration(
        scenario,
        sim.account,
        report,
        writes=sim.writes(),
        secrets=sim.all_secrets(),
        outputs=[*(r.output for r in results), report.parent],
    )


#: Requests a day: the migration takes a few days of it.
QUOTA = 150


def test_v3_daily_quota_stops_cleanly_and_resumes_after_midnight_utc(
    scenario: Scenario, tmp_path: Path
) -> None:
    """quota_exceeded: a clean, resumable stop a day; after midnight UTC it goes on to the end."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    journal = report.with_name("report.journal.sqlite")
    with v3_simulator(tmp_path / "sim", scenario.seed, daily_quota=QUOTA) as sim:
        args = scenario.migrate_args(sim, report)  # both paths: bulk sets and small ones
        runs: list[EngineResult] = []
        done = 0
        for _day in range(8):
            run = run_engine(args, env=v3_env())
            runs.append(run)
            assert "Traceback" not in run.stderr
            if "not done yet" not in run.stdout and "quota" not in run.stderr:
                break
            assert run.returncode == 1, run.output
            assert "daily request quota" in run.stderr
            assert "midnight UTC" in run.stderr
            assert "run the same command again" in run.stderr.lower()
            now_done = journal_outcomes(journal)
            assert done < now_done < len(scenario.targets), "a day of quota did nothing"
            assert len(read_report(report)) == now_done
            done = now_done
            if len(runs) == 1:  # the same day again: refused at once, nothing lost
                spent = sim.stats()["total"]
                again = run_engine(args, env=v3_env())
                runs.append(again)
                assert again.returncode == 1, again.output
                assert "daily request quota" in again.stderr
                assert sim.stats()["total"] <= spent + 2
                assert journal_outcomes(journal) == done
            sim.clock.to_next_utc_day()
        assert len(runs) >= 3, "the quota never stopped the run"
        assert "rows were done by an earlier run" in runs[-1].stdout
        assert_completes(scenario, sim, report, *runs)


def test_v3_access_token_expiring_mid_run_is_refreshed(scenario: Scenario, tmp_path: Path) -> None:
    """Access tokens living 1 s are refreshed as they expire (never per request); all done."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    with v3_simulator(tmp_path / "sim", scenario.seed, access_ttl=1.0, latency_ms=20.0) as sim:
        final = run_engine(scenario.migrate_args(sim, report, "--no-bulk"), env=v3_env())
        stats = sim.stats()
        assert_completes(scenario, sim, report, final)
    refreshes = stats["by_route"].get(TOKEN_ROUTE, 0)
    # One at the start (the login's token expires within the margin), then one about every
    # half lifetime: about 2 a second at most, whatever the number of requests.
    assert refreshes >= 2, stats
    assert refreshes <= 3 + 2 * final.seconds, stats
    assert stats["total"] > 10 * refreshes


def test_v3_requests_in_flight_meeting_an_expired_token_refresh_it_once(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Requests in flight meeting an expired token all get 401; one refresh only; all done."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    with v3_simulator(tmp_path / "sim", scenario.seed, latency_ms=15.0) as sim:
        args = scenario.migrate_args(sim, report, "--no-bulk")

        def expire() -> None:
            sim.clock.offset += 2 * 86400.0

        final = run_until(args, sim, lambda: sim.write_count() >= 20, expire)
        stats = sim.stats()
        assert stats["by_status"].get("401", 0) >= 2, stats
        assert stats["by_route"].get(TOKEN_ROUTE, 0) == 1, stats
        assert_completes(scenario, sim, report, final)


def test_v3_refresh_token_revoked_mid_run_stops_then_resumes_after_login(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Grant revoked mid-run: a clean stop (exit 1: writes were made) saying to log in again
    and that the same command resumes; after login it completes."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    with v3_simulator(tmp_path / "sim", scenario.seed, latency_ms=8.0) as sim:
        args = scenario.migrate_args(sim, report)
        stopped = run_until(args, sim, lambda: sim.write_count() >= 20, sim.revoke_all)
        assert stopped.returncode == 1, stopped.output
        assert "Traceback" not in stopped.stderr
        assert "python -m engine login" in stopped.stderr
        assert "run the same command again to resume" in stopped.stderr
        assert "invalid or expired" in stopped.stderr
        done = journal_outcomes(report.with_name("report.journal.sqlite"))
        assert 0 < done < len(scenario.targets)
        assert len(read_report(report)) == done

        sim.log_in()
        final = run_engine(args, env=v3_env())
        assert_completes(scenario, sim, report, stopped, final)
