"""Fixtures of the pipeline tests: a fast configuration, accounts opened on a running
simulator, source writers, a spy on what reached the simulator, and the invariant checks."""

from __future__ import annotations

import csv
import json
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import engine.simulator.v1.app as sim_app
from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import MigrationReport
from engine.simulator import AccountStore, RunningSimulator
from engine.simulator.testing import (  # re-exported for the test modules
    read_stats as sim_stats_sync,  # noqa: F401
    serve_in_thread as simulator_in_thread,  # noqa: F401
)
from engine.simulator.v1._xml import read_contact
from engine.simulator.v1.store import ContactInput, StoredActivity, StoredContact

#: Outcomes that mean "the contact is on its target lists now".
SUCCESSES = frozenset({"created", "updated", "unchanged", "bulk_added"})
#: Activity types the engine must never send (invariant I2).
FORBIDDEN_ACTIVITIES = frozenset({"CLEAR_CONTACTS_FROM_LISTS", "REMOVE_CONTACTS_FROM_LISTS"})
_EMAIL_ELEMENT = re.compile(rb"<(?:\w+:)?EmailAddress>\s*([^<\s]+)\s*<")


@pytest.fixture
def fast_config() -> MigrationConfig:
    """A `MigrationConfig` with tiny poll, linger and progress intervals."""
    return MigrationConfig(poll_initial=0.02, poll_max=0.1, linger=0.05, progress_interval=0.05)


def new_account(sim: RunningSimulator, *, password: str | None = None) -> Account:
    """An unopened `Account` on `sim` over https: no rate limit, quick retries."""
    config = sim.config
    return Account(
        Credentials(config.username, config.api_key, password or config.password),
        base_url=sim.base_url,
        ca_file=sim.ca_path,
        governor=RateGovernor(rate=None, concurrency=32),
        retry=RetryPolicy(attempts=4, wait_initial=0.01, wait_max=0.05, wait_jitter=0),
    )


@pytest.fixture
async def account(simulator: RunningSimulator) -> AsyncIterator[Account]:
    """An opened `Account` on the `simulator` fixture."""
    async with new_account(simulator) as opened:
        yield opened


def _ssl_context(sim: RunningSimulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(sim.ca_path))


async def sim_stats(sim: RunningSimulator, *, reset: bool = False) -> dict[str, Any]:
    """The simulator's request counters (`GET stats_url`); `reset` zeroes them afterwards."""
    connector = aiohttp.TCPConnector(ssl=_ssl_context(sim))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(sim.stats_url) as response:
            stats: dict[str, Any] = await response.json()
        if reset:
            async with session.delete(sim.stats_url) as response:
                assert response.status == 204
    return stats


def writes_in(stats: Mapping[str, Any]) -> dict[str, int]:
    """The write routes (PUT/POST/DELETE) the counters show, with their counts."""
    routes: dict[str, int] = stats["by_route"]
    return {r: n for r, n in routes.items() if r.split()[0] in ("PUT", "POST", "DELETE")}


@dataclass
class SimSpy:
    """Every contact body and activity the simulators of this test received, and the emails
    each successful `POST contacts` created.

    Attributes:
        bodies: raw bodies of contact writes (POST and PUT), as sent.
        activities: (activityType, data, lists) of every `POST activities`.
        created: email -> number of contacts created for it through the API.
    """

    bodies: list[bytes] = field(default_factory=list)
    activities: list[tuple[str, str, list[str]]] = field(default_factory=list)
    created: Counter[str] = field(default_factory=Counter)

    def watch(self, store: AccountStore) -> None:
        """Also record what `store` is asked to create and to run."""
        create, submit = store.create_contact, store.submit_activity

        def create_contact(body: ContactInput) -> StoredContact:
            contact = create(body)
            self.created[contact.email] += 1
            return contact

        def submit_activity(
            activity_type: str, data: str | None, list_uris: Sequence[str], **kw: Any
        ) -> StoredActivity:
            self.activities.append((activity_type, data or "", list(list_uris)))
            return submit(activity_type, data, list_uris, **kw)

        # Instance attributes shadow the methods the app calls: a spy, no simulator edit.
        store.create_contact = create_contact  # type: ignore[method-assign]
        store.submit_activity = submit_activity  # type: ignore[method-assign]

    def activity_emails(self, index: int) -> set[str]:
        """The emails in the `data` of the `index`-th activity."""
        data = self.activities[index][1]
        rows = list(csv.reader(data.splitlines()))
        return {row[0].strip().lower() for row in rows[1:] if row}


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SimSpy:
    """A `SimSpy` on every in-process simulator: contact bodies are recorded at once,
    creations and activities of the stores passed to `spy.watch(store)`."""
    recorder = SimSpy()

    def recording_read_contact(body: bytes) -> ContactInput:
        recorder.bodies.append(body)
        return read_contact(body)

    monkeypatch.setattr(sim_app, "read_contact", recording_read_contact)
    return recorder


def write_csv(
    path: Path,
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    newline: str = "\n",
) -> Path:
    """Write a CSV file (header first) and return its path."""
    with path.open("w", newline="", encoding=encoding) as file:
        writer = csv.writer(file, delimiter=delimiter, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, items: Iterable[Mapping[str, Any] | str]) -> Path:
    """Write JSON Lines: mappings are dumped, strings written as they are (bad lines)."""
    with path.open("w", encoding="utf-8") as file:
        for item in items:
            file.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


@dataclass(frozen=True)
class ContactState:
    """What a contact is, for before/after comparisons."""

    status: str
    lists: frozenset[int]
    fields: tuple[tuple[str, str], ...]
    last_update_time: str
    opt_in_source: str


Snapshot = dict[str, ContactState]


def snapshot(store: AccountStore) -> Snapshot:
    """Every contact of the account: email -> its state."""
    return {
        c.email: ContactState(
            c.status,
            frozenset(c.lists),
            tuple(sorted(c.fields.items())),
            c.last_update_time,
            c.opt_in_source,
        )
        for c in store.contacts()
    }


def list_ids(store: AccountStore, *names: str) -> set[int]:
    """The ids of the named user lists."""
    ids = set()
    for name in names:
        found = store.list_by_name(name)
        assert found is not None, f"no list {name!r} in the account"
        ids.add(found.id)
    return ids


def read_report(path: Path) -> list[dict[str, Any]]:
    """A JSON Lines report, parsed; every line must be whole JSON, the last one included."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the report ends in half a line"
    return [json.loads(line) for line in text.splitlines()]


def report_lines(report: MigrationReport) -> list[dict[str, Any]]:
    """The report of a run, parsed."""
    assert report.report_path is not None, "run the migration with report=…"
    return read_report(report.report_path)


def assert_invariants(
    store: AccountStore,
    before: Snapshot,
    report: MigrationReport,
    *,
    rows: Iterable[int],
    targets: Mapping[str, Iterable[str]] | Iterable[str],
    spy: SimSpy | None = None,
    stats: Mapping[str, Any] | None = None,
    exempt: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Check I1, I2, I3 and I5 over the whole account after a run; return the report lines.

    Args:
        store: the account after the run.
        before: `snapshot(store)` taken before the run.
        report: the run's report (run with `report=`).
        rows: every source row number (line number of a file, item number of an iterable).
        targets: list names every reported contact must be on, or email -> list names.
        spy: what reached the simulator, for the consent and double-create checks.
        stats: the simulator's counters for the run, for the no-DELETE check.
        exempt: emails excused from the "lists kept" check (see the caller's comment).
    """
    lines = report_lines(report)
    after = snapshot(store)
    excused = set(exempt)

    def wanted(email: str) -> set[int]:
        names = targets.get(email, ()) if isinstance(targets, Mapping) else targets
        return list_ids(store, *names)

    # I1: no contact lost a list; every contact reported done is on before ∪ targets.
    for email, was in before.items():
        if email in excused:
            continue
        now = after[email]
        assert now.lists >= was.lists, f"I1: {email} lost lists {set(was.lists - now.lists)}"
    for line in lines:
        if line["outcome"] in SUCCESSES:
            email = line["email"]
            have = after[email].lists
            kept = before[email].lists if email in before and email not in excused else set()
            need = wanted(email) | kept
            assert have >= need, f"I1: {email} is {line['outcome']} but lacks lists {need - have}"
            assert after[email].status != "Do Not Mail"

    # I2: Do Not Mail contacts untouched; no ACTION_BY_CONTACT, DELETE, CLEAR or REMOVE.
    for email, was in before.items():
        if was.status == "Do Not Mail":
            assert after[email] == was, f"I2: the Do Not Mail contact {email} was changed"
    for line in lines:
        if line["outcome"] == "skipped" and line.get("reason") == "opted-out":
            assert after[line["email"]].status == "Do Not Mail"
    if spy is not None:
        opted_out = {e for e, was in before.items() if was.status == "Do Not Mail"}
        for body in spy.bodies:
            assert b"ACTION_BY_CONTACT" not in body, "I2: a write sent ACTION_BY_CONTACT"
            written = _EMAIL_ELEMENT.search(body)
            assert written is None or written.group(1).decode() not in opted_out, (
                f"I2: a write was sent for the Do Not Mail contact {written.group(1)!r}"
            )
        for activity_type, _, _ in spy.activities:
            assert activity_type not in FORBIDDEN_ACTIVITIES, f"I2: {activity_type} sent"
    for email, state in after.items():
        if email not in before:
            assert state.opt_in_source == "ACTION_BY_CUSTOMER", f"I2: {email} opted in as contact"
    if stats is not None:
        deletes = [r for r in stats["by_route"] if r.startswith("DELETE")]
        assert not deletes, f"I2: DELETE requests sent: {deletes}"

    # I3: one outcome per row; counts add up; a reason wherever it is not a success.
    expected = sorted(rows)
    seen = sorted(row for line in lines for row in line["rows"])
    assert seen == expected, "I3: every source row must appear in exactly one report line"
    assert report.rows == len(expected)
    assert sum(report.outcomes.values()) == report.rows
    assert report.emails == len(lines)
    assert Counter(line["outcome"] for line in lines for _ in line["rows"]) == Counter(
        {k: v for k, v in report.outcomes.items() if v}
    )
    for line in lines:
        if line["outcome"] not in SUCCESSES:
            assert line.get("reason"), f"I3: {line} has no reason"

    # I5: no email was created twice; the account holds one contact per email.
    emails = [c.email for c in store.contacts()]
    assert len(emails) == len(set(emails)), "I5: an email is in the account twice"
    if spy is not None:
        twice = [e for e, n in spy.created.items() if n > 1]
        assert not twice, f"I5: created more than once: {twice}"
    done = [line["email"] for line in lines if line.get("path")]
    assert len(done) == len(set(done)), "I5: an email has two report lines"
    return lines
