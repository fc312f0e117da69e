"""Invariant I4 on a V3 account: `python -m engine migrate --backend v3`, killed with SIGKILL
at a named crash point or at an arbitrary instant, and run again with the same command,
converges to a complete migration, on the bulk path and contact by contact (`--no-bulk`).

The V3 simulator serves from a thread of the test process; the engine is a real subprocess.
After the resume the account is saved, read back from its state file and checked whole (I1,
I2 with the write log, I3, one contact per email, no token in any output: I7).
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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
from .v3_support import V3Sim, v3_env, v3_simulator, v3_simulator_process


@dataclass(frozen=True)
class Crash:
    """How the engine is killed before the run that completes.

    Attributes:
        point: the `CTCT_ENGINE_CRASH_AT` value, or None for a kill at a random instant
            after the first write the simulator answered.
        no_bulk: the per-contact path only.
    """

    point: str | None
    no_bulk: bool = False

    @property
    def args(self) -> tuple[str, ...]:
        """The extra `migrate` options."""
        return ("--no-bulk",) if self.no_bulk else ()


def _crash(point: str | None, *, no_bulk: bool = False) -> object:
    name = point or "sigkill-mid-run"
    return pytest.param(Crash(point, no_bulk), id=f"{name}-{'no-bulk' if no_bulk else 'bulk'}")


CRASHES = [
    _crash("read:1"),  # the first chunk of rows read (the source has more than one)
    _crash("search:40"),  # a lookup answered
    _crash("put:12"),  # a contact write answered, its outcome not recorded
    _crash("journal:1"),  # every outcome journaled, the report not yet written
    _crash("activity-submitted:1"),  # an import accepted, its id not yet journaled
    _crash("activity-journaled:2"),  # journaled, not yet polled
    _crash("activity-complete:1"),  # polled to its end, its outcomes not recorded
    _crash(None),
    _crash("search:90", no_bulk=True),
    _crash("put:150", no_bulk=True),
    _crash("journal:1", no_bulk=True),
    _crash(None, no_bulk=True),
]
_RNG = random.Random(20_260_312)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A V3 account and a source of about 580 rows (two chunks of the reader), both paths."""
    return build_scenario(
        tmp_path_factory.mktemp("v3-scenario"), bulk=(200, 160, 120), per_set=8, backend="v3"
    )


def kill_mid_run(args: list[str], sim: V3Sim, delay: float) -> EngineResult:
    """Run the engine and SIGKILL it `delay` seconds after the simulator answered its first
    write (an instant no crash point names)."""
    started = time.monotonic()
    with engine_process(args, env=v3_env()) as (process, out, err):
        deadline = started + 60
        while process.poll() is None and sim.write_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        returncode = process.wait(timeout=60)
        return EngineResult(
            returncode, out.read_text(), err.read_text(), time.monotonic() - started
        )


@pytest.mark.parametrize("crash", CRASHES)
def test_killed_v3_run_resumes_to_a_complete_migration(
    crash: Crash, scenario: Scenario, tmp_path: Path
) -> None:
    """Killed (SIGKILL) and run again: every row done once, I1-I3 and I7 over the account."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    # A little latency: a kill at a random instant lands while requests are in flight.
    latency = 0.0 if crash.point else 4.0
    with v3_simulator(tmp_path / "sim", scenario.seed, latency_ms=latency) as sim:
        args = scenario.migrate_args(sim, report, *crash.args)
        if crash.point is not None:
            killed = run_engine(args, env=v3_env(crash_at=crash.point))
        else:
            killed = kill_mid_run(args, sim, _RNG.uniform(0.05, 0.3))
        assert killed.killed, f"the engine was not killed: {killed.output}"
        assert "Traceback" not in killed.stderr
        final = run_engine(args, env=v3_env())
        sim.stop()
    assert final.returncode == 1, final.output  # 1: the five invalid rows, nothing pending
    assert "Traceback" not in final.stderr
    assert "5 rejected" in final.stdout
    assert "not done yet" not in final.stdout
    assert sim.account is not None
    check_migration(
        scenario,
        sim.account,
        report,
        writes=sim.writes(),
        secrets=sim.all_secrets(),
        outputs=[killed.output, final.output, report.parent],
    )
    assert journal_outcomes(report.with_name("report.journal.sqlite")) == len(read_report(report))


def test_killed_v3_run_resumes_on_the_simulator_as_its_own_process(
    scenario: Scenario, tmp_path: Path
) -> None:
    """On `simulate --api v3 --state` as a process: killed, resumed; its saved account is whole."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    with v3_simulator_process(tmp_path / "sim", scenario.seed) as sim:
        args = scenario.migrate_args(sim, report)
        killed = run_engine(args, env=v3_env(crash_at="activity-journaled:1"))
        assert killed.killed, killed.output
        final = run_engine(args, env=v3_env())
        account = sim.stop()
    assert final.returncode == 1, final.output
    assert "not done yet" not in final.stdout
    check_migration(
        scenario,
        account,
        report,
        writes=sim.writes(),
        secrets=sim.all_secrets(),
        outputs=[killed.output, final.output, report.parent, tmp_path / "sim" / "sim-stderr.log"],
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")],
)
def test_v3_graceful_stop_then_resume_and_audit(
    signum: signal.Signals, scenario: Scenario, tmp_path: Path
) -> None:
    """SIGTERM/SIGINT mid-run on V3 (with --snapshot): exit 1 saying how to resume, whole
    journal and report; the resume completes, and the audit proves every list kept."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    journal = report.with_name("report.journal.sqlite")
    with v3_simulator(tmp_path / "sim", scenario.seed, latency_ms=20.0) as sim:
        args = scenario.migrate_args(sim, report, "--snapshot")
        with engine_process(args, env=v3_env()) as (process, out, err):
            deadline = time.monotonic() + 60
            while sim.write_count() < 10 and process.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert process.poll() is None, "the run ended before it could be stopped"
            process.send_signal(signum)
            status = process.wait(timeout=60)
            stdout, stderr = out.read_text(), err.read_text()
        assert status == 1, stdout + stderr
        assert "Traceback" not in stderr
        assert "not done yet: run the same command again to resume" in stdout
        partial = read_report(report)
        assert journal_outcomes(journal) == len(partial)

        final = run_engine(args, env=v3_env())
        audit = run_engine(
            ["audit", "--report", str(report), "--journal", str(journal), *sim.account_args()],
            env=v3_env(),
        )
        sim.stop()
    assert final.returncode == 1, final.output  # 1: the invalid rows
    assert "not done yet" not in final.stdout
    assert "done by an earlier run" in final.stdout
    assert audit.returncode == 0, audit.output
    assert "no violation" in audit.stdout
    assert sim.account is not None
    check_migration(
        scenario,
        sim.account,
        report,
        writes=sim.writes(),
        secrets=sim.all_secrets(),
        outputs=[stdout, stderr, final.output, audit.output, report.parent],
    )
