"""`python -m engine audit --report PATH`: after a clean migration it finds no violation;
after tampering (another client removes a target or a list the contact had before) it names
each contact and what it lost, with a non-zero exit; with `migrate --snapshot` it proves I1
for the bulk path too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig

from .conftest import (
    API_KEY,
    PASSWORD,
    USERNAME,
    Scenario,
    build_scenario,
    memberships,
    read_report,
    set_lists,
    sim_stats_sync,
    simulator_in_thread,
    writes_of,
)

CONFIG = SimulatorConfig(
    host="127.0.0.1",
    port=0,
    username=USERNAME,
    api_key=API_KEY,
    password=PASSWORD,
    activity_delay=0.02,
    seed=23,
)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A seeded account and a source of about 230 rows, both paths."""
    return build_scenario(tmp_path_factory.mktemp("scenario"), bulk=(60, 40, 30), per_set=8)


@dataclass
class Migrated:
    """An account after a migration through the CLI.

    Attributes:
        sim: the simulator serving it.
        store: the account.
        report: the migration's report.
        lines: the report's lines.
        before: email -> (status, list names) before the migration.
    """

    sim: RunningSimulator
    store: AccountStore
    report: Path
    lines: list[dict[str, Any]]
    before: dict[str, tuple[str, frozenset[str]]]

    def audit(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
        """Run `audit --report …` in-process; (exit status, stdout); no traceback, no write."""
        writes = writes_of(sim_stats_sync(self.sim))
        args = ["audit", "--report", str(self.report), "--base-url", self.sim.base_url]
        args += ["--ca-file", str(self.sim.ca_path), "--rate-limit", "10000", *extra]
        status = main(args)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        assert writes_of(sim_stats_sync(self.sim)) == writes, "the audit wrote"
        return status, out

    def done(self, path: str, *, existing: bool) -> list[str]:
        """Emails updated or bulk-added on `path` ("contact" or "bulk") that were already on
        some list before the run (`existing`), or created / on none."""
        return [
            line["email"]
            for line in self.lines
            if line.get("path") == path
            and line["outcome"] in ("created", "updated", "bulk_added")
            and bool(self.before.get(line["email"], ("", frozenset()))[1]) == existing
        ]

    def remove(self, email: str, name: str) -> None:
        """Another client takes `email` off the list `name`."""
        set_lists(self.store, email, memberships(self.store)[email][1] - {name})


@contextmanager
def migrated(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> Iterator[Migrated]:
    """Serve the seeded account and migrate the scenario through the CLI."""
    store = AccountStore.load(scenario.seed, CONFIG)
    before = memberships(store)
    report = tmp_path / "report.jsonl"
    with simulator_in_thread(CONFIG, store) as sim:
        args = ["migrate", str(scenario.source), "--lists-column", "Lists", "--report"]
        args += [str(report), "--rate-limit", "10000", "--poll-initial", "0.02", "--quiet"]
        args += ["--base-url", sim.base_url, "--ca-file", str(sim.ca_path), *extra]
        status = main(args)
        out, err = capsys.readouterr()
        assert status == 1, out + err  # 1: the invalid rows
        assert "not done yet" not in out
        yield Migrated(sim, store, report, read_report(report), before)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The account's credentials in `CTCT_*`."""
    monkeypatch.setenv("CTCT_USERNAME", USERNAME)
    monkeypatch.setenv("CTCT_API_KEY", API_KEY)
    monkeypatch.setenv("CTCT_PASSWORD", PASSWORD)


NOTE = "note: without a --snapshot, contacts of the bulk path are checked for targets only"


@pytest.mark.usefixtures("credentials")
@pytest.mark.parametrize(
    "snapshot", [pytest.param(False, id="without-snapshot"), pytest.param(True, id="snapshot")]
)
def test_clean_migration_audits_without_violation(
    snapshot: bool, scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clean migration audits with exit 0, "no violation" (bulk contacts too with --snapshot)."""
    with migrated(scenario, tmp_path, capsys, *(("--snapshot",) if snapshot else ())) as result:
        status, out = result.audit(capsys)
    touched = ("created", "updated", "unchanged", "bulk_added")
    done = [line for line in result.lines if line["outcome"] in touched]
    per_contact = sum(line["path"] == "contact" for line in done)
    assert status == 0, out
    assert "no violation" in out
    known = len(done) if snapshot else per_contact
    assert f"audit: {len(done)} contacts re-read ({known} with their lists before" in out
    assert (NOTE in out) is not snapshot


@pytest.mark.usefixtures("credentials")
def test_tampering_is_reported_per_contact(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A removed target or earlier list: audit exits 1 naming each contact and what it lost."""
    with migrated(scenario, tmp_path, capsys) as result:
        fresh = result.done("contact", existing=False) + result.done("bulk", existing=False)
        lost_target = {
            e: sorted(scenario.targets[e])[0] for e in fresh if len(scenario.targets[e]) > 1
        }
        lost_target = dict(list(lost_target.items())[:3])
        lost_before = {}
        for email in result.done("contact", existing=True):
            other = sorted(result.before[email][1] - scenario.targets[email])
            if other and len(lost_before) < 3:
                lost_before[email] = other[0]
        assert len(lost_target) == len(lost_before) == 3
        for email, name in {**lost_target, **lost_before}.items():
            result.remove(email, name)
        status, out = result.audit(capsys)
    assert status == 1, out
    assert "6 violation(s)" in out
    for email, name in lost_target.items():
        assert f"{email}: missing targets {name} (status active)" in out
    for email, name in lost_before.items():
        assert f"{email}: LOST lists {name} (status active)" in out


@pytest.mark.usefixtures("credentials")
def test_snapshot_proves_i1_for_the_bulk_path(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With migrate --snapshot the audit reports a list a bulk-added contact lost."""
    with migrated(scenario, tmp_path, capsys, "--snapshot") as result:
        victims = {}
        for email in result.done("bulk", existing=True):
            other = sorted(result.before[email][1] - scenario.targets[email])
            if other and len(victims) < 2:
                victims[email] = other[0]
        assert len(victims) == 2
        for email, name in victims.items():
            result.remove(email, name)
        status, out = result.audit(capsys)
    assert status == 1, out
    assert "2 violation(s)" in out
    for email, name in victims.items():
        assert f"{email}: LOST lists {name} (status active)" in out
    assert NOTE not in out


@pytest.mark.usefixtures("credentials")
def test_audit_of_a_resumed_run_still_knows_targets_and_lists_before(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resumed run's report keeps targets and lists before: the audit still finds losses."""
    with migrated(scenario, tmp_path, capsys) as result:
        first = read_report(result.report)
        args = ["migrate", str(scenario.source), "--lists-column", "Lists", "--report"]
        args += [str(result.report), "--base-url", result.sim.base_url, "--quiet"]
        assert main([*args, "--ca-file", str(result.sim.ca_path), "--rate-limit", "10000"]) == 1
        out, _ = capsys.readouterr()
        assert "rows were done by an earlier run" in out
        resumed = read_report(result.report)
        existing = result.done("contact", existing=True)
        # A list the contact had before and keeps; a target it already had (not added).
        lost = next(e for e in existing if result.before[e][1] - scenario.targets[e])
        lost_list = sorted(result.before[lost][1] - scenario.targets[lost])[0]
        had = next(e for e in existing if e != lost and result.before[e][1] & scenario.targets[e])
        had_target = sorted(result.before[had][1] & scenario.targets[had])[0]
        result.remove(lost, lost_list)
        result.remove(had, had_target)
        status, out = result.audit(capsys)
    assert resumed == sorted(first, key=lambda line: line["rows"][0])
    assert status == 1, out
    assert f"{lost}: LOST lists {lost_list}" in out
    assert f"{had}: missing targets {had_target}" in out
