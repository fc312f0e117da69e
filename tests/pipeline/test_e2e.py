"""End-to-end migrations through the simulator over https: both paths, faults, cancellation,
request counts, and the seed scenario (List A must keep its 2,600 members)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.backend.v1 import Account, codec
from engine.errors import AuthenticationError, ConfigError, QuotaExhaustedError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Outcome
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import MigrationReport, migrate
from engine.pipeline.stats import Progress
from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig

from .conftest import (
    SUCCESSES,
    SimSpy,
    assert_invariants,
    list_ids,
    new_account,
    read_report,
    sim_stats,
    sim_stats_sync,
    simulator_in_thread,
    snapshot,
    write_csv,
    writes_in,
)

PATHS = [
    pytest.param(25, id="bulk"),
    pytest.param(None, id="per-contact"),
]
HEADER = ["Email Address", "First Name"]


def config_for(
    base: MigrationConfig, bulk_threshold: int | None, **changes: Any
) -> MigrationConfig:
    """`base` with the path chosen by `bulk_threshold` and other settings changed."""
    return dataclasses.replace(base, bulk_threshold=bulk_threshold, **changes)


async def run(
    account: Account, source: Any, config: MigrationConfig, tmp_path: Path, **kw: Any
) -> MigrationReport:
    """Migrate with a report in the test's folder."""
    return await migrate(account, source, config=config, report=tmp_path / "report.jsonl", **kw)


def by_email(lines: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Report lines of planned contacts, by email."""
    return {line["email"]: line for line in lines if line.get("path")}


def seed_list(store: AccountStore, name: str, count: int, prefix: str = "member") -> list[str]:
    """A list of `count` contacts; returns their emails."""
    list_id = store.create_list(name)
    emails = [f"{prefix}{i}@example.com" for i in range(count)]
    for email in emails:
        store.add_contact(email, lists=[list_id])
    return emails


def seed_mixed(store: AccountStore, per_group: int = 30) -> dict[str, list[str]]:
    """Lists Customers, Spring Promo and Other, and contacts of every kind: existing on
    Customers (some self-signed-up), already on the target, Do Not Mail, Removed, and new
    ones (not seeded)."""
    customers = store.create_list("Customers")
    target = store.create_list("Spring Promo")
    store.create_list("Other")
    groups: dict[str, list[str]] = {
        k: [] for k in ("existing", "on_target", "do_not_mail", "removed", "new")
    }
    for i in range(per_group):
        email = f"existing{i}@example.com"
        # Some signed up themselves: their entries say ACTION_BY_CONTACT, which the engine
        # must never send back (I2).
        source = "ACTION_BY_CONTACT" if i % 5 == 0 else "ACTION_BY_CUSTOMER"
        store.add_contact(
            email, lists=[customers], fields={"FirstName": f"Existing{i}"}, opt_in_source=source
        )
        groups["existing"].append(email)
        email = f"ontarget{i}@example.com"
        # Named as its row names it: nothing to write (`mixed_rows`).
        store.add_contact(email, lists=[customers, target], fields={"FirstName": f"on_target-{i}"})
        groups["on_target"].append(email)
        groups["new"].append(f"new{i}@example.org")
    for i in range(3):
        email = f"optedout{i}@example.com"
        store.add_contact(email, status="Do Not Mail")
        groups["do_not_mail"].append(email)
        email = f"removed{i}@example.com"
        store.add_contact(email, status="Removed")
        groups["removed"].append(email)
    return groups


def mixed_rows(groups: Mapping[str, list[str]]) -> list[list[str]]:
    """One source row per contact; some emails in upper case, as exports have them."""
    rows = []
    for kind, emails in groups.items():
        for i, email in enumerate(emails):
            rows.append([email.upper() if i % 3 == 0 else email, f"{kind}-{i}"])
    return rows


EXPECTED = {
    "bulk": {
        "existing": "bulk_added",
        "on_target": "bulk_added",
        "do_not_mail": "skipped",
        "removed": "bulk_added",
        "new": "bulk_added",
    },
    "per-contact": {
        "existing": "updated",
        "on_target": "unchanged",
        "do_not_mail": "skipped",
        "removed": "updated",
        "new": "created",
    },
}


@pytest.mark.parametrize("threshold", PATHS)
async def test_both_paths_reach_every_target_and_keep_every_list(
    threshold: int | None,
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Every kind of contact gets its path's outcome and its target; no list is lost."""
    store = simulator.store
    spy.watch(store)
    groups = seed_mixed(store)
    source = write_csv(tmp_path / "in.csv", HEADER, mixed_rows(groups))
    before = snapshot(store)
    n = sum(len(v) for v in groups.values())

    report = await run(
        account, source, config_for(fast_config, threshold), tmp_path, lists=["Spring Promo"]
    )

    stats = await sim_stats(simulator)
    lines = assert_invariants(
        store,
        before,
        report,
        rows=range(2, n + 2),
        targets=["Spring Promo"],
        spy=spy,
        stats=stats,
    )
    path = "bulk" if threshold else "per-contact"
    found = by_email(lines)
    for kind, emails in groups.items():
        for email in emails:
            assert found[email]["outcome"] == EXPECTED[path][kind], (email, found[email])
    for email in groups["do_not_mail"]:
        assert found[email]["reason"] == "opted-out"
    for email in groups["removed"]:
        assert store.contact_by_email(email).status == "Active"  # type: ignore[union-attr]
    routes = stats["by_route"]
    if threshold:
        assert routes["POST activities"] == 2  # the probe activity, then the rest
        assert "PUT contacts/{id}" not in routes
        assert "POST contacts" not in routes
        assert {line["path"] for line in found.values()} == {"bulk"}
    else:
        assert "POST activities" not in routes
        assert routes["PUT contacts/{id}"] == len(groups["existing"]) + len(groups["removed"])
        assert routes["POST contacts"] == len(groups["new"])
        assert {line["path"] for line in found.values()} == {"contact"}
    assert report.ok
    assert report.bulk_enabled


@pytest.mark.parametrize("threshold", PATHS)
async def test_duplicates_are_coalesced(
    threshold: int | None,
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Far-apart rows of one email: one line, all rows, lists unioned, later values win."""
    store = simulator.store
    spy.watch(store)
    store.create_list("A")
    store.create_list("B")
    rows = [["dup@example.com", "Old", "Keep", "A"]]
    rows += [[f"filler{i}@example.com", "F", "", "A;B"] for i in range(30)]
    rows += [["DUP@Example.com ", "New", "", "B"]]
    source = write_csv(tmp_path / "dup.csv", ["Email", "First Name", "Last Name", "Lists"], rows)
    before = snapshot(store)
    config = config_for(fast_config, threshold, read=ReadOptions(lists_column="Lists"))

    report = await run(account, source, config, tmp_path)

    lines = assert_invariants(store, before, report, rows=range(2, 34), targets=["A", "B"], spy=spy)
    dup = [line for line in lines if line["email"] == "dup@example.com"]
    assert len(dup) == 1
    assert dup[0]["rows"] == [2, 33]
    assert sorted(dup[0]["lists_added"]) == ["A", "B"]
    assert report.merged_rows == 1
    assert report.rows == 32
    contact = store.contact_by_email("dup@example.com")
    assert contact is not None
    assert contact.lists == list_ids(store, "A", "B")
    assert contact.fields["FirstName"] == "New"
    assert contact.fields["LastName"] == "Keep"
    written = [b for b in spy.bodies if b"dup@example.com" in b]
    in_activities = [d for _, d, _ in spy.activities if "dup@example.com" in d]
    assert len(written) + len(in_activities) == 1


async def test_invalid_rows_are_rejected_and_the_run_goes_on(
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Invalid rows are `rejected` with a reason, and every valid row is still migrated; an
    over-long optional field is left out and said on the contact's report line."""
    store = simulator.store
    spy.watch(store)
    store.create_list("T")
    rows = [
        ["good1@example.com", "One"],
        ["not-an-email", "Bad"],
        ["two@@example.com", "Bad"],
        ["", "No email"],
        ["long@example.com", "x" * 51],
        ["good2@example.com", "Two"],
    ]
    source = write_csv(tmp_path / "in.csv", HEADER, rows)
    before = snapshot(store)

    report = await run(account, source, fast_config, tmp_path, lists=["T"])

    lines = assert_invariants(store, before, report, rows=range(2, 8), targets=["T"], spy=spy)
    rejected = {line["rows"][0]: line["reason"] for line in lines if line["outcome"] == "rejected"}
    assert set(rejected) == {3, 4, 5}
    assert "not-an-email" in rejected[3]
    assert "no email" in rejected[5]
    long = by_email(lines)["long@example.com"]
    assert long["outcome"] == "created"
    assert "FirstName left out: 51 characters, the API's limit is 50" in long["note"]
    assert report.outcomes["created"] == 3
    assert report.outcomes["rejected"] == 3
    assert not report.ok
    created = store.contact_by_email("long@example.com")
    assert created is not None
    assert "FirstName" not in created.fields


@pytest.mark.parametrize("create", [False, True], ids=["", "create-lists"])
async def test_a_list_name_in_the_wrong_case_asks_did_you_mean(
    simulator: RunningSimulator,
    account: Account,
    fast_config: MigrationConfig,
    tmp_path: Path,
    create: bool,
) -> None:
    """'spring promo' for 'Spring Promo': "did you mean", nothing written, and never a
    look-alike list created, even with create_lists."""
    store = simulator.store
    store.create_list("Spring Promo")
    source = write_csv(tmp_path / "in.csv", HEADER, [["a@example.com", ""]])
    config = dataclasses.replace(fast_config, create_lists=create)
    with pytest.raises(ConfigError) as caught:
        await run(account, source, config, tmp_path, lists=["spring promo"])
    assert "no list 'spring promo'; did you mean 'Spring Promo'?" in str(caught.value)
    assert "--create-lists" not in str(caught.value)
    assert [s.name for s in store.lists()] == ["Spring Promo"]
    assert writes_in(await sim_stats(simulator)) == {}


async def test_unknown_list_stops_before_any_write(
    simulator: RunningSimulator, account: Account, fast_config: MigrationConfig, tmp_path: Path
) -> None:
    """An unknown list raises `ConfigError` naming the account's lists, writing nothing."""
    store = simulator.store
    seed_list(store, "Customers", 30)
    store.create_list("Newsletter")
    source = write_csv(
        tmp_path / "in.csv", HEADER, [[f"member{i}@example.com", ""] for i in range(30)]
    )
    before = snapshot(store)

    with pytest.raises(ConfigError) as caught:
        await run(account, source, fast_config, tmp_path, lists=["Customers", "Typo List"])

    message = str(caught.value)
    assert "Typo List" in message
    assert "'Customers'" in message
    assert "'Newsletter'" in message
    assert snapshot(store) == before
    assert [s.name for s in store.lists()] == ["Customers", "Newsletter"]
    assert writes_in(await sim_stats(simulator)) == {}


@pytest.mark.parametrize("threshold", PATHS)
async def test_create_lists_creates_missing_lists(
    threshold: int | None,
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """With `create_lists`, missing target lists are created once and filled."""
    store = simulator.store
    spy.watch(store)
    emails = seed_list(store, "Customers", 30)
    source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in emails])
    before = snapshot(store)
    config = config_for(fast_config, threshold, create_lists=True)

    report = await run(account, source, config, tmp_path, lists=["Customers", "Fresh"])

    assert_invariants(
        store, before, report, rows=range(2, 32), targets=["Customers", "Fresh"], spy=spy
    )
    assert sorted(s.name for s in store.lists()) == ["Customers", "Fresh"]
    (fresh,) = list_ids(store, "Fresh")
    assert store.member_count(fresh) == 30
    assert (await sim_stats(simulator))["by_route"]["POST lists"] == 1


@pytest.mark.parametrize("threshold", PATHS)
@pytest.mark.parametrize(
    "skip_removed",
    [pytest.param(False, id="re-added"), pytest.param(True, id="skip-removed")],
)
async def test_removed_contacts(
    threshold: int | None,
    skip_removed: bool,
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Removed contacts are re-added as Active (said on their line and counted in the
    summary on the per-contact path), or skipped as `removed` with skip_removed."""
    store = simulator.store
    spy.watch(store)
    emails = seed_list(store, "Customers", 30)
    removed = [f"gone{i}@example.com" for i in range(4)]
    for email in removed:
        store.add_contact(email, status="Removed")
    source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in emails + removed])
    before = snapshot(store)
    config = config_for(fast_config, threshold, skip_removed=skip_removed)

    report = await run(account, source, config, tmp_path, lists=["Customers"])

    lines = assert_invariants(
        store, before, report, rows=range(2, 36), targets=["Customers"], spy=spy
    )
    found = by_email(lines)
    for email in removed:
        contact = store.contact_by_email(email)
        assert contact is not None
        if skip_removed:
            assert found[email]["outcome"] == "skipped"
            assert found[email]["reason"] == "removed"
            assert snapshot(store)[email] == before[email]
        else:
            assert found[email]["outcome"] in SUCCESSES - {"unchanged"}
            assert contact.status == "Active"
            assert contact.lists == list_ids(store, "Customers")
            if found[email]["path"] == "contact":  # counted and said where the engine read it
                assert found[email]["note"].startswith("was Removed: re-added, Active again")
    if not skip_removed and threshold is None:
        assert report.reactivated == len(removed)
        assert f"{len(removed)} Removed contacts were re-added" in report.summary()


@pytest.mark.parametrize(
    ("other_writer_list", "outcome"),
    [
        pytest.param("Other", "updated", id="created-on-another-list"),
        pytest.param("Target", "unchanged", id="created-on-the-target"),
    ],
)
async def test_conflict_on_create_refetches_and_merges(
    other_writer_list: str,
    outcome: str,
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 409 on create re-fetches and merges: the other writer's list stays, target added."""
    store = simulator.store
    spy.watch(store)
    target = store.create_list("Target")
    other = target if other_writer_list == "Target" else store.create_list(other_writer_list)
    create_contact = Account.create_contact
    raced: list[str] = []

    async def racing_create(
        self: Account, email: str, list_uris: Sequence[str], fields: Any = None
    ) -> str:
        if email == "race@example.com" and not raced:
            raced.append(email)  # another writer (a signup form) wins the race
            store.add_contact(email, lists=[other], fields={"FirstName": "R"})
        return await create_contact(self, email, list_uris, fields)

    monkeypatch.setattr(Account, "create_contact", racing_create)
    source = write_csv(
        tmp_path / "in.csv", HEADER, [["race@example.com", "R"], ["calm@example.com", "C"]]
    )
    before = snapshot(store)

    report = await run(account, source, config_for(fast_config, None), tmp_path, lists=["Target"])

    lines = assert_invariants(store, before, report, rows=[2, 3], targets=["Target"], spy=spy)
    assert raced == ["race@example.com"]
    assert by_email(lines)["race@example.com"]["outcome"] == outcome
    assert by_email(lines)["calm@example.com"]["outcome"] == "created"
    contact = store.contact_by_email("race@example.com")
    assert contact is not None
    assert contact.lists == list_ids(store, "Target", other_writer_list)
    stats = await sim_stats(simulator)
    assert stats["by_status"]["409"] == 1


@pytest.mark.parametrize("threshold", PATHS)
async def test_seed_scenario_list_a_keeps_its_2600_members(
    threshold: int | None,
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Importing 1,000 of List A's 2,600 into B leaves A at 2,600 and B at 1,000."""
    store = simulator.store
    spy.watch(store)
    members = seed_list(store, "A", 2600)
    source = write_csv(tmp_path / "b.csv", HEADER, [[e, ""] for e in members[:1000]])
    before = snapshot(store)
    config = config_for(fast_config, threshold, create_lists=True)

    report = await run(account, source, config, tmp_path, lists=["B"])

    stats = await sim_stats(simulator)
    assert_invariants(
        store, before, report, rows=range(2, 1002), targets=["B"], spy=spy, stats=stats
    )
    (a,) = list_ids(store, "A")
    (b,) = list_ids(store, "B")
    assert store.member_count(a) == 2600
    assert store.member_count(b) == 1000
    assert store.members(b) <= store.members(a)
    assert report.outcomes["bulk_added" if threshold else "updated"] == 1000


async def test_replace_on_put_trap_is_real(simulator: RunningSimulator, account: Account) -> None:
    """A PUT carrying only the new list shrinks List A: the simulator catches that bug."""
    store = simulator.store
    members = seed_list(store, "A", 2600)
    b = store.create_list("B")
    (a,) = list_ids(store, "A")
    b_uri = f"http://api.constantcontact.com/ws/customers/{simulator.config.username}/lists/{b}"
    found = await account.search_contacts(members[:100])
    assert len(found) == 100

    async def careless_put(email: str) -> None:
        entry = await account.get_contact(found[email].key)
        await account.put_contact(entry, codec.build_contact_entry(email, [b_uri], {}))

    async with anyio.create_task_group() as tg:
        for email in members[:100]:
            tg.start_soon(careless_put, email)

    assert store.member_count(b) == 100
    assert store.member_count(a) == 2500


async def test_bulk_sample_check_catches_replace_semantics(
    start_simulator: Callable[..., Any],
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """A bulk add that replaces lists is caught by the probe activity: every probed contact
    is repaired, bulk is switched off, the rest goes per contact, and I1 holds for all."""
    async with start_simulator(bulk_semantics="replace") as (sim, _):
        store = sim.store
        spy.watch(store)
        members = seed_list(store, "A", 500)
        store.create_list("B")
        source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in members])
        before = snapshot(store)
        config = dataclasses.replace(fast_config, bulk_max_rows=100)

        async with new_account(sim) as account:
            report = await run(account, source, config, tmp_path, lists=["B"])

        assert len(spy.activities) == 1
        first = spy.activity_emails(0)
        assert len(first) == config.probe_size
        # The probe's contacts lost List A to the server; the engine read each of them
        # before, so it repaired them all: no contact is exempt from I1.
        lines = assert_invariants(
            store,
            before,
            report,
            rows=range(2, 502),
            targets=["B"],
            spy=spy,
            stats=await sim_stats(sim),
        )
    assert not report.bulk_enabled
    assert any("did NOT keep existing memberships" in w for w in report.warnings)
    (a,) = list_ids(store, "A")
    (b,) = list_ids(store, "B")
    assert store.member_count(b) == 500
    repaired = {e for e in first if a in store.contact_by_email(e).lists}
    assert repaired == set(first)
    assert store.member_count(a) == 500
    paths = Counter(line["path"] for line in lines)
    assert paths == {"contact": 500}


async def test_activity_error_falls_back_to_per_contact(
    start_simulator: Callable[..., Any],
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """An activity ending in ERROR falls back per contact; no membership loss is claimed."""
    async with start_simulator(activity_error_rate=1.0) as (sim, _):
        store = sim.store
        spy.watch(store)
        members = seed_list(store, "A", 60)
        store.create_list("B")
        new = [f"fresh{i}@example.org" for i in range(10)]
        source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in members + new])
        before = snapshot(store)

        async with new_account(sim) as account:
            report = await run(account, source, fast_config, tmp_path, lists=["B"])

        stats = await sim_stats(sim)
        lines = assert_invariants(
            store, before, report, rows=range(2, 72), targets=["B"], spy=spy, stats=stats
        )
    assert stats["by_route"]["POST activities"] >= 1
    assert report.outcomes["updated"] == 60
    assert report.outcomes["created"] == 10
    assert {line["path"] for line in lines} == {"contact"}
    assert not [w for w in report.warnings if "did NOT keep" in w]
    assert report.bulk_enabled


async def test_a_stuck_activity_goes_contact_by_contact_visibly(
    start_simulator: Callable[..., Any],
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An activity that never moves is stuck after `stall_timeout`: its contacts go contact
    by contact with a note saying so, a warning is logged first, and progress shows it; a
    Removed contact among them is re-added, noted and counted like any other."""
    async with start_simulator(activity_delay=10_000.0) as (sim, _):
        store = sim.store
        spy.watch(store)
        members = seed_list(store, "A", 39)
        store.add_contact("gone@example.com", status="Removed")
        members.append("gone@example.com")
        store.create_list("B")
        source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in members])
        before = snapshot(store)
        events: list[Progress] = []
        config = dataclasses.replace(fast_config, stall_timeout=0.9, probe_size=0)

        async with new_account(sim) as account:
            with caplog.at_level(logging.WARNING, logger="engine.bulk"):
                report = await run(
                    account, source, config, tmp_path, lists=["B"], on_progress=events.append
                )

        stats = await sim_stats(sim)
        lines = assert_invariants(
            store, before, report, rows=range(2, 42), targets=["B"], spy=spy, stats=stats
        )
    assert stats["by_route"]["POST activities"] == 1
    assert report.outcomes["updated"] == 40
    assert {line["path"] for line in lines} == {"contact"}
    assert all("stuck" in line["note"] and "contact by contact" in line["note"] for line in lines)
    assert "was Removed: re-added" in by_email(lines)["gone@example.com"]["note"]
    assert report.reactivated == 1
    waiting = [w for event in events for w in event.waiting]
    assert waiting, "no progress event showed the activity being waited for"
    assert {w.status for w in waiting} == {"PENDING"}
    assert max(w.unchanged for w in waiting) > 0.2
    assert not events[-1].waiting  # nothing is waited for at the end
    warned = [r.getMessage() for r in caplog.records if "with no change for" in r.getMessage()]
    assert warned, "no warning was logged while the activity did not move"


def own_tasks_only() -> None:
    """Assert that the only task left in this loop is the test's own."""
    left = asyncio.all_tasks() - {asyncio.current_task()}
    assert not left, f"tasks left running: {left}"


@pytest.mark.parametrize("threshold", PATHS)
async def test_cancellation_midway_leaves_nothing_running_and_a_rerun_completes(
    threshold: int | None,
    simulator_config: SimulatorConfig,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Cancelled midway: no task left, whole JSONL report; a re-run finishes every row."""
    store = AccountStore(simulator_config)
    members = seed_list(store, "A", 300)
    store.create_list("B")
    source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in members])
    before = snapshot(store)
    config = config_for(fast_config, threshold, bulk_max_rows=100)
    seen: list[Outcome] = []

    with simulator_in_thread(simulator_config, store) as sim:
        # The account is opened inside the cancelled block, as code wrapping a whole
        # migration in `move_on_after` would: closing it must still work.
        with anyio.CancelScope() as scope:

            def stop_midway(outcome: Outcome) -> None:
                seen.append(outcome)
                if len(seen) == 40:
                    scope.cancel()

            async with new_account(sim) as account:
                await run(account, source, config, tmp_path, lists=["B"], on_outcome=stop_midway)
        assert scope.cancelled_caught
        await asyncio.sleep(0.05)  # closed transports finish their callbacks
        own_tasks_only()
        partial = read_report(tmp_path / "report.jsonl")
        assert 40 <= len(partial) < 300
        assert snapshot(store).keys() == before.keys()
        at_cancel = snapshot(store)
        for email, was in before.items():  # I1 holds at the instant of the cancellation
            assert at_cancel[email].lists >= was.lists

        async with new_account(sim) as account:
            report = await run(account, source, config, tmp_path, lists=["B"])
        stats = sim_stats_sync(sim)
    assert_invariants(store, before, report, rows=range(2, 302), targets=["B"], stats=stats)
    assert report.ok
    (b,) = list_ids(store, "B")
    assert store.member_count(b) == 300
    own_tasks_only()


async def test_wrong_password_stops_before_any_write(
    simulator_config: SimulatorConfig, fast_config: MigrationConfig, tmp_path: Path
) -> None:
    """A wrong password stops before any write with an APIKEY%username hint, no task left."""
    store = AccountStore(simulator_config)
    members = seed_list(store, "A", 40)
    source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in members])
    before = snapshot(store)
    with simulator_in_thread(simulator_config, store) as sim:
        async with new_account(sim, password="Wr0ng-Passw0rd") as account:
            with pytest.raises(AuthenticationError) as caught:
                await run(account, source, fast_config, tmp_path, lists=["A"])
        stats = sim_stats_sync(sim)
    assert "APIKEY%username" in str(caught.value)
    assert "Wr0ng-Passw0rd" not in str(caught.value)
    assert writes_in(stats) == {}
    assert snapshot(store) == before
    own_tasks_only()


async def test_quota_spent_mid_run_stops_cleanly(
    simulator_config: SimulatorConfig, fast_config: MigrationConfig, tmp_path: Path
) -> None:
    """A quota spent mid-run stops with `QuotaExhaustedError`, no task left, lists kept."""
    store = AccountStore(simulator_config)
    members = seed_list(store, "A", 300)
    store.create_list("B")
    source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in members])
    before = snapshot(store)
    config = dataclasses.replace(simulator_config, daily_quota=250)

    with simulator_in_thread(config, store) as sim:
        async with new_account(sim) as account:
            with pytest.raises(QuotaExhaustedError) as caught:
                await run(account, source, config_for(fast_config, None), tmp_path, lists=["B"])
        stats = sim_stats_sync(sim)
    await asyncio.sleep(0.05)
    own_tasks_only()
    assert "quota" in str(caught.value)
    assert stats["by_status"]["403"] >= 1
    lines = read_report(tmp_path / "report.jsonl")
    assert 0 < len(lines) < 300
    assert all(line["outcome"] == "updated" for line in lines)
    after = snapshot(store)
    for email, was in before.items():
        assert after[email].lists >= was.lists
    (b,) = list_ids(store, "B")
    reported = {store.contact_by_email(line["email"]).id for line in lines}  # type: ignore[union-attr]
    assert store.members(b) >= reported


async def test_library_use_with_an_async_source_and_progress_events(
    simulator: RunningSimulator,
    account: Account,
    spy: SimSpy,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """An async source runs from other async code; `Progress` events end with one final."""
    store = simulator.store
    spy.watch(store)
    members = seed_list(store, "A", 50)
    store.create_list("B")

    async def source() -> AsyncIterator[dict[str, str]]:
        for i in range(120):
            if i % 10 == 0:
                await anyio.sleep(0.02)
            email = members[i] if i < 50 else f"lib{i}@example.org"
            yield {"email": email, "first_name": f"Lib{i}"}
            if i == 0:  # a duplicate while the first is still waiting in its batch
                yield {"E-mail": members[0].upper(), "first_name": "Again"}

    events: list[Progress] = []
    before = snapshot(store)
    report = await run(
        account, source(), fast_config, tmp_path, lists=["B"], on_progress=events.append
    )

    lines = assert_invariants(store, before, report, rows=range(1, 122), targets=["B"], spy=spy)
    assert by_email(lines)[members[0]]["rows"] == [1, 2]
    assert len(events) >= 3
    assert all(isinstance(e, Progress) for e in events)
    assert [e.final for e in events].count(True) == 1
    final = events[-1]
    assert final.final
    assert final.rows_done == final.rows_read == 121
    assert final.rows_total is None
    assert final.outcomes == {k: v for k, v in report.outcomes.items() if v}
    assert final.requests == report.requests > 0
    assert [e.rows_done for e in events] == sorted(e.rows_done for e in events)
    assert len(lines) <= 121


async def test_an_async_sources_rows_are_planned_as_they_come(
    simulator: RunningSimulator, account: Account, fast_config: MigrationConfig, tmp_path: Path
) -> None:
    """A row of an async source goes on as it comes: here the source gives its second row
    only once the first has its outcome (held back for company, it never would)."""
    simulator.store.create_list("B")
    first_done = anyio.Event()

    def on_outcome(outcome: Outcome) -> None:
        if outcome.email == "first@example.com":
            first_done.set()

    async def source() -> AsyncIterator[dict[str, str]]:
        yield {"email": "first@example.com"}
        await first_done.wait()
        for i in range(3):
            yield {"email": f"later{i}@example.com"}

    with anyio.fail_after(20):
        report = await run(
            account, source(), fast_config, tmp_path, lists=["B"], on_outcome=on_outcome
        )
    assert report.outcomes["created"] == 4


async def test_a_resumed_run_looks_an_async_sources_rows_up_in_chunks(
    simulator: RunningSimulator,
    account: Account,
    fast_config: MigrationConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run again on its journal, a migration of an async source (which gives its rows one
    by one) looks them up in the journal 512 at a time, not one each, and finds them done."""
    from engine.journal import Journal

    simulator.store.create_list("B")

    async def source() -> AsyncIterator[dict[str, str]]:
        for i in range(600):
            yield {"email": f"c{i}@example.com"}

    journal = tmp_path / "journal.sqlite"
    first = await run(account, source(), fast_config, tmp_path, lists=["B"], journal=journal)
    assert sum(first.outcomes.values()) == 600
    sizes: list[int] = []
    outcomes_of = Journal.outcomes_of

    async def counted(self: Journal, emails: Sequence[str]) -> tuple[set[str], set[str]]:
        sizes.append(len(emails))
        return await outcomes_of(self, emails)

    monkeypatch.setattr(Journal, "outcomes_of", counted)
    again = await run(account, source(), fast_config, tmp_path, lists=["B"], journal=journal)
    assert sizes == [512, 88]
    assert again.resumed == 600


@pytest.mark.parametrize(
    ("kind", "outcome", "limit"),
    [
        pytest.param("gains-a-list", "updated", 2.05, id="existing-gains-a-list"),
        pytest.param("new", "created", 1.05, id="new"),
        pytest.param("unchanged", "unchanged", 1.05, id="unchanged"),
    ],
)
async def test_requests_per_contact_on_the_per_contact_path(
    kind: str,
    outcome: str,
    limit: float,
    simulator: RunningSimulator,
    account: Account,
    fast_config: MigrationConfig,
    tmp_path: Path,
) -> None:
    """Per-contact requests: ≤ 2.05 to add a list, ≤ 1.05 to create or leave unchanged."""
    store = simulator.store
    a = store.create_list("A")
    b = store.create_list("B")
    n = 200
    emails = [f"count{i}@example.com" for i in range(n)]
    if kind != "new":
        for email in emails:
            store.add_contact(email, lists=[a, b] if kind == "unchanged" else [a])
    source = write_csv(tmp_path / "in.csv", HEADER, [[e, ""] for e in emails])
    await sim_stats(simulator, reset=True)

    report = await run(account, source, config_for(fast_config, None), tmp_path, lists=["B"])

    stats = await sim_stats(simulator)
    assert report.outcomes[outcome] == n
    assert stats["total"] / n <= limit, stats
    assert store.member_count(b) == n


async def test_requests_per_contact_on_the_bulk_path(
    simulator: RunningSimulator, account: Account, fast_config: MigrationConfig, tmp_path: Path
) -> None:
    """20,000 contacts: a 25-contact probe activity, then one activity for the rest; ≤ 0.001
    requests each besides polls and the probe's reads."""
    store = simulator.store
    a = store.create_list("A")
    store.create_list("B")
    n = 20_000
    emails = [f"bulk{i}@example.com" for i in range(n)]
    for email in emails[::2]:
        store.add_contact(email, lists=[a])
    source = write_csv(tmp_path / "in.csv", HEADER, ([e, f"N{i}"] for i, e in enumerate(emails)))
    await sim_stats(simulator, reset=True)

    report = await run(account, source, fast_config, tmp_path, lists=["B"])

    stats = await sim_stats(simulator)
    routes = stats["by_route"]
    polls = routes["GET activities/{id}"]
    probe = 1 + 2 * fast_config.probe_size  # one search, GETs before and after
    assert routes["POST activities"] == 2
    assert routes["GET contacts/{id}"] == 2 * fast_config.probe_size
    assert (stats["total"] - polls - probe) / n <= 0.001, stats
    assert report.outcomes["bulk_added"] == n
    (b,) = list_ids(store, "B")
    assert store.member_count(b) == n
    assert store.member_count(a) == n // 2


async def test_contacts_an_activity_does_not_vouch_for_go_alone_with_their_fields(
    simulator: RunningSimulator,
    account: Account,
    fast_config: MigrationConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completed activity whose settling cannot say what it did to two of its contacts:
    those two go contact by contact, with the fields of their rows (unpacked from the
    waiting batch) and a note saying why; the others are `bulk_added`."""
    from engine.backend.protocol import BulkResult
    from engine.backend.v1.backend import V1Backend

    store = simulator.store
    store.create_list("B")
    emails = [f"new{i}@example.com" for i in range(40)]
    doubtful = {emails[3], emails[30]}
    settle = V1Backend.settle

    async def settle_in_doubt(
        self: V1Backend, activity: Any, wanted: Sequence[str], targets: Any
    ) -> list[BulkResult]:
        results = await settle(self, activity, wanted, targets)
        for email in doubtful & set(wanted):  # changed since: only the row's fields undo it
            stored = store.contact_by_email(email)
            assert stored is not None
            stored.fields["FirstName"] = "Changed"
        return [BulkResult(r.email, "unknown") if r.email in doubtful else r for r in results]

    monkeypatch.setattr(V1Backend, "settle", settle_in_doubt)
    source = write_csv(tmp_path / "in.csv", HEADER, ([e, f"Name{i}"] for i, e in enumerate(emails)))

    report = await run(account, source, config_for(fast_config, 25), tmp_path, lists=["B"])

    lines = by_email(read_report(tmp_path / "report.jsonl"))
    assert report.outcomes["bulk_added"] == 38
    for email in doubtful:
        assert lines[email]["path"] == "contact"
        assert lines[email]["outcome"] == "updated"
        assert "did not say what it did to them" in lines[email]["note"]
        index = emails.index(email)
        stored = store.contact_by_email(email)
        assert stored is not None
        assert stored.fields["FirstName"] == f"Name{index}"
    (b,) = list_ids(store, "B")
    assert store.member_count(b) == 40
