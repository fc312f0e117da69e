"""Reruns and files that are not ours: a rerun retries rows that failed for a passing cause;
two runs of one migration never run at once; the engine never overwrites, adopts or deletes
a file that is not its own (the source, an unrelated database).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.cli import main
from engine.simulator import AccountStore, RunningSimulator

from . import test_inherited
from .conftest import (
    API_KEY,
    PASSWORD,
    SIM_FAST,
    USERNAME,
    Scenario,
    build_scenario,
    check_migration,
    engine_env,
    engine_process,
    read_report,
    simulator_in_thread,
    simulator_process,
)
from .test_faults import cli_args, sim_config
from .test_inherited import run


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A seeded account and a source of about 230 rows, both paths."""
    return build_scenario(tmp_path_factory.mktemp("scenario"), bulk=(60, 40, 30), per_set=8)


def impatient_account(sim: RunningSimulator) -> Account:
    """An account that gives a request up after two attempts (so 5xx answers fail rows)."""
    return Account(
        Credentials(USERNAME, API_KEY, PASSWORD),
        base_url=sim.base_url,
        ca_file=sim.ca_path,
        governor=RateGovernor(rate=None, concurrency=16),
        retry=RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.02, wait_jitter=0),
    )


async def test_a_rerun_retries_rows_that_failed_for_a_passing_cause(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows failed by 5xx answers are retried by the same command on a healed server, and the
    summary says so; in the end every row is done."""
    store = AccountStore.load(scenario.seed, sim_config())
    monkeypatch.setattr(test_inherited, "new_account", impatient_account)
    first = await run(store, scenario, tmp_path, error_rate=0.3, seed=5)
    failed = first.outcomes["failed"]
    assert failed > 0, "the fault did not fail any row"
    lines = read_report(tmp_path / "report.jsonl")
    assert all(line.get("reason") for line in lines if line["outcome"] == "failed")

    second = await run(store, scenario, tmp_path)
    assert second.retried >= failed
    assert "failed in an earlier run and were retried" in second.summary()
    assert second.outcomes["failed"] == 0
    check_migration(scenario, store, tmp_path / "report.jsonl")


def test_a_second_run_of_the_same_migration_exits_2_naming_the_first(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a run holds the journal, the same command exits 2 naming its pid, writes nothing,
    and the first run completes."""
    report = tmp_path / "report.jsonl"
    with simulator_process(
        tmp_path / "sim", scenario.seed, *SIM_FAST, "--activity-delay", "3"
    ) as sim:
        args = scenario.migrate_args(sim, report)
        with engine_process(args, env=engine_env()) as (first, _out, err):
            journal = report.with_name("report.journal.sqlite")
            deadline = time.monotonic() + 30
            while not _running_pid(journal) and time.monotonic() < deadline:
                assert first.poll() is None, err.read_text()
                time.sleep(0.05)
            assert _running_pid(journal) == first.pid
            with pytest.MonkeyPatch.context() as patch:
                for name, value in engine_env().items():
                    if name.startswith("CTCT_"):
                        patch.setenv(name, value)
                status = main(args)
            out_err = capsys.readouterr()
            assert status == 2, out_err
            assert f"pid {first.pid}" in out_err.err
            assert "another run of this migration is running" in out_err.err
            assert first.wait(timeout=90) in (0, 1), err.read_text()
        after = sim.stop()
    check_migration(scenario, after, report)


def _running_pid(journal: Path) -> int | None:
    if not journal.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
        try:
            row = db.execute("SELECT pid FROM runs WHERE status = 'running'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


@pytest.mark.parametrize("which", ["report", "journal"])
@pytest.mark.parametrize("restart", [False, True], ids=["", "restart"])
def test_the_source_named_as_report_or_journal_is_refused_untouched(
    scenario: Scenario,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    which: str,
    restart: bool,
) -> None:
    """`--report SOURCE` or `--journal SOURCE` (with or without --restart): exit 2, the source
    byte for byte as it was, nothing written to the account."""
    source = tmp_path / "contacts.csv"
    source.write_bytes(scenario.source.read_bytes())
    store = AccountStore.load(scenario.seed, sim_config())
    before = store.to_json()
    with simulator_in_thread(sim_config(), store) as sim:
        args = cli_args(sim, dataclasses.replace(scenario, source=source), tmp_path / "r.jsonl")
        args += [f"--{which}", str(source), *(["--restart"] if restart else [])]
        status = _main_with_credentials(args)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "is the source file" in err
    assert source.read_bytes() == scenario.source.read_bytes()
    assert store.to_json() == before


@pytest.mark.parametrize("restart", [False, True], ids=["", "restart"])
def test_an_unrelated_sqlite_file_as_journal_is_neither_changed_nor_deleted(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str], restart: bool
) -> None:
    """A `--journal` that is another application's database: exit 2, the file unchanged."""
    other = tmp_path / "app.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO orders VALUES (1, 9.5)")
    db.commit()
    db.close()
    content = other.read_bytes()
    store = AccountStore.load(scenario.seed, sim_config())
    with simulator_in_thread(sim_config(), store) as sim:
        args = [*cli_args(sim, scenario, tmp_path / "r.jsonl"), "--journal", str(other)]
        status = _main_with_credentials([*args, *(["--restart"] if restart else [])])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "is not a journal of this engine" in err
    assert other.read_bytes() == content


def _main_with_credentials(args: list[str]) -> int:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in engine_env().items():
            if name.startswith("CTCT_"):
                patch.setenv(name, value)
        return main(args)


def test_a_list_name_typo_leaves_nothing_that_blocks_the_corrected_command(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `--list` typo stops with exit 2 and no journal; the corrected command then runs."""
    store = AccountStore.load(scenario.seed, sim_config())
    report = tmp_path / "report.jsonl"
    with simulator_in_thread(sim_config(), store) as sim:
        args = cli_args(sim, scenario, report)
        assert _main_with_credentials([*args, "--list", "Alpah"]) == 2
        assert "nothing was written" in capsys.readouterr().err
        assert not report.with_name("report.journal.sqlite").exists()
        status = _main_with_credentials([*args, "--list", "Alpha"])
        out, err = capsys.readouterr()
    assert status == 1, out + err  # 1: the five invalid rows
    assert "another migration" not in err


def test_a_journal_of_another_migration_says_exactly_what_differs(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run with one encoding, then another: the refusal names the setting and both values."""
    store = AccountStore.load(scenario.seed, sim_config())
    report = tmp_path / "report.jsonl"
    with simulator_in_thread(sim_config(), store) as sim:
        args = cli_args(sim, scenario, report)
        _main_with_credentials(args)
        capsys.readouterr()
        assert _main_with_credentials([*args, "--encoding", "latin-1"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another migration; what differs: the settings" in err
    assert "encoding: 'utf-8' then, 'latin-1' now" in err
    assert "source file" not in err
