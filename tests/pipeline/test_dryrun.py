"""The dry run predicts the requests a run then sends: on mixed inputs (existing, already on
the target, Do Not Mail, Removed and new contacts; both paths, the probe and its activity
included), within 10% with `lookup`, and never fewer without it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.pipeline.config import MigrationConfig
from engine.pipeline.dryrun import plan_migration, polls_for
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import migrate
from engine.simulator import RunningSimulator, SimulatorConfig, serve

from .conftest import new_account, sim_stats, write_csv
from .test_e2e import seed_mixed

HEADER = ["Email Address", "First Name", "Lists"]


def mixed_source(tmp_path: Path, sim: RunningSimulator, *, named: bool) -> Path:
    """96 contacts of every kind for Spring Promo (the bulk path) and 20 for Other (the
    per-contact path, a batch under 25); with `named`, half of the rows give a first name."""
    groups = seed_mixed(sim.store, per_group=30)
    rows: list[list[str]] = []
    for kind, emails in groups.items():
        for i, email in enumerate(emails):
            rows.append([email, f"{kind}{i}" if named and i % 2 else "", "Spring Promo"])
    for i in range(10):
        rows.append([f"existing{i}@example.com", "", "Spring Promo;Other"])
        rows.append([f"other-new{i}@example.org", "", "Other"])
    return write_csv(tmp_path / "in.csv", HEADER, rows)


@pytest.mark.parametrize("named", [False, True], ids=["emails-only", "with-names"])
@pytest.mark.parametrize("lists_only", [False, True], ids=["fields", "lists-only"])
async def test_the_dry_run_predicts_the_requests_of_the_run_within_ten_percent(
    tmp_path: Path, named: bool, lists_only: bool
) -> None:
    """With lookups the prediction is within 10% of the run's requests; without, above them."""
    sim_config = SimulatorConfig(host="127.0.0.1", port=0, activity_delay=0.3, seed=3)
    config = MigrationConfig(
        read=ReadOptions(lists_column="Lists"),
        poll_initial=0.05,
        poll_max=0.1,
        linger=0.05,
        progress_interval=0.05,
        activity_seconds=0.3,
        lists_only=lists_only,
    )
    async with serve(sim_config) as sim:
        source = mixed_source(tmp_path, sim, named=named)
        async with new_account(sim) as account:
            guess = await plan_migration(account, source, config=config)
            plan = await plan_migration(account, source, config=config, lookup=True)
            await sim_stats(sim, reset=True)
            report = await migrate(
                account,
                source,
                config=dataclasses.replace(config),
                report=tmp_path / "report.jsonl",
                journal=None,
            )
        sent = (await sim_stats(sim))["total"]

    assert report.outcomes["bulk_added"] > 50  # both paths ran
    assert report.outcomes["created"] + report.outcomes["updated"] >= 10
    assert plan.bulk_path == guess.bulk_path
    assert plan.contact_path == 20
    assert plan.activities >= 2  # the probe's and the rest's
    assert abs(plan.requests - sent) <= 0.1 * sent, (plan.describe(), sent)
    assert guess.requests >= sent, (guess.describe(), sent)
    assert plan.seconds is not None
    assert plan.seconds >= plan.activities / 4 * 0.3


def test_polls_follow_the_bulk_paths_schedule() -> None:
    """Polls wait half as long again each time from `poll_initial`, up to `poll_max`, until
    the activity ends (the dry run counts them as the bulk path sends them)."""
    config = MigrationConfig(poll_initial=5, poll_max=30)
    assert [config.next_poll(d) for d in (5, 7.5, 20, 30)] == [7.5, 11.25, 30, 30]
    # Waits 5, 7.5, 11.25, 16.875, 25.3125, 30, 30: polls at 5, 12.5, 23.75, 40.6, 65.9,
    # 95.9 and 125.9 s.
    assert [polls_for(s, config) for s in (1, 5, 6, 35, 65, 120, 126)] == [1, 1, 2, 4, 5, 7, 8]
