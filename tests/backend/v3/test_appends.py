"""The V3 write path through the pipeline: existing contacts that only gain lists are
appended by id (`add_list_memberships`, batched), a batch the server does not vouch for goes
through the PUT, `--no-append` uses the PUT, and `--revive-deleted` brings deleted contacts
back on both paths."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from engine.backend.protocol import ContactRef, ContactState
from engine.backend.v3 import V3Backend
from engine.backend.v3._json import put_body
from engine.errors import ApiError, DoNotMailError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.dryrun import plan_migration
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import REVIVED, Contact, Outcome
from engine.pipeline.put import _write_fields
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import migrate
from engine.simulator.v3 import RunningSimulator

from .conftest import BackendOpener, SimStarter

#: Per contact, no bulk: the appends are the write path's own batching.
PER_CONTACT = MigrationConfig(bulk_threshold=None, poll_initial=0.02, poll_max=0.05)


def _existing(sim: RunningSimulator, count: int) -> tuple[str, str, list[str]]:
    """`count` contacts on Old (and a field), the list News; (old id, news id, emails)."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    emails = [f"e{n:03d}@example.com" for n in range(count)]
    for email in emails:
        sim.store.add_contact(email, lists=[old], first_name="Same")
    return old, news, emails


async def test_existing_contacts_are_appended_by_id_in_batches(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """200 existing contacts gaining a list: one lookup each, then their ids in one append
    (no PUT), every list kept: at most 1.05 requests a contact plus the polls."""
    old, news, emails = _existing(sim, 200)
    source = [{"email": e, "first_name": "Same"} for e in emails]
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            before = backend.stats().requests
            report = await migrate(backend, source, lists=["News"], config=PER_CONTACT)
            sent = backend.stats().requests - before

    assert report.outcomes["updated"] == 200
    appends = [w for w in sim.store.writes if w.endpoint == "activities.add_list_memberships"]
    assert len(appends) == 1
    assert not [w for w in sim.store.writes if w.endpoint == "contacts.update"]
    for email in emails:
        stored = sim.store.contact_by_email(email)
        assert stored is not None
        assert stored.lists == [old, news]
    # lookups, the start-up reads (the token check, the lists), the append; polls apart
    assert report.polls >= 1
    assert sent - report.polls <= 200 * 1.05, (sent, report.polls)


async def test_appends_go_one_list_a_batch_whatever_the_sets_of_lists(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """300 contacts gaining News, Promo or both: one append per list (2), not one per set of
    lists (3); each contact gets one `updated` outcome, once all its batches are settled."""
    old, news, emails = _existing(sim, 300)
    promo = sim.store.add_list("Promo")
    sets = (["News"], ["Promo"], ["News", "Promo"])
    source = [{"email": e, "lists": sets[n % 3]} for n, e in enumerate(emails)]
    seen: list[str] = []
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            report = await migrate(
                backend,
                source,
                config=dataclasses.replace(PER_CONTACT, read=ReadOptions(lists_column="lists")),
                on_outcome=lambda o: seen.append(o.email),
            )

    assert report.outcomes["updated"] == 300
    assert sorted(seen) == sorted(emails)  # one outcome each
    appends = sim.store.calls("activities.add_list_memberships")
    assert len(appends) == 2
    assert not sim.store.calls("contacts.update")
    for n, email in enumerate(emails):
        stored = sim.store.contact_by_email(email)
        assert stored is not None
        wanted = {old, *({"News": news, "Promo": promo}[name] for name in sets[n % 3])}
        assert set(stored.lists) == wanted


async def test_a_contact_an_append_skips_silently_is_not_called_updated(
    start_sim: SimStarter, open_backend: BackendOpener
) -> None:
    """A contact unsubscribed after its lookup, which the append skips while counting it
    done (the [U] `skip` answer): read back, it is not on the list, so it goes the write
    path and ends `skipped` (opted-out), never `updated`; the others are appended."""
    async with start_sim(unsubscribed_or_deleted_ids="skip") as sim:
        old, _, emails = _existing(sim, 20)
        async with open_backend(sim) as backend:
            append = backend.append

            async def unsubscribed_meanwhile(ids: Sequence[str], targets: Sequence[str]) -> Any:
                stored = sim.store.contact_by_email(emails[0])
                assert stored is not None
                stored.permission = "unsubscribed"  # the test plays the contact opting out
                return await append(ids, targets)

            backend.append = unsubscribed_meanwhile  # type: ignore[method-assign]
            with anyio.fail_after(40):
                report = await migrate(
                    backend, [{"email": e} for e in emails], lists=["News"], config=PER_CONTACT
                )

    assert report.outcomes["updated"] == 19
    assert report.outcomes["skipped"] == 1
    assert len(sim.store.calls("activities.add_list_memberships")) == 1
    assert not sim.store.calls("contacts.update")  # I2: the opted-out contact is not written
    out = sim.store.contact_by_email(emails[0])
    assert out is not None
    assert out.lists == [old]


async def test_a_contact_whose_other_append_failed_reports_what_the_run_added(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A contact gaining News and Promo whose Promo append fails goes the write path; its
    outcome counts News (added by its other append) as added by the run, not as a list it
    had before (I3)."""
    old, news, emails = _existing(sim, 3)
    promo = sim.store.add_list("Promo")
    async with open_backend(sim) as backend:
        append = backend.append

        async def promo_refused(ids: Sequence[str], targets: Sequence[str]) -> Any:
            if tuple(targets) == (promo,):
                raise ApiError("refused", status=400, method="POST")
            return await append(ids, targets)

        backend.append = promo_refused  # type: ignore[method-assign]
        outcomes: list[Outcome] = []
        with anyio.fail_after(30):
            await migrate(
                backend,
                [{"email": e} for e in emails],
                lists=["News", "Promo"],
                config=PER_CONTACT,
                on_outcome=outcomes.append,
            )
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert outcome.kind == "updated", outcome
        assert outcome.lists_before == (old,)
        assert set(outcome.lists_added) == {news, promo}
        assert "not confirmed" in outcome.note
        stored = sim.store.contact_by_email(outcome.email)
        assert stored is not None
        assert set(stored.lists) == {old, news, promo}


async def test_an_append_that_fails_sends_its_contacts_through_the_put(
    start_sim: SimStarter, open_backend: BackendOpener
) -> None:
    """An append the server refuses (500 on every try) is not trusted: its contacts are
    written by the whole-contact PUT, each keeping its lists, with the reason noted."""
    rates = {"POST activities/add_list_memberships": 1.0}
    async with start_sim(route_error_rates=rates) as sim:
        old, news, emails = _existing(sim, 30)
        seen: list[str] = []
        async with open_backend(sim) as backend:
            with anyio.fail_after(60):
                report = await migrate(
                    backend,
                    [{"email": e} for e in emails],
                    lists=["News"],
                    config=PER_CONTACT,
                    on_outcome=lambda o: seen.append(o.note),
                )
        assert report.outcomes["updated"] == 30
        assert len([w for w in sim.store.writes if w.endpoint == "contacts.update"]) == 30
        assert all("the append was not confirmed" in note for note in seen)
        for email in emails:
            stored = sim.store.contact_by_email(email)
            assert stored is not None
            assert stored.lists == [old, news]


async def test_no_append_uses_the_put(sim: RunningSimulator, open_backend: BackendOpener) -> None:
    """With `append_writes=False` each existing contact gets its own safe PUT, no append."""
    _, _, emails = _existing(sim, 5)
    config = MigrationConfig(
        bulk_threshold=None, poll_initial=0.02, poll_max=0.05, append_writes=False
    )
    async with open_backend(sim) as backend:
        with anyio.fail_after(30):
            report = await migrate(
                backend, [{"email": e} for e in emails], lists=["News"], config=config
            )
    assert report.outcomes["updated"] == 5
    endpoints = [w.endpoint for w in sim.store.writes]
    assert endpoints.count("contacts.update") == 5
    assert "activities.add_list_memberships" not in endpoints


async def test_new_field_values_go_by_a_put_that_names_no_list_and_the_lists_by_append(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A row that changes a field gets a PUT of its fields that names no list (the API keeps
    them), and its list goes in the same append as the others'."""
    old, news, emails = _existing(sim, 4)
    source = [{"email": e} for e in emails[1:]] + [{"email": emails[0], "first_name": "New"}]
    async with open_backend(sim) as backend:
        with anyio.fail_after(30):
            report = await migrate(backend, source, lists=["News"], config=PER_CONTACT)
    assert report.outcomes["updated"] == 4
    endpoints = [w.endpoint for w in sim.store.writes]
    assert endpoints.count("contacts.update") == 1
    assert endpoints.count("activities.add_list_memberships") == 1
    first = sim.store.contact_by_email(emails[0])
    assert first is not None
    assert first.core["first_name"] == "New"
    assert first.lists == [old, news]


async def test_a_field_write_found_done_on_its_fresh_read_is_unchanged(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A row's new field value and list, given to the contact by another writer before the
    write's fresh read, leave it `unchanged`: no PUT, no append."""
    old, news, emails = _existing(sim, 1)
    email = emails[0]
    async with open_backend(sim) as backend:
        await backend.lists()
        state = (await backend.find([email]))[email]
        assert isinstance(state, ContactState)
        contact = Contact(email, (news,), {"FirstName": "New"}, [1])
        write = decide(contact, state, backend=backend, skip_removed=False, fetched_at=0.0)
        assert isinstance(write, Write)
        assert write.fields
        assert write.added == (news,)
        stored = sim.store.contact_by_email(email)
        assert stored is not None
        sim.store.update_contact(  # the other writer, between the lookup and the write
            stored.id,
            {
                "email_address": {"address": email},
                "update_source": "Account",
                **stored.core,
                "first_name": "New",
                "list_memberships": [old, news],
            },
        )
        writes = len(sim.store.writes)
        with anyio.fail_after(10):
            outcome = await _write_fields(
                write, backend, verify="stale", stale_after=2.0, intend=None
            )
    assert outcome is not None
    assert outcome.kind == "unchanged", outcome
    assert set(outcome.lists_before) == {old, news}
    assert len(sim.store.writes) == writes


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-contact"])
async def test_revive_deleted_brings_a_deleted_contact_back(
    sim: RunningSimulator, open_backend: BackendOpener, bulk: bool
) -> None:
    """With `revive_deleted` a deleted contact is revived onto the target list by its own
    PUT, reported `updated` with a note saying so, on both paths."""
    news = sim.store.add_list("News")
    sim.store.add_contact("gone@example.com", deleted=True)
    source = [{"email": f"m{n:02d}@example.com"} for n in range(30)]
    source.append({"email": "gone@example.com"})
    config = MigrationConfig(
        probe_size=1,
        poll_initial=0.02,
        poll_max=0.05,
        bulk_threshold=25 if bulk else None,
        revive_deleted=True,
    )
    notes: dict[str, str] = {}
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            report = await migrate(
                backend,
                source,
                lists=["News"],
                config=config,
                on_outcome=lambda o: notes.__setitem__(o.email, o.note),
            )

    assert report.outcomes["skipped"] == 0
    assert report.outcomes["updated"] == 1
    assert REVIVED in notes["gone@example.com"]
    stored = sim.store.contact_by_email("gone@example.com")
    assert stored is not None
    assert stored.status != "deleted"
    assert news in stored.lists


async def test_the_dry_run_counts_appends_puts_and_posts(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """The dry run with lookups predicts the V3 per-contact path's requests (lookups, one
    append for the contacts that only gain lists, PUTs for changed fields, POSTs) within 5%."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    source: list[dict[str, str]] = []
    for n in range(40):  # gain a list: appended
        sim.store.add_contact(f"a{n}@example.com", lists=[old], first_name="A")
        source.append({"email": f"a{n}@example.com"})
    for n in range(5):  # a field changes: PUT
        sim.store.add_contact(f"p{n}@example.com", lists=[old], first_name="Old")
        source.append({"email": f"p{n}@example.com", "first_name": "New"})
    for n in range(5):  # on the target already: no write
        sim.store.add_contact(f"u{n}@example.com", lists=[news])
        source.append({"email": f"u{n}@example.com"})
    for n in range(10):  # new: POST
        source.append({"email": f"n{n}@example.com"})
    sim.store.add_contact("out@example.com", lists=[old], permission="unsubscribed")
    sim.store.add_contact("gone@example.com", deleted=True)
    source += [{"email": "out@example.com"}, {"email": "gone@example.com"}]
    config = MigrationConfig(
        bulk_threshold=None, poll_initial=0.02, poll_max=0.05, activity_seconds=0.05
    )
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            plan = await plan_migration(backend, source, lists=["News"], config=config, lookup=True)
            before = backend.stats().requests
            report = await migrate(backend, source, lists=["News"], config=config)
            sent = backend.stats().requests - before

    assert report.outcomes["updated"] == 45
    assert report.outcomes["created"] == 10
    assert plan.activities == 1
    assert abs(plan.requests - sent) <= max(2, 0.05 * sent), (plan.requests, sent)


async def test_the_bulk_path_looks_up_no_contact_once_the_probe_has_passed(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A bulk migration of 300 contacts on V3 lists the deleted contacts (500 a request)
    instead of looking every contact up, scans only until the probe's witnesses are found,
    and settles by reading the target back: a small fraction of a request per contact."""
    old, _, emails = _existing(sim, 200)
    sim.store.add_contact("gone@example.com", deleted=True)
    source = [{"email": e} for e in emails] + [{"email": f"new{n}@example.com"} for n in range(100)]
    source.append({"email": "gone@example.com"})
    config = MigrationConfig(probe_size=5, poll_initial=0.02, poll_max=0.05)
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            before = backend.stats().requests
            report = await migrate(backend, source, lists=["News"], config=config)
            sent = backend.stats().requests - before

    assert report.outcomes["bulk_added"] == 300
    assert report.outcomes["skipped"] == 1  # the deleted contact, left out of the import
    assert sent - report.polls <= 30, (sent, report.polls)
    for email in emails:
        stored = sim.store.contact_by_email(email)
        assert stored is not None
        assert old in stored.lists


async def test_the_probe_looks_up_several_contacts_at_once_and_reads_none_again(
    start_sim: SimStarter, open_backend: BackendOpener
) -> None:
    """On V3 (one email a lookup) the probe's scan keeps several lookups in flight, and takes
    its witnesses from the lookups, which carry the lists: the only reads of single contacts
    are the witnesses' read-back after the probe's activity."""
    async with start_sim(latency_ms=20.0) as sim:
        old, _, emails = _existing(sim, 10)
        source = [{"email": f"new{n:03d}@example.com"} for n in range(60)]
        source += [{"email": e} for e in emails]  # the witnesses come last
        config = MigrationConfig(probe_size=5, poll_initial=0.02, poll_max=0.05)
        async with open_backend(sim) as backend:
            find, read = backend.find, backend.read
            in_flight, peak, reads = 0, 0, 0

            async def counted_find(emails: Sequence[str], **options: Any) -> Any:
                nonlocal in_flight, peak
                in_flight += 1
                peak = max(peak, in_flight)
                try:
                    return await find(emails, **options)
                finally:
                    in_flight -= 1

            async def counted_read(ref: ContactRef) -> ContactState:
                nonlocal reads
                reads += 1
                return await read(ref)

            backend.find = counted_find  # type: ignore[method-assign]
            backend.read = counted_read  # type: ignore[method-assign]
            with anyio.fail_after(40):
                report = await migrate(backend, source, lists=["News"], config=config)

    assert report.outcomes["bulk_added"] == 70
    assert peak >= 4, peak
    assert reads == 5  # the five witnesses, read back after their activity
    for email in emails:
        stored = sim.store.contact_by_email(email)
        assert stored is not None
        assert old in stored.lists


async def test_once_the_probe_passed_other_batches_do_not_wait_for_its_batch(
    start_sim: SimStarter, open_backend: BackendOpener
) -> None:
    """The batches waiting for the probe's verdict go as soon as it is known: the second
    batch's import is posted while the first batch's own (what its probe left) still runs."""
    async with start_sim(activity_delay=0.5, activity_jitter=0.0) as sim:
        old, _, emails = _existing(sim, 60)
        source = [{"email": e} for e in emails]
        config = MigrationConfig(probe_size=5, bulk_max_rows=30, poll_initial=0.02, poll_max=0.05)
        async with open_backend(sim) as backend:
            submit, poll = backend.submit, backend.poll
            events: list[tuple[str, str]] = []

            async def recorded_submit(request: object, **options: Any) -> Any:
                activity = await submit(request, **options)
                events.append(("posted", activity.id))
                return activity

            async def recorded_poll(activity_id: str) -> Any:
                activity = await poll(activity_id)
                if activity.finished and ("finished", activity_id) not in events:
                    events.append(("finished", activity_id))
                return activity

            backend.submit = recorded_submit  # type: ignore[method-assign]
            backend.poll = recorded_poll  # type: ignore[method-assign]
            with anyio.fail_after(40):
                report = await migrate(backend, source, lists=["News"], config=config)

    assert report.outcomes["bulk_added"] == 60
    posted = [i for kind, i in events if kind == "posted"]
    assert len(posted) == 3, events  # the probe, then the rest of its batch and the second
    # batch, in either order: both are posted before the first of them has finished.
    assert events.index(("posted", posted[2])) < events.index(("finished", posted[1])), events
    for email in emails:
        stored = sim.store.contact_by_email(email)
        assert stored is not None
        assert old in stored.lists


def test_a_fields_only_put_names_no_list_and_never_writes_the_unsubscribed() -> None:
    """The fields-only PUT body carries no `list_memberships` (so no list can be dropped),
    resends the core properties, and is refused for an unsubscribed or deleted contact."""
    document = {
        "contact_id": "c1",
        "email_address": {"address": "a@example.com", "permission_to_send": "implicit"},
        "first_name": "Old",
        "last_name": "Kept",
        "list_memberships": ["l1", "l2"],
    }
    state = ContactState(
        ContactRef("c1", "a@example.com", "active"),
        ("l1", "l2"),
        {"FirstName": "Old", "LastName": "Kept"},
        "v",
        document,
    )
    built = put_body(state, ("l3",), {"FirstName": "New"}, lists=False)
    assert built is not None
    body = json.loads(built[0])
    assert "list_memberships" not in body
    assert body["first_name"] == "New"
    assert body["last_name"] == "Kept"
    assert built[1] == ()  # it adds no list: the lists go by append
    backend = V3Backend.__new__(V3Backend)  # fields_write is pure: no client needed
    for status in ("opted_out", "deleted"):
        gone = ContactState(ContactRef("c1", "a@example.com", status), (), {}, "v", document)
        with pytest.raises(DoNotMailError):
            backend.fields_write(gone, {"FirstName": "New"})


def test_a_write_waiting_for_its_append_keeps_no_document_and_no_body() -> None:
    """What an append batch holds of a write is who the contact is, its lists before and
    what it gains: not the document read nor the PUT body (an append sends neither), and
    no version, so a contact the append does not vouch for is written from a fresh read."""
    from engine.backend.v3 import _json
    from engine.pipeline.append import _slim

    backend = V3Backend.__new__(V3Backend)
    state = _json.contact_state(
        {
            "contact_id": "c1",
            "email_address": {"address": "a@x.io", "permission_to_send": "implicit"},
            "list_memberships": ["l1"],
            "first_name": "Ann",
        }
    )
    write = decide(Contact("a@x.io", ("l2",), {}, [2]), state, backend=backend, skip_removed=False)
    assert isinstance(write, Write)
    assert write.update is not None
    assert write.update.body is not None
    held = _slim(write)
    assert held.update is not None
    assert held.update.body is None
    assert held.update.state.document is None
    assert held.update.state.version is None
    assert held.update.state.ref == state.ref
    assert held.update.state.lists == ("l1",)
    assert held.added == ("l2",)
    assert held.contact is write.contact
    assert _json.contact_state(state.document).version != held.update.state.version
