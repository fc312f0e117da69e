"""Nothing lost, nothing stuck: a resume converges whatever became of the activities it
inherited, and bulk is trusted only after a probe has passed.

Each test ends with the whole account read back and checked (I1, I2, I3): a resume whose
journaled activities ended `ERROR`, vanished (404) or whose ids now name other activities
(a server that lost its state); a replacing server whose batches start with new contacts, or
whose probe cannot conclude; `--skip-removed` when searches fail; a probed contact that
cannot be read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import MigrationReport, migrate
from engine.pipeline.stats import Progress
from engine.simulator import AccountStore, serve
from engine.simulator.v1.store import StoredActivity, StoredContact, StoreError

from .conftest import Scenario, build_scenario, check_migration, memberships, read_report
from .test_faults import CONFIG, new_account, sim_config


class ServerFault(StoreError):
    """500 from the simulator (a test's injected fault)."""

    status = 500


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A seeded account and a source of about 230 rows, both paths."""
    return build_scenario(tmp_path_factory.mktemp("scenario"), bulk=(60, 40, 30), per_set=8)


async def run(
    store: AccountStore,
    scenario: Scenario,
    tmp_path: Path,
    config: MigrationConfig = CONFIG,
    *,
    stop_after_activities: int | None = None,
    **sim: Any,
) -> MigrationReport:
    """Migrate the scenario on a simulator serving `store`, with the test's journal; with
    `stop_after_activities`, stop gracefully once that many activities were submitted."""
    stop = anyio.Event()

    def on_progress(progress: Progress) -> None:
        if stop_after_activities is not None and progress.activities >= stop_after_activities:
            stop.set()

    read = dataclasses.replace(config.read, lists_column="Lists")
    async with serve(sim_config(**sim), store) as server, new_account(server) as account:
        return await migrate(
            account,
            scenario.source,
            config=dataclasses.replace(config, read=read, progress_interval=0.02),
            report=tmp_path / "report.jsonl",
            journal=tmp_path / "journal.sqlite",
            stop=stop,
            grace=5.0,
            on_progress=on_progress,
        )


async def leave_three_activities_pending(scenario: Scenario, tmp_path: Path) -> AccountStore:
    """A first run that stops with its bulk activities (three batches; a batch whose rows give
    different sets of fields makes one activity per set) submitted and still pending."""
    store = AccountStore.load(scenario.seed, sim_config())
    first = await run(
        store,
        scenario,
        tmp_path,
        dataclasses.replace(CONFIG, probe_size=0),
        stop_after_activities=3,
        activity_delay=10_000.0,
    )
    assert first.stopped
    assert len(store.unfinished_activities()) >= 3
    return store


async def test_a_resume_whose_activities_ended_in_error_converges(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Inherited activities that ended ERROR: their contacts go contact by contact, all done."""
    store = await leave_three_activities_pending(scenario, tmp_path)
    for activity_id in store.unfinished_activities():
        store.fail_activity(activity_id)
    report = await run(store, scenario, tmp_path)
    assert report.pending == 0
    lines = check_migration(scenario, store, tmp_path / "report.jsonl")
    noted = [line for line in lines if "ended ERROR" in line.get("note", "")]
    assert len(noted) >= 100


async def test_a_resume_on_a_server_that_lost_its_activities_converges(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Inherited activities unknown to the server (404): contact by contact, all done."""
    store = await leave_three_activities_pending(scenario, tmp_path)
    fresh = without_activities(store)
    report = await run(fresh, scenario, tmp_path)
    assert report.pending == 0
    check_migration(scenario, fresh, tmp_path / "report.jsonl")


async def test_an_inherited_id_that_names_another_activity_settles_nothing(
    scenario: Scenario, tmp_path: Path
) -> None:
    """A restarted server gives the journaled ids to other activities (complete, no errors):
    the engine sees they are not its own, and sends their contacts contact by contact."""
    store = await leave_three_activities_pending(scenario, tmp_path)
    journaled = _journaled_ids(tmp_path / "journal.sqlite")
    fresh = without_activities(store)
    target = fresh.create_list("Unrelated")
    for activity_id in journaled:  # someone else's activities, under the same ids
        other = fresh.submit_activity(
            "SV_ADD", "Email Address\nbystander0@example.com", [_list_uri(fresh, target)]
        )
        fresh.run_activity(other.id)
        _rename_activity(fresh, other, activity_id)
    report = await run(fresh, scenario, tmp_path)
    assert report.pending == 0
    lines = check_migration(scenario, fresh, tmp_path / "report.jsonl")
    assert not [line for line in lines if line["outcome"] == "bulk_added"]
    assert any("not the one submitted" in line.get("note", "") for line in lines)


def without_activities(store: AccountStore) -> AccountStore:
    """The account as a server that lost its activities (not its contacts) serves it."""
    return AccountStore.from_json({**store.to_json(), "activities": []}, sim_config())


def _journaled_ids(path: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM activities")]
    finally:
        db.close()


def _list_uri(store: AccountStore, list_id: int) -> str:
    return f"http://{store.config.id_host}/ws/customers/{store.config.username}/lists/{list_id}"


def _rename_activity(store: AccountStore, activity: StoredActivity, new_id: str) -> None:
    """Give `activity` the id `new_id`: what a server that lost its state may do (the
    simulator itself never repeats an id, so the test forges it)."""
    activities = store._activities
    del activities[activity.id]
    activity.id = new_id
    activities[new_id] = activity


# --- the probe ------------------------------------------------------------------------------


def new_contacts_first(scenario: Scenario, folder: Path) -> Scenario:
    """The scenario with each bulk set's new contacts moved ahead of its existing ones, so
    the first 50 rows of a batch hold no contact on another list."""
    lines = scenario.source.read_text(encoding="utf-8").splitlines()
    header, body = lines[0], list(enumerate(lines[1:], start=2))  # (old line number, text)
    before = memberships(scenario.before())

    def is_new(item: tuple[int, str]) -> bool:
        return item[1].split(",")[0].strip().lower() not in before

    ordered = [item for item in body if is_new(item)] + [item for item in body if not is_new(item)]
    source = folder / "new-first.csv"
    source.write_text("\n".join([header, *(text for _, text in ordered)]) + "\n", "utf-8")
    new_line = {old: new for new, (old, _) in enumerate(ordered, start=2)}
    rows = tuple(sorted(new_line.values()))
    rejected = tuple(sorted(new_line[old] for old in scenario.rejected_rows))
    return dataclasses.replace(scenario, source=source, rows=rows, rejected_rows=rejected)


@pytest.mark.parametrize("order", ["as-is", "new-contacts-first"])
async def test_a_replacing_server_loses_nothing_whatever_the_batch_order(
    tmp_path: Path, order: str
) -> None:
    """Bulk activities that replace memberships: the probe catches it even when the first
    60 rows of every batch are new contacts, and nothing is lost."""
    scenario = build_scenario(tmp_path / "big", bulk=(120, 120, 120), per_set=4)
    if order == "new-contacts-first":
        scenario = new_contacts_first(scenario, tmp_path)
    store = AccountStore.load(scenario.seed, sim_config(bulk_semantics="replace"))
    report = await run(store, scenario, tmp_path, bulk_semantics="replace")
    assert not report.bulk_enabled
    assert any("did NOT keep" in w for w in report.warnings)
    check_migration(scenario, store, tmp_path / "report.jsonl")


async def test_a_probe_that_cannot_conclude_sends_nothing_unverified_in_bulk(
    scenario: Scenario, tmp_path: Path
) -> None:
    """On a replacing server, the probe's own activity ends ERROR: the rest of its batch is
    not sent in bulk unverified; the next probe catches the replacing; nothing is lost."""
    store = AccountStore.load(scenario.seed, sim_config(bulk_semantics="replace"))
    submit = store.submit_activity
    submitted: list[str] = []

    def submit_activity(*args: Any, fail: bool = False) -> StoredActivity:
        activity = submit(*args, fail=fail or not submitted)  # the first one fails
        submitted.append(activity.id)
        return activity

    store.submit_activity = submit_activity  # type: ignore[method-assign]
    report = await run(store, scenario, tmp_path, bulk_semantics="replace")
    assert report.pending == 0
    assert store.get_activity(submitted[0]).status == "ERROR"
    assert not report.bulk_enabled
    lines = check_migration(scenario, store, tmp_path / "report.jsonl")
    assert not [line for line in lines if line["outcome"] == "bulk_added"]


async def test_skip_removed_never_reactivates_a_contact_when_searches_fail(
    scenario: Scenario, tmp_path: Path
) -> None:
    """With --skip-removed and every search that names a Removed contact answering 500, no
    Removed contact is re-added (a failed search means "unknown", never "absent")."""
    store = AccountStore.load(scenario.seed, sim_config())
    removed = {e for e, (status, _) in memberships(store).items() if status == "Removed"}
    assert removed
    search = store.search

    def failing_search(emails: Sequence[str]) -> list[StoredContact]:
        if removed & {e.lower() for e in emails}:
            raise ServerFault("Internal Server Error")
        return search(emails)

    store.search = failing_search  # type: ignore[method-assign]
    await run(store, scenario, tmp_path, dataclasses.replace(CONFIG, skip_removed=True))
    now = memberships(store)
    was = memberships(scenario.before())
    for email in removed:
        assert now[email] == was[email], f"{email} was changed: {now[email]}"
    # Never reported done: skipped, or failed (their searches never answer) with a reason.
    lines = read_report(tmp_path / "report.jsonl")
    outcome = {line["email"]: line["outcome"] for line in lines if line.get("path")}
    assert {outcome[e] for e in removed & set(scenario.targets)} <= {"skipped", "failed"}


async def test_a_probed_contact_that_cannot_be_read_does_not_stop_the_run(
    scenario: Scenario, tmp_path: Path
) -> None:
    """A witness whose entry answers 404 between the search and the read is no witness: the
    run goes on, and every row is done."""
    store = AccountStore.load(scenario.seed, sim_config())
    original = store.get_contact

    def get_contact(contact_id: int) -> Any:
        contact = original(contact_id)
        # The first read of a contact of the bulk sets (g…) is the probe's.
        if contact.email.startswith("g") and not hidden:
            hidden.append(contact_id)
            from engine.simulator.v1.store import NotFound

            raise NotFound(f"Contact {contact_id} does not exist")
        return contact

    hidden: list[int] = []
    store.get_contact = get_contact  # type: ignore[method-assign]
    report = await run(store, scenario, tmp_path)
    assert hidden, "the probe never read the contact"
    assert report.pending == 0
    check_migration(scenario, store, tmp_path / "report.jsonl")
