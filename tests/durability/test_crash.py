"""Invariant I4: the engine, killed with SIGKILL at any point and run again with the same
command, converges to the state of an uninterrupted run without redoing confirmed writes;
`--restart`, foreign journals, and a graceful stop on SIGTERM or SIGINT.

Every test runs the real processes: `python -m engine simulate` with a seeded state file and
`python -m engine migrate` with the credentials in the environment. The account is read back
from the state file the simulator saves when it stops, and checked whole.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.crashpoints import POINTS

from .conftest import (
    SIM_FAST,
    EngineResult,
    Scenario,
    build_scenario,
    check_migration,
    engine_env,
    engine_process,
    journal_outcomes,
    read_report,
    run_engine,
    simulator_process,
)

#: Extra writes a resumed run may send per kill: activities submitted but not yet journaled
#: (at most `--bulk-limit`, 4, are in flight) are submitted again, and the new process probes
#: its first bulk batch again (one more activity). Per-contact writes are never repeated: a
#: contact whose outcome was lost is read again and found `unchanged`.
EXTRA_WRITES_PER_KILL = 4 + 1
#: Simulator settings of the timed kills and graceful stops: slow enough to be mid-run.
SIM_SLOW = (*SIM_FAST, "--latency-ms", "80")  # long enough that a timed kill lands mid-run
_RNG = random.Random(20_240_604)
#: The account options of `audit`: no client-side rate limit.
FAST = ("--rate-limit", "10000", "--concurrency", "16")


@dataclass(frozen=True)
class Crash:
    """How the engine is killed before the final, uninterrupted run.

    Attributes:
        points: one `CTCT_ENGINE_CRASH_AT` value per killed run, in order.
        at_writes: or: SIGKILL once the simulator has answered this many writes.
        after: or: SIGKILL this many seconds after the engine started.
        engine_args: more `migrate` options for every run.
    """

    points: tuple[str, ...] = ()
    at_writes: int | None = None
    after: float | None = None
    engine_args: tuple[str, ...] = ()

    @property
    def kills(self) -> int:
        """The number of killed runs."""
        return len(self.points) + (self.at_writes is not None) + (self.after is not None)


def _point(spec: str, *more: str, args: tuple[str, ...] = ()) -> object:
    return pytest.param(Crash(points=(spec, *more), engine_args=args), id="+".join((spec, *more)))


_AT_WRITES = sorted(_RNG.sample(range(5, 160), 3))
_AFTER = sorted(round(_RNG.uniform(1.0, 2.2), 2) for _ in range(2))

CRASHES = [
    _point("read:1"),
    _point("read:2"),
    _point("search:1"),
    _point("search:4"),
    _point("put:1"),
    _point("put:80"),
    _point("put:160"),
    _point("journal:1"),
    _point("activity-submitted:1"),
    _point("activity-submitted:2"),
    _point("activity-submitted:4"),
    _point("activity-journaled:1"),
    _point("activity-journaled:3"),
    _point("activity-complete:1"),
    _point("activity-complete:2"),
    _point("activity-complete:4"),
    # An activity's outcomes buffered, not yet written: the resumed run settles it again.
    _point("bulk-recorded:1"),
    _point("bulk-recorded:3"),
    # Killed again while resuming: a resumed run is as crash-safe as a first one.
    _point("put:40", "activity-journaled:2"),
    _point("put:100", "activity-complete:1"),
    _point("search:2", "activity-submitted:1", "journal:1"),
    # The per-contact path alone (every batch contact by contact).
    _point("put:300", args=("--no-bulk",)),
    *[pytest.param(Crash(at_writes=n), id=f"sigkill-at-{n}-writes") for n in _AT_WRITES],
    *[pytest.param(Crash(after=t), id=f"sigkill-after-{t}s") for t in _AFTER],
]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The seeded account and source every test of this module migrates."""
    return build_scenario(tmp_path_factory.mktemp("scenario"))


@pytest.fixture(scope="module")
def baseline(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Writes of an uninterrupted run, by path option ("" or "--no-bulk")."""
    folder = tmp_path_factory.mktemp("baseline")
    writes = {}
    for option in ("", "--no-bulk"):
        extra = (option,) if option else ()
        report = folder / f"report{option}.jsonl"
        with simulator_process(folder / f"sim{option}", scenario.seed, *SIM_FAST) as sim:
            result = run_engine(scenario.migrate_args(sim, report, *extra))
            writes[option] = sim.writes()
            after = sim.stop()
        assert result.returncode == 1, result.output  # 1: the five invalid rows
        check_migration(scenario, after, report)
    return writes


def kill_at_writes(args: list[str], sim_writes: Callable[[], int], count: int) -> EngineResult:
    """Run the engine and SIGKILL it as soon as the simulator has answered `count` writes."""
    started = time.monotonic()
    with engine_process(args, env=engine_env()) as (process, out, err):
        deadline = started + 60
        while process.poll() is None and time.monotonic() < deadline:
            if sim_writes() >= count:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        returncode = process.wait(timeout=60)
        return EngineResult(
            returncode, out.read_text(), err.read_text(), time.monotonic() - started
        )


def _counted(journal: Path, *tables: str) -> list[int]:
    """`SELECT COUNT(*) FROM` each of `tables` (a table and its WHERE) in the journal."""
    db = sqlite3.connect(journal)
    try:
        return [db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables]
    finally:
        db.close()


def test_crash_points_cover_every_named_point() -> None:
    """The crash list passes through every crash point the engine defines."""
    used = {
        spec.split(":")[0]
        for param in CRASHES
        for spec in param.values[0].points  # type: ignore[union-attr]
    }
    assert used == set(POINTS)
    assert sum(param.values[0].kills for param in CRASHES) >= 20  # type: ignore[union-attr]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("crash", CRASHES)
def test_killed_run_resumes_to_the_same_account(
    crash: Crash, scenario: Scenario, baseline: dict[str, int], tmp_path: Path
) -> None:
    """Killed (SIGKILL) and run again: I1, I3, one contact per email, writes ≈ uninterrupted."""
    report = tmp_path / "report.jsonl"
    sim_args = SIM_FAST if crash.points else SIM_SLOW
    with simulator_process(tmp_path / "sim", scenario.seed, *sim_args) as sim:
        args = scenario.migrate_args(sim, report, *crash.engine_args)
        killed: list[EngineResult] = []
        for point in crash.points:
            killed.append(run_engine(args, crash_at=point))
        if crash.at_writes is not None:
            killed.append(kill_at_writes(args, sim.writes, crash.at_writes))
        if crash.after is not None:
            killed.append(run_engine(args, kill_after=crash.after))
        for result in killed:
            assert result.killed, f"the engine was not killed: {result.output}"
            assert "Traceback" not in result.stderr
        writes_before_resume = sim.writes()
        final = run_engine(args)
        writes = sim.writes()
        after = sim.stop()

    assert final.returncode == 1, final.output  # 1: the five invalid rows, nothing pending
    assert "Traceback" not in final.stderr
    assert "5 rejected" in final.stdout
    assert "not done yet" not in final.stdout
    check_migration(scenario, after, report)
    assert journal_outcomes(report.with_name("report.journal.sqlite")) == len(read_report(report))
    uninterrupted = baseline[crash.engine_args[0] if crash.engine_args else ""]
    print(
        f"{crash}: writes {writes_before_resume} before the resume, {writes} in all, "
        f"{uninterrupted} uninterrupted"
    )
    assert writes <= uninterrupted + EXTRA_WRITES_PER_KILL * crash.kills


@pytest.mark.timeout(240)
def test_an_activity_posted_but_not_journaled_is_not_called_unchanged(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Killed after an activity's POST, before its id is journaled, then resumed contact by
    contact: the contacts that activity added are `bulk_added`, not `unchanged` (I3)."""
    report = tmp_path / "report.jsonl"
    with simulator_process(tmp_path / "sim", scenario.seed, *SIM_FAST) as sim:
        args = scenario.migrate_args(sim, report)
        assert run_engine(args, crash_at="activity-submitted:1").killed
        time.sleep(1.0)  # the simulator finishes the activity the engine never journaled
        final = run_engine([*args, "--no-bulk"])
        after = sim.stop()
    assert final.returncode == 1, final.output
    lines = check_migration(scenario, after, report)
    noted = [line for line in lines if "posted by an earlier run" in line.get("note", "")]
    assert noted, "no contact was settled from the unjournaled activity"
    assert {line["outcome"] for line in noted} == {"bulk_added"}


def test_restart_starts_over(scenario: Scenario, tmp_path: Path) -> None:
    """--restart after a kill deletes the journal, plans every row again; the account converges."""
    report = tmp_path / "report.jsonl"
    journal = tmp_path / "report.journal.sqlite"
    with simulator_process(tmp_path / "sim", scenario.seed, *SIM_FAST) as sim:
        args = scenario.migrate_args(sim, report)
        # Killed after the last outcome was journaled, before the report was written.
        assert run_engine(args, crash_at="journal:1").killed
        assert journal_outcomes(journal) == len(scenario.targets) + len(scenario.rejected_rows)
        final = run_engine([*args, "--restart"])
        after = sim.stop()
    assert final.returncode == 1, final.output
    assert "done by an earlier run" not in final.stdout
    lines = check_migration(scenario, after, report, since_seed=False)
    assert not [line for line in lines if line["outcome"] in ("created", "updated")]
    db = sqlite3.connect(journal)
    try:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)
    finally:
        db.close()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("source", id="another-source"),
        pytest.param("lists", id="another-list-set"),
    ],
)
def test_journal_of_another_migration_is_refused(
    change: str, scenario: Scenario, tmp_path: Path
) -> None:
    """A journal of another source or list set: exit 2, a clear message, nothing written."""
    report = tmp_path / "report.jsonl"
    source = tmp_path / "contacts.csv"
    source.write_bytes(scenario.source.read_bytes())
    with simulator_process(tmp_path / "sim", scenario.seed, *SIM_FAST) as sim:
        args = scenario.migrate_args(sim, report)
        args[1] = str(source)
        assert run_engine(args, crash_at="put:20").killed
        if change == "source":
            with source.open("a", encoding="utf-8") as file:
                file.write("late@example.com,Late,Beta\n")
        else:
            args += ["--list", "Epsilon"]
        writes = sim.writes()
        refused = run_engine(args)
        assert sim.writes() == writes
    assert refused.returncode == 2, refused.output
    assert "Traceback" not in refused.stderr
    assert "belongs to another migration" in refused.stderr
    assert "--restart" in refused.stderr
    assert "nothing was written" in refused.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")],
)
def test_graceful_stop_then_resume(
    signum: signal.Signals, scenario: Scenario, tmp_path: Path
) -> None:
    """SIGTERM/SIGINT mid-run: exit 1, how to resume, whole journal and report; resume completes."""
    report = tmp_path / "report.jsonl"
    journal = tmp_path / "report.journal.sqlite"
    sim_args = (*SIM_FAST, "--latency-ms", "40", "--activity-delay", "1.5")
    with simulator_process(tmp_path / "sim", scenario.seed, *sim_args) as sim:
        args = scenario.migrate_args(sim, report)
        with engine_process(args) as (process, out, err):
            deadline = time.monotonic() + 60
            while sim.writes() < 30 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert process.poll() is None, "the run ended before it could be stopped"
            process.send_signal(signum)
            status = process.wait(timeout=60)
            stdout, stderr = out.read_text(), err.read_text()
        assert status == 1, stdout + stderr
        assert "Traceback" not in stderr
        assert "stopping: finishing requests in flight" in stderr
        assert "not done yet: run the same command again to resume" in stdout
        assert f"journal: {journal}" in stdout
        partial = read_report(report)  # whole lines only
        assert journal_outcomes(journal) == len(partial)
        rows = [row for line in partial for row in line["rows"]]
        assert len(rows) == len(set(rows)) < len(scenario.rows)

        final = run_engine(args)
        after = sim.stop()
    assert final.returncode == 1, final.output
    assert "not done yet" not in final.stdout
    assert "done by an earlier run" in final.stdout
    check_migration(scenario, after, report)


def test_a_kill_loses_only_outcomes_in_flight(scenario: Scenario, tmp_path: Path) -> None:
    """A kill long after the last contact write loses no journaled outcome; the audit is clean."""
    report = tmp_path / "report.jsonl"
    journal = tmp_path / "report.journal.sqlite"
    sim_args = (*SIM_FAST, "--activity-delay", "1.5", "--activity-jitter", "0")
    with simulator_process(tmp_path / "sim", scenario.seed, *sim_args) as sim:
        args = scenario.migrate_args(sim, report)
        assert run_engine(args, crash_at="activity-complete:1").killed
        (journaled,) = _counted(journal, "outcomes WHERE path = 'contact'")
        final = run_engine(args)
        audit = run_engine(["audit", "--report", str(report), *sim.account_args(), *FAST])
        after = sim.stop()
    assert final.returncode == 1, final.output
    lines = check_migration(scenario, after, report)
    assert journaled == sum(line.get("path") == "contact" for line in lines)
    assert audit.returncode == 0, audit.output
    assert "no violation" in audit.stdout
    assert (
        f"audit: {len(scenario.targets) - len(scenario.opted_out)} contacts re-read" in audit.stdout
    )


@pytest.mark.timeout(240)
def test_an_activitys_outcomes_killed_in_the_buffer_are_settled_again(
    scenario: Scenario, baseline: dict[str, int], tmp_path: Path
) -> None:
    """Killed once an activity's outcomes are buffered, not yet written: the journal holds
    none of them, and the resumed run settles that activity again instead of sending its
    contacts once more; every row is reported once and the account is right."""
    report = tmp_path / "report.jsonl"
    journal = tmp_path / "report.journal.sqlite"
    with simulator_process(tmp_path / "sim", scenario.seed, *SIM_FAST) as sim:
        args = scenario.migrate_args(sim, report)
        assert run_engine(args, crash_at="bulk-recorded:1").killed
        bulk, activities = _counted(journal, "outcomes WHERE path = 'bulk'", "activities")
        final = run_engine(args)
        writes = sim.writes()
        after = sim.stop()
    assert bulk == 0
    assert activities >= 1
    assert final.returncode == 1, final.output
    check_migration(scenario, after, report)
    assert journal_outcomes(journal) == len(read_report(report))
    assert writes <= baseline[""] + EXTRA_WRITES_PER_KILL
