"""The put stage against a concurrent writer: stale entries are re-read, and with
`verify="all"` lost lists are put back, always as a union with what the other writer did."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from engine.backend import ContactState, V1Backend
from engine.backend.v1 import Account, Credentials, RateGovernor, contact_state
from engine.backend.v1.records import ContactEntry
from engine.errors import ConnectionLostError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import Contact
from engine.pipeline.put import send_write
from engine.pipeline.run import migrate
from engine.simulator import RunningSimulator

from .conftest import sim_stats

#: `start_simulator` (tests/conftest.py): `async with start(**overrides) as (sim, session)`.
SimulatorStarter = Callable[..., Any]


async def _write(
    backend: V1Backend, contact: Contact, state: ContactState, fetched_at: float
) -> Write:
    await backend.lists()  # the run reads the lists first: their ids are what writes send
    result = decide(contact, state, backend=backend, skip_removed=False, fetched_at=fetched_at)
    assert isinstance(result, Write)
    return result


def _governed(sim: RunningSimulator, governor: RateGovernor) -> Account:
    """An account on the simulator whose requests go through `governor`."""
    return Account(
        Credentials(sim.config.username, sim.config.api_key, sim.config.password),
        base_url=sim.base_url,
        ca_file=sim.ca_path,
        governor=governor,
    )


def _lists(sim: RunningSimulator, email: str) -> set[int]:
    stored = sim.store.contact_by_email(email)
    assert stored is not None
    return set(stored.lists)


async def _fetch(account: Account, sim: RunningSimulator, email: str) -> ContactState:
    stored = sim.store.contact_by_email(email)
    assert stored is not None
    return contact_state(await account.get_contact(str(stored.id)))


def _other_writer_adds(sim: RunningSimulator, email: str, list_id: int) -> None:
    """Another client adds `list_id` to the contact (a PUT with the union, as it should)."""
    store = sim.store
    stored = store.contact_by_email(email)
    assert stored is not None
    store._set_memberships(  # the test plays the other writer
        stored, {**stored.memberships, list_id: next(iter(stored.memberships.values()))}
    )


@pytest.mark.parametrize(
    ("verify", "age", "kept"),
    [
        pytest.param("stale", 10.0, True, id="stale-entry-re-read"),
        pytest.param("all", 0.0, True, id="all-re-reads-fresh-entry"),
        pytest.param("off", 10.0, False, id="off-drops-the-other-write"),
    ],
)
async def test_a_stale_entry_is_re_read_before_the_put(
    simulator: RunningSimulator, account: Account, verify: str, age: float, kept: bool
) -> None:
    """A list another writer added after our GET survives our PUT when the entry is re-read."""
    store = simulator.store
    a, b, c = store.create_list("A"), store.create_list("B"), store.create_list("C")
    store.add_contact("jane@example.com", lists=[a])
    entry = await _fetch(account, simulator, "jane@example.com")
    backend = V1Backend(account)
    write = await _write(
        backend,
        Contact("jane@example.com", (str(b),), {}, [2]),
        entry,
        anyio.current_time() - age,
    )
    _other_writer_adds(simulator, "jane@example.com", c)

    outcome = await send_write(write, backend, skip_removed=False, verify=verify)

    assert outcome.kind == "updated"
    assert _lists(simulator, "jane@example.com") == ({a, b, c} if kept else {a, b})


async def test_verify_all_re_applies_the_union_after_a_concurrent_stale_put(
    simulator: RunningSimulator, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent writer's stale PUT right after ours removes our target: it is put back,
    and the other writer's own list stays."""
    store = simulator.store
    a, b, c = store.create_list("A"), store.create_list("B"), store.create_list("C")
    store.add_contact("jane@example.com", lists=[a])
    entry = await _fetch(account, simulator, "jane@example.com")
    backend = V1Backend(account)
    write = await _write(backend, Contact("jane@example.com", (str(b),), {}, [2]), entry, 0.0)
    original: Callable[..., object] = Account.put_contact
    calls = 0

    async def put_then_clobber(
        self: Account, e: ContactEntry, body: bytes, **options: object
    ) -> None:
        nonlocal calls
        calls += 1
        await original(self, e, body, **options)  # type: ignore[misc]
        if calls == 1:  # the other writer PUTs from its own old read: A and C, not B
            stored = store.contact_by_email("jane@example.com")
            assert stored is not None
            membership = next(iter(stored.memberships.values()))
            store._set_memberships(stored, {a: membership, c: membership})

    monkeypatch.setattr(Account, "put_contact", put_then_clobber)

    outcome = await send_write(write, backend, skip_removed=False, verify="all")

    assert outcome.kind == "updated"
    assert "concurrent write" in outcome.reason
    assert _lists(simulator, "jane@example.com") == {a, b, c}
    assert calls == 2


async def test_a_put_applied_whose_answer_was_lost_is_updated_not_unchanged(
    simulator: RunningSimulator, account: Account
) -> None:
    """A PUT the server applied but whose answer was lost (a timeout) is retried: the contact
    is read again, found on its lists, and reported `updated` by this write, not `unchanged`."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    store.add_contact("jane@example.com", lists=[a])
    entry = await _fetch(account, simulator, "jane@example.com")
    backend = V1Backend(account)
    write = await _write(
        backend, Contact("jane@example.com", (str(b),), {}, [2]), entry, anyio.current_time()
    )
    update = backend.update
    calls: list[int] = []

    async def applied_then_lost(*args: object, **kwargs: object) -> None:
        await update(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionLostError("no answer: TimeoutError")

    backend.update = applied_then_lost  # type: ignore[method-assign]
    outcome = await send_write(write, backend, skip_removed=False)

    assert outcome.kind == "updated", outcome
    assert outcome.lists_before == (str(a),)
    assert "answer to its PUT was lost" in outcome.note
    assert len(calls) == 1  # found on its lists: not sent again
    assert _lists(simulator, "jane@example.com") == {a, b}


@pytest.mark.timeout(60)
async def test_at_the_documented_rate_no_read_goes_stale_behind_the_other_workers(
    start_simulator: SimulatorStarter, fast_config: MigrationConfig
) -> None:
    """At a 4/s limit, configured, with the default eight put workers: the workers that
    read and write are as many as the rate lets write within `stale_after`, so each
    existing contact costs its search share, a GET and a PUT (no read again, no
    throttle)."""
    async with start_simulator(rate_limit=4.0) as (sim, _):
        store = sim.store
        a, b = store.create_list("A"), store.create_list("B")
        emails = [f"c{n:02d}@example.com" for n in range(16)]
        for email in emails:
            store.add_contact(email, lists=[a])
        config = dataclasses.replace(fast_config, bulk_threshold=None)
        account = _governed(sim, RateGovernor(rate=4.0, concurrency=8))
        async with account:
            with anyio.fail_after(40):
                report = await migrate(
                    account, [{"email": e} for e in emails], lists=["B"], config=config
                )
            stats = await sim_stats(sim)
    assert report.outcomes["updated"] == 16
    assert report.throttles == 0
    gets = stats["by_route"].get("GET contacts/{id}", 0)
    assert gets == 16, stats["by_route"]  # one read a contact: none read again
    assert all(_lists(sim, e) == {a, b} for e in emails)


@pytest.mark.timeout(60)
async def test_when_the_rate_falls_mid_run_reads_wait_instead_of_going_stale(
    start_simulator: SimulatorStarter, fast_config: MigrationConfig
) -> None:
    """The governor's rate cut by a quarter mid-run (a throttle at the configured rate): the
    contacts read ahead of their writes shrink with it, so no write waits past
    `stale_after` for its turn and none reads its contact twice."""
    async with start_simulator() as (sim, _):
        store = sim.store
        a, b = store.create_list("A"), store.create_list("B")
        emails = [f"c{n:02d}@example.com" for n in range(40)]
        for email in emails:
            store.add_contact(email, lists=[a])
        # At 16/s the workers are sized for a half-second read: four of each.
        config = dataclasses.replace(fast_config, bulk_threshold=None, stale_after=0.5)
        governor = RateGovernor(rate=16.0, concurrency=8)
        account = _governed(sim, governor)
        done = 0

        def on_outcome(_: object) -> None:
            nonlocal done
            done += 1
            if done == 4:  # the server's limit fell: 16 -> 12/s, where the eight workers'
                governor.on_throttle(None)  # turns take 0.67 s, more than `stale_after`

        async with account:
            with anyio.fail_after(40):
                report = await migrate(
                    account,
                    [{"email": e} for e in emails],
                    lists=["B"],
                    config=config,
                    on_outcome=on_outcome,
                )
            stats = await sim_stats(sim)
    assert governor.stats().rate == pytest.approx(12.0)
    assert report.outcomes["updated"] == 40
    gets = stats["by_route"].get("GET contacts/{id}", 0)
    assert gets <= 41, stats["by_route"]  # one read a contact (one spare: a turn's edge)
    assert all(_lists(sim, e) == {a, b} for e in emails)


@pytest.mark.timeout(60)
async def test_contacts_read_and_settled_without_a_write_give_their_places_back(
    start_simulator: SimulatorStarter, fast_config: MigrationConfig
) -> None:
    """With a window of one contact (4/s, `stale_after` 0.5 s), contacts that are read and
    need no write (already on the list) and contacts written all pass through it: each gives
    its place back, and the run ends."""
    async with start_simulator() as (sim, _):
        store = sim.store
        a, b = store.create_list("A"), store.create_list("B")
        emails = [f"c{n:02d}@example.com" for n in range(12)]
        for n, email in enumerate(emails):
            store.add_contact(email, lists=[a, b] if n % 2 else [a])
        config = dataclasses.replace(fast_config, bulk_threshold=None, stale_after=0.5)
        account = _governed(sim, RateGovernor(rate=4.0, concurrency=8))
        async with account:
            with anyio.fail_after(40):
                report = await migrate(
                    account, [{"email": e} for e in emails], lists=["B"], config=config
                )
    assert report.outcomes["updated"] == 6
    assert report.outcomes["unchanged"] == 6
    assert all(_lists(sim, e) == {a, b} for e in emails)
