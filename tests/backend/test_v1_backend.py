"""`V1Backend` against the v1 simulator over https: the `Backend` protocol's promises in the
v1 dialect (neutral ids and statuses, writes that keep every list, bulk settled per email)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from pipeline.conftest import new_account

from engine.backend import Backend, BulkActivity, ContactRef, ContactState, V1Backend
from engine.errors import ConflictError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import migrate
from engine.simulator import RunningSimulator

from .bursts import watch_bursts


@pytest.fixture
async def backend(simulator: RunningSimulator) -> AsyncIterator[V1Backend]:
    """A `V1Backend` over an opened account on the simulator."""
    async with new_account(simulator) as account:
        yield V1Backend(account)


async def poll_until_finished(backend: V1Backend, activity: BulkActivity) -> BulkActivity:
    """Poll every 20 ms for at most 10 s."""
    with anyio.fail_after(10):
        while not activity.finished:
            await anyio.sleep(0.02)
            activity = await backend.poll(activity.id)
    return activity


async def test_it_is_a_backend_whose_identity_names_the_account_and_no_secret(
    backend: V1Backend, simulator: RunningSimulator
) -> None:
    """It satisfies the protocol; its identity is the user and host, without the password."""
    assert isinstance(backend, Backend)
    assert backend.identity == f"v1:{simulator.config.username}@127.0.0.1"
    assert simulator.config.password not in repr(backend)
    assert backend.capabilities.lookup_batch == 50
    assert not backend.capabilities.lookup_has_lists


async def test_lists_and_contacts_come_back_in_neutral_terms(
    backend: V1Backend, simulator: RunningSimulator
) -> None:
    """List ids are the numeric ids (no URI); Do Not Mail is `opted_out`; a read gives lists."""
    store = simulator.store
    a = store.create_list("A")
    store.add_contact("jane@example.com", lists=[a], fields={"FirstName": "Jane"})
    store.add_contact("gone@example.com", status="Do Not Mail")

    lists = {item.name: item for item in await backend.lists()}
    assert lists["A"].id == str(a)
    assert lists["Do Not Mail"].is_system
    created = await backend.create_list("B")
    assert created.name == "B"
    assert created.id.isdigit()

    found = await backend.find(["JANE@example.com", "gone@example.com", "none@example.com"])
    assert set(found) == {"jane@example.com", "gone@example.com"}
    assert isinstance(found["gone@example.com"], ContactRef)
    assert found["gone@example.com"].status == "opted_out"
    jane = found["jane@example.com"]
    assert isinstance(jane, ContactRef)
    state = await backend.read(jane)
    assert state.lists == (str(a),)
    assert state.fields["FirstName"] == "Jane"
    assert "http" not in repr(state)  # the document (with its URIs) stays out of sight


async def test_a_write_adds_the_targets_and_keeps_every_list(
    backend: V1Backend, simulator: RunningSimulator
) -> None:
    """`add_lists` then `update`: the contact keeps A, gains B and its new first name."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    store.add_contact("jane@example.com", lists=[a], fields={"FirstName": "Jane"})
    await backend.lists()
    found = await backend.find(["jane@example.com"])
    ref = found["jane@example.com"]
    state = ref if isinstance(ref, ContactState) else await backend.read(ref)

    write = backend.add_lists(state, [str(b)], {"FirstName": "Janet"})
    assert write is not None
    assert write.added == (str(b),)
    assert write.fields == ("FirstName",)
    await backend.update(write)

    stored = store.contact_by_email("jane@example.com")
    assert stored is not None
    assert set(stored.lists) == {a, b}
    assert stored.fields["FirstName"] == "Janet"
    again = await backend.read(state.ref)
    assert backend.add_lists(again, [str(a), str(b)]) is None  # nothing left to write


async def test_create_answers_conflict_for_an_existing_email(
    backend: V1Backend, simulator: RunningSimulator
) -> None:
    """A new contact is created on its targets; the same email again is a `ConflictError`."""
    a = simulator.store.create_list("A")
    await backend.lists()
    contact_id = await backend.create("new@example.com", [str(a)], {"LastName": "Doe"})
    stored = simulator.store.contact_by_email("new@example.com")
    assert stored is not None
    assert contact_id == str(stored.id)
    assert stored.lists == {a}
    with pytest.raises(ConflictError):
        await backend.create("new@example.com", [str(a)], {})


async def test_a_bulk_request_is_settled_email_by_email(
    backend: V1Backend, simulator: RunningSimulator
) -> None:
    """A completed activity: its contacts `added`, a Do Not Mail one `opted_out`."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    store.add_contact("old@example.com", lists=[a])
    store.add_contact("gone@example.com", status="Do Not Mail")
    await backend.lists()
    contacts = [
        ("old@example.com", {"FirstName": "Old"}),
        ("gone@example.com", {"FirstName": "Gone"}),
        ("new@example.com", {"FirstName": "New"}),
    ]
    request = backend.encode_bulk(
        contacts, [str(b)], ["FirstName"], max_rows=20_000, max_bytes=4_000_000
    )

    submitted = await backend.submit(request)
    assert submitted.id in {a.id for a in await backend.recent_activities()}
    finished = await poll_until_finished(backend, submitted)

    assert finished.state == "complete"
    results = await backend.settle(finished, [email for email, _ in contacts], [str(b)])
    assert [(r.email, r.kind) for r in results] == [
        ("old@example.com", "added"),
        ("gone@example.com", "opted_out"),
        ("new@example.com", "added"),
    ]
    old = store.contact_by_email("old@example.com")
    assert old is not None
    assert set(old.lists) == {a, b}


async def test_an_activity_that_ended_in_error_is_failed(
    backend: V1Backend, simulator: RunningSimulator
) -> None:
    """`ERROR` is the neutral `failed`, which ends polling."""
    b = simulator.store.create_list("B")
    await backend.lists()
    request = backend.encode_bulk(
        [("x@example.com", {})], [str(b)], [], max_rows=20_000, max_bytes=4_000_000
    )
    submitted = await backend.submit(request)
    simulator.store.fail_activity(submitted.id)
    finished = await poll_until_finished(backend, submitted)
    assert finished.state == "failed"
    assert finished.status.upper() == "ERROR"


async def test_stats_count_the_requests(backend: V1Backend) -> None:
    """`stats()` reports the client's requests and the governor's rate."""
    before = backend.stats().requests
    await backend.verify()
    after = backend.stats()
    assert after.requests == before + 1
    assert after.rate is None


async def test_the_probe_sends_over_a_pool_of_its_own_closed_when_it_ends(
    simulator: RunningSimulator,
) -> None:
    """The probe's lookups, reads and activity go over a burst pool closed when the probe
    ends; the rest of the batch is submitted over the account's own pool."""
    store = simulator.store
    old, news = store.create_list("Old"), store.create_list("News")
    for n in range(10):
        store.add_contact(f"c{n:03d}@example.com", lists=[old])
    source = [{"email": f"c{n:03d}@example.com"} for n in range(100)]
    config = MigrationConfig(probe_size=3, poll_initial=0.02, poll_max=0.05, bulk_threshold=25)
    async with new_account(simulator) as account:
        backend = V1Backend(account)
        watch = watch_bursts(backend, account)
        with anyio.fail_after(40):
            report = await migrate(backend, source, lists=["News"], config=config)
    assert report.outcomes["bulk_added"] == 100
    watch.check_one_probe()
    for n in range(10):
        kept = store.contact_by_email(f"c{n:03d}@example.com")
        assert kept is not None
        assert set(kept.lists) == {old, news}
