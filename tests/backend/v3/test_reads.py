"""Reads of many contacts on V3: the audit pages the target lists (500 contacts a request)
instead of looking every contact up, and still finds a lost list or a missed target."""

from __future__ import annotations

from pathlib import Path

import anyio

from engine.audit import audit
from engine.pipeline.config import MigrationConfig
from engine.pipeline.dryrun import plan_migration
from engine.pipeline.run import migrate
from engine.simulator.v3 import RunningSimulator

from .conftest import BackendOpener


async def test_the_audit_pages_the_target_lists_and_finds_what_is_wrong(
    sim: RunningSimulator, open_backend: BackendOpener, tmp_path: Path
) -> None:
    """1,200 migrated contacts are audited in a handful of requests (list pages, not a
    lookup each); a contact that lost a list and one taken off its target are reported."""
    old = sim.store.add_list("Old")
    emails = [f"c{n:04d}@example.com" for n in range(1200)]
    for email in emails[:600]:
        sim.store.add_contact(email, lists=[old])
    sim.store.add_list("News")
    config = MigrationConfig(bulk_threshold=None, poll_initial=0.02, poll_max=0.05)
    report = tmp_path / "report.jsonl"
    async with open_backend(sim) as backend:
        with anyio.fail_after(60):
            migrated = await migrate(
                backend,
                [{"email": e} for e in emails],
                lists=["News"],
                config=config,
                report=report,
                journal=None,
            )
            assert migrated.outcomes["updated"] == 600
            assert migrated.outcomes["created"] == 600
            clean = await audit(backend, report)
            # Someone else takes one contact off Old and another off News.
            for email, keep in ((emails[0], "News"), (emails[1], "Old")):
                stored = sim.store.contact_by_email(email)
                assert stored is not None
                kept = [i for i in stored.lists if sim.store.get_list(i).name == keep]
                sim.store._set_lists(stored, kept)
            dirty = await audit(backend, report)

    assert clean.ok
    assert clean.checked == 1200
    assert clean.requests == 3, clean.requests  # 3 pages of News, no lookup
    assert not dirty.ok
    found = {f.email: (f.missing_targets, f.lost_lists) for f in dirty.findings}
    assert found == {emails[0]: ((), ("Old",)), emails[1]: (("News",), ())}


async def test_the_dry_run_pages_a_small_account_instead_of_looking_each_contact_up(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """`--lookup` over 600 contacts of a 700-contact account reads 2 pages of the account
    (500 a request) instead of 600 lookups, and still counts who exists."""
    old = sim.store.add_list("Old")
    sim.store.add_list("News")
    for n in range(700):
        sim.store.add_contact(f"c{n:04d}@example.com", lists=[old])
    source = [{"email": f"c{n:04d}@example.com"} for n in range(300)]
    source += [{"email": f"new{n}@example.com"} for n in range(300)]
    config = MigrationConfig(bulk_threshold=None)
    async with open_backend(sim) as backend:
        with anyio.fail_after(30):
            plan = await plan_migration(backend, source, lists=["News"], config=config, lookup=True)
    assert plan.existing == 300
    assert plan.lookup_requests <= 6, plan.lookup_requests  # 2 account pages, lists, members
