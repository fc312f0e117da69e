"""V3Backend on the V3 simulator: the protocol, lookups and statuses, the safe PUT, creation,
bulk imports settled by reading back, and the endpoints it must never call."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from engine.backend.protocol import Backend, BulkActivity, ContactState
from engine.backend.v3 import V3_CAPABILITIES, V3Backend
from engine.backend.v3._json import V3Activity
from engine.errors import ActivityTooLargeError, ConflictError, DoNotMailError, UnsafeMergeError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import migrate
from engine.simulator.v3 import AccountStore, RunningSimulator

from .conftest import BackendOpener, FakeClock, SimStarter


async def _state(backend: V3Backend, email: str) -> ContactState:
    found = (await backend.find([email], strict=True))[email]
    assert isinstance(found, ContactState)
    return found


async def _finish(backend: V3Backend, activity: BulkActivity) -> BulkActivity:
    with anyio.fail_after(15):
        while not activity.finished:
            await anyio.sleep(0.02)
            activity = await backend.poll(activity.id)
    return activity


async def test_conforms_to_the_protocol(sim: RunningSimulator, open_backend: BackendOpener) -> None:
    """V3Backend is a `Backend` with the V3 capabilities and a secret-free identity."""
    async with open_backend(sim) as backend:
        assert isinstance(backend, Backend)
        caps = backend.capabilities
        assert caps is V3_CAPABILITIES
        assert (caps.dialect, caps.lookup_batch, caps.lookup_has_lists) == ("v3", 1, True)
        assert (caps.bulk_threshold, caps.bulk_max_rows, caps.bulk_max_bytes) == (
            25,
            40_000,
            4_000_000,
        )
        assert caps.lists_per_contact == 50
        assert caps.fields["FirstName"] == 50
        assert caps.fields["HomePhone"] == 25
        assert "CustomField1" not in caps.fields
        assert "Note" not in caps.fields
        identity = backend.identity
        assert identity.startswith("v3:")
        assert identity.endswith("@127.0.0.1")
        assert backend.client.auth.tokens.access_token not in identity
        assert sim.config.client_id not in identity
        await backend.verify()
        assert backend.stats().requests == 1


async def test_lists_create_and_members(sim: RunningSimulator, open_backend: BackendOpener) -> None:
    """lists() reads names and counts; create_list of a taken name gives the existing list;
    members() pages through every member (deleted ones too), lower-cased."""
    news = sim.store.add_list("News")
    for n in range(3):
        sim.store.add_contact(f"Member{n}@Example.com", lists=[news])
    sim.store.add_contact("gone@example.com", lists=[news])
    async with open_backend(sim) as backend:
        infos = {i.name: i for i in await backend.lists()}
        assert infos["News"].id == news
        assert infos["News"].members == 4
        made = await backend.create_list("Fresh")
        assert made.name == "Fresh"
        assert made.id == sim.store.list_by_name("Fresh").id
        again = await backend.create_list("News")
        assert again.id == news
        members = [m async for m in backend.members(news)]
        assert sorted(members) == [
            "gone@example.com",
            "member0@example.com",
            "member1@example.com",
            "member2@example.com",
        ]


async def test_find_and_read_map_statuses(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """find gives a ContactState with lists and fields; unsubscribed is opted_out, a deleted
    contact (hidden without status=all) is deleted, pending_confirmation is unconfirmed."""
    news = sim.store.add_list("News")
    sim.store.add_contact("Ann@Example.com", lists=[news], first_name="Ann", last_name="Lee")
    sim.store.add_contact("out@example.com", lists=[news], permission="unsubscribed")
    sim.store.add_contact("gone@example.com", lists=[news], deleted=True)
    sim.store.add_contact("wait@example.com", permission="pending_confirmation")
    async with open_backend(sim) as backend:
        found = await backend.find(
            [
                "ann@example.com",
                "OUT@example.com",
                "gone@example.com",
                "wait@example.com",
                "no@x.io",
            ]
        )
        assert set(found) == {
            "ann@example.com",
            "out@example.com",
            "gone@example.com",
            "wait@example.com",
        }
        ann = found["ann@example.com"]
        assert isinstance(ann, ContactState)
        assert ann.ref.status == "active"
        assert ann.lists == (news,)
        assert dict(ann.fields) == {"FirstName": "Ann", "LastName": "Lee"}
        assert found["out@example.com"].ref.status == "opted_out"  # type: ignore[union-attr]
        gone = found["gone@example.com"]
        assert isinstance(gone, ContactState)
        assert gone.ref.status == "deleted"
        assert gone.lists == ()  # a deletion strips the lists
        assert found["wait@example.com"].ref.status == "unconfirmed"  # type: ignore[union-attr]
        read = await backend.read(ann.ref)
        assert read.version == ann.version
        assert read.lists == ann.lists


async def test_put_recipe_keeps_lists_and_core_properties(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """The trap: a PUT of list_memberships alone nulls first_name; add_lists + update keeps
    every list and core property, writes the changed field, and keeps consent."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    naive = sim.store.add_contact("naive@example.com", lists=[old], first_name="Nia")
    safe = sim.store.add_contact("safe@example.com", lists=[old], first_name="Sam")
    sim.store.get_contact(safe).core.update(job_title="Chef", birthday_month=3, birthday_day=9)
    async with open_backend(sim) as backend:
        client = backend.client
        body = {
            "email_address": {"address": "naive@example.com"},
            "list_memberships": [old, news],
            "update_source": "Account",
        }
        await client.send(
            "PUT", client.url(f"contacts/{naive}"), body=json.dumps(body).encode(), expect=(200,)
        )
        assert "first_name" not in sim.store.get_contact(naive).core  # the trap, shown

        state = await _state(backend, "safe@example.com")
        write = backend.add_lists(state, [news], {"LastName": "Ray", "FirstName": "Sam"})
        assert write is not None
        assert write.added == (news,)
        assert write.fields == ("LastName",)
        await backend.update(write)
        after = await _state(backend, "safe@example.com")
        assert after.lists == (old, news)
        stored = sim.store.get_contact(safe)
        assert stored.core == {
            "first_name": "Sam",
            "last_name": "Ray",
            "job_title": "Chef",
            "birthday_month": 3,
            "birthday_day": 9,
        }
        assert stored.permission == "implicit"
        assert backend.add_lists(after, [news], {"LastName": "Ray"}) is None  # nothing new


async def test_field_write_resends_whole_subresources(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A phone or address write resends every phone and address as read, changing one kind."""
    news = sim.store.add_list("News")
    async with open_backend(sim) as backend:
        contact_id = await backend.create(
            "tel@example.com", [news], {"WorkPhone": "555-0100", "City": "Boston"}
        )
        state = await _state(backend, "tel@example.com")
        assert state.fields["WorkPhone"] == "555-0100"
        assert state.fields["City"] == "Boston"
        write = backend.add_lists(state, [news], {"HomePhone": "555-0199", "PostalCode": "02110"})
        assert write is not None
        await backend.update(write)
        stored = sim.store.get_contact(contact_id)
        phones = {p["kind"]: p["phone_number"] for p in stored.subresources["phone_numbers"]}
        assert phones == {"work": "555-0100", "home": "555-0199"}
        (home,) = stored.subresources["street_addresses"]
        assert (home["city"], home["postal_code"]) == ("Boston", "02110")
        assert stored.lists == [news]


def test_superset_proof_refuses_a_body_that_drops_a_list() -> None:
    """add_lists re-reads the encoded body and refuses one that lost a list."""
    backend = V3Backend.__new__(V3Backend)
    doc: dict[str, Any] = {
        "contact_id": "c1",
        "email_address": {"address": "a@x.io", "permission_to_send": "implicit"},
        "list_memberships": ["l1", "l2"],
    }
    from engine.backend.v3 import _json

    state = _json.contact_state(doc)
    real_dumps = json.dumps

    def dropping(obj: Any, **kw: Any) -> str:
        if isinstance(obj, dict) and "list_memberships" in obj:
            obj = {**obj, "list_memberships": obj["list_memberships"][1:]}
        return real_dumps(obj, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_json.json, "dumps", dropping)
        with pytest.raises(UnsafeMergeError, match="does not keep every list"):
            backend.add_lists(state, ["l3"])


def test_fifty_list_cap_and_unsubscribed_refusal() -> None:
    """A union over 50 lists raises naming the count; an unsubscribed contact is never
    written (DoNotMailError); a deleted contact's state gives a reviving PUT."""
    from engine.backend.v3 import _json

    backend = V3Backend.__new__(V3Backend)
    email = {"address": "a@x.io", "permission_to_send": "implicit"}
    full = _json.contact_state(
        {
            "contact_id": "c1",
            "email_address": email,
            "list_memberships": [f"l{i}" for i in range(50)],
        }
    )
    with pytest.raises(UnsafeMergeError, match="51 lists"):
        backend.add_lists(full, ["new"])
    assert backend.add_lists(full, ["l3"]) is None
    out = _json.contact_state(
        {"contact_id": "c2", "email_address": {**email, "permission_to_send": "unsubscribed"}}
    )
    with pytest.raises(DoNotMailError):
        backend.add_lists(out, ["new"])
    gone = _json.contact_state(
        {"contact_id": "c3", "email_address": email, "deleted_at": "2026-01-02", "first_name": "G"}
    )
    write = backend.add_lists(gone, ["new"])
    assert write is not None
    body = json.loads(write.body)  # type: ignore[arg-type]
    assert body["update_source"] == "Account"
    assert body["first_name"] == "G"
    assert body["list_memberships"] == ["new"]


async def test_create_and_conflict(sim: RunningSimulator, open_backend: BackendOpener) -> None:
    """create POSTs an implicit, Account-sourced contact on its targets; an existing email,
    even a deleted one, gives ConflictError."""
    news = sim.store.add_list("News")
    sim.store.add_contact("gone@example.com", deleted=True)
    async with open_backend(sim) as backend:
        contact_id = await backend.create("New@Example.com", [news], {"FirstName": "Nu"})
        stored = sim.store.get_contact(contact_id)
        assert (stored.email, stored.permission, stored.create_source) == (
            "new@example.com",
            "implicit",
            "Account",
        )
        assert stored.lists == [news]
        assert stored.core == {"first_name": "Nu"}
        for email in ("new@example.com", "gone@example.com"):
            with pytest.raises(ConflictError):
                await backend.create(email, [news], {})


async def test_bulk_import_settled_by_reading_back(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A json import keeps existing lists; settle says added for contacts now on the
    targets, opted_out for an unsubscribed one, unknown for an email too long for an import."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    sim.store.add_contact("kept@example.com", lists=[old], first_name="Kim")
    sim.store.add_contact("out@example.com", permission="unsubscribed")
    long_email = "a" * 45 + "@example.com"
    emails = [f"bulk{n:02d}@example.com" for n in range(26)]
    rows = [(e, {"FirstName": f"B{n}"}) for n, e in enumerate(emails)]
    rows += [("kept@example.com", {}), ("out@example.com", {}), (long_email, {})]
    async with open_backend(sim) as backend:
        request = backend.encode_bulk(
            rows, [news], ["FirstName"], max_rows=40_000, max_bytes=4_000_000
        )
        assert long_email not in request.body.decode()
        submitted = await backend.submit(request)
        assert submitted.state in ("pending", "running")
        done = await _finish(backend, submitted)
        assert done.state == "complete"
        assert done.created == submitted.created
        recent = await backend.recent_activities()
        assert [a.id for a in recent] == [done.id]
        settled = await backend.settle(done, [e for e, _ in rows], [news])
        results = {r.email: r.kind for r in settled}
        assert results.pop("out@example.com") == "opted_out"
        assert results.pop(long_email) == "unknown"
        assert set(results.values()) == {"added"}
        kept = await _state(backend, "kept@example.com")
        assert set(kept.lists) == {old, news}
        assert kept.fields["FirstName"] == "Kim"
        # Two contacts: cheaper to look each up than to page the list.
        small = backend.encode_bulk(
            [("solo@example.com", {}), ("out@example.com", {})],
            [old],
            [],
            max_rows=40_000,
            max_bytes=4_000_000,
        )
        solo = await _finish(backend, await backend.submit(small))
        pair = ["solo@example.com", "out@example.com"]
        assert [r.kind for r in await backend.settle(solo, pair, [old])] == ["added", "opted_out"]
        # An activity a killed run submitted is settled by a resumed one the same way: the
        # read-back needs only the emails and the targets the journal kept.
        inherited = BulkActivity(done.id, "complete", "completed", document=V3Activity({}))
        assert {r.kind for r in await backend.settle(inherited, emails, [news])} == {"added"}


async def _import(backend: V3Backend, emails: list[str], list_id: str) -> BulkActivity:
    """Post a json import of `emails` (email only) onto `list_id`."""
    request = backend.encode_bulk(
        [(e, {}) for e in emails], [list_id], [], max_rows=40_000, max_bytes=4_000_000
    )
    return await backend.submit(request)


async def _settled(
    backend: V3Backend, activity: BulkActivity, emails: list[str], list_id: str
) -> tuple[set[str], int]:
    """The kinds `settle` gives the activity's contacts, and the requests it took."""
    before = backend.stats().requests
    settled = await backend.settle(activity, emails, [list_id])
    return {r.kind for r in settled}, backend.stats().requests - before


def _change_every_member(store: AccountStore, members: list[str], list_id: str) -> None:
    """Another writer: adds `members` to `list_id` (500 ids an activity, run at once), which
    stamps each of them."""
    for start in range(0, len(members), 500):
        body = {"source": {"contact_ids": members[start : start + 500]}, "list_ids": [list_id]}
        store.run_activity(store.submit_list_memberships(body, remove=False).id)


#: The 30 contacts each read-back test imports.
_BULK = [f"bulk{n:02d}@example.com" for n in range(30)]


async def test_an_import_is_settled_by_reading_only_the_members_it_changed(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """Settling an import of 30 contacts onto a list of 3,000 reads the members updated
    while it ran (one page), not the whole list (7 pages) nor each contact (30)."""
    news = sim.store.add_list("News")
    for n in range(3000):
        sim.store.add_contact(f"member{n}@example.com", lists=[news])
    clock.advance(3600)  # the import comes an hour after the list was filled
    async with open_backend(sim) as backend:
        done = await _finish(backend, await _import(backend, _BULK, news))
        kinds, spent = await _settled(backend, done, _BULK, news)
    assert kinds == {"added"}
    assert spent == 1


async def test_a_queued_import_is_read_back_from_when_it_started(
    start_sim: SimStarter, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """An import that waited in the queue while 3,000 members of its list were updated is
    read back from when it started (one page), not from its POST (7 pages)."""
    # Started by the test below, never by the simulator's own runner.
    async with start_sim(activity_delay=3600.0, activity_jitter=0.0) as sim:
        news, other = sim.store.add_list("News"), sim.store.add_list("Other")
        members = [sim.store.add_contact(f"m{n}@example.com", lists=[news]) for n in range(3000)]
        async with open_backend(sim) as backend:
            posted = await _import(backend, _BULK, news)
            clock.advance(600)  # while it waits, another activity changes every member
            _change_every_member(sim.store, members, other)
            clock.advance(600)
            sim.store.run_activity(posted.id)
            done = await backend.poll(posted.id)
            assert done.finished
            kinds, spent = await _settled(backend, done, _BULK, news)
    assert kinds == {"added"}
    assert spent == 1


async def test_a_read_back_reads_one_second_beyond_the_activity_not_two(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """3,000 members of the list changed 1.5 s before an import started are not read back
    with its 30 contacts (one page, not 7): the window is its own seconds and one more."""
    news, other = sim.store.add_list("News"), sim.store.add_list("Other")
    members = [sim.store.add_contact(f"m{n}@example.com", lists=[news]) for n in range(3000)]
    clock.advance(3600.5)  # half a second into a second: the import starts on a whole one
    _change_every_member(sim.store, members, other)
    clock.advance(1.5)
    async with open_backend(sim) as backend:
        done = await _finish(backend, await _import(backend, _BULK, news))
        kinds, spent = await _settled(backend, done, _BULK, news)
    assert kinds == {"added"}
    assert spent == 1


async def test_a_read_back_finds_the_contacts_of_an_activity_whose_clock_runs_ahead(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """An activity whose stamps run 1.5 s ahead of its contacts' (clocks that disagree) is
    still settled from the list: its own window finds none of them, a wider one all."""
    news = sim.store.add_list("News")
    async with open_backend(sim) as backend:
        done = await _finish(backend, await _import(backend, _BULK, news))
        assert isinstance(done.document, V3Activity)
        raw = dict(done.document.raw)
        for stamp in ("created_at", "started_at", "completed_at", "updated_at"):
            raw[stamp] = _later(raw[stamp], 1.5)
        skewed = BulkActivity(done.id, done.state, done.status, document=V3Activity(raw))
        kinds, spent = await _settled(backend, skewed, _BULK, news)
    assert kinds == {"added"}
    assert spent == 2  # its own window, then the wider one: no contact looked up


async def test_appends_that_ran_together_are_read_back_together(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """Three appends of 200 contacts to one list, run in the same second: read back
    together, their 600 contacts take 2 pages (one by one: 1, 1 and 2 pages, each reading
    the others' contacts too); each gets its own ids, and a failed one none."""
    news, old = sim.store.add_list("News"), sim.store.add_list("Old")
    ids = [sim.store.add_contact(f"c{n:03d}@example.com", lists=[old]) for n in range(600)]
    clock.advance(3600)
    parts = [ids[0:200], ids[200:400], ids[400:600]]
    async with open_backend(sim) as backend:
        done = [await _finish(backend, await backend.append(part, [news])) for part in parts]
        failed = BulkActivity("gone", "failed", "failed")
        before = backend.stats().requests
        vouched = await backend.appended(
            [*zip(done, parts, strict=True), (failed, ids[:10])], [news]
        )
        together = backend.stats().requests - before
        before = backend.stats().requests
        for activity, part in zip(done, parts, strict=True):
            assert await backend.appended([(activity, part)], [news]) == [set(part)]
        one_by_one = backend.stats().requests - before
    assert vouched == [set(part) for part in parts] + [set()]
    assert (together, one_by_one) == (2, 4)


def _later(stamp: str, seconds: float) -> str:
    """An ISO stamp `seconds` later (with microseconds: the API's may carry a fraction)."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_encode_bulk_stays_under_four_megabytes(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A body that would reach 4,000,000 bytes (the simulator's silent cut) or more rows
    than the cap raises ActivityTooLargeError; half of it fits."""
    fields = {"FirstName": "F" * 50, "LastName": "L" * 50, "CompanyName": "C" * 50}
    rows = [(f"contact{n:06d}@example.com", fields) for n in range(22_000)]
    columns = ["FirstName", "LastName", "CompanyName"]
    async with open_backend(sim) as backend:
        with pytest.raises(ActivityTooLargeError, match="not under 4000000"):
            backend.encode_bulk(rows, ["l1"], columns, max_rows=40_000, max_bytes=4_000_000)
        half = backend.encode_bulk(
            rows[:11_000], ["l1"], columns, max_rows=40_000, max_bytes=4_000_000
        )
        assert len(half.body) < 4_000_000
        with pytest.raises(ActivityTooLargeError, match="over the cap of 100"):
            backend.encode_bulk(rows[:101], ["l1"], columns, max_rows=100, max_bytes=4_000_000)


async def test_migration_never_calls_destructive_endpoints(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A full migration (bulk and per contact) through the pipeline sends no sign_up_form,
    remove_list_memberships, contact_delete, list_delete nor any DELETE, and keeps lists."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    sim.store.add_contact("kept@example.com", lists=[old], first_name="Kim")
    sim.store.add_contact("out@example.com", lists=[old], permission="unsubscribed")
    sim.store.add_contact("solo@example.com", lists=[old], first_name="Solo")
    source = [{"email": f"m{n:02d}@example.com", "first_name": f"M{n}"} for n in range(30)]
    source += [{"email": "kept@example.com"}, {"email": "out@example.com"}]
    config = MigrationConfig(probe_size=1, poll_initial=0.02, poll_max=0.05)
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            report = await migrate(backend, source, lists=["News"], config=config)
            single = await migrate(
                backend,
                [{"email": "solo@example.com", "last_name": "Sole"}, {"email": "n@example.com"}],
                lists=["News"],
                config=config,
            )
        assert report.activities >= 1
        assert report.outcomes["bulk_added"] == 31  # the 30 new ones and kept@
        assert report.outcomes["skipped"] == 1  # the unsubscribed contact
        assert {k: n for k, n in single.outcomes.items() if n} == {"updated": 1, "created": 1}
        kept = await _state(backend, "kept@example.com")
        assert set(kept.lists) == {old, news}
        for n in range(30):
            assert news in (await _state(backend, f"m{n:02d}@example.com")).lists
        assert (await _state(backend, "out@example.com")).lists == (old,)
    solo = sim.store.contact_by_email("solo@example.com")
    assert solo is not None
    assert solo.lists == [old, news]
    assert solo.core == {"first_name": "Solo", "last_name": "Sole"}
    writes = sim.store.writes
    assert {w.endpoint for w in writes} >= {
        "activities.contacts_json_import",
        "contacts.update",
        "contacts.create",
    }
    assert sim.store.destructive_calls() == []
    assert not [w for w in writes if w.method == "DELETE" or "sign_up_form" in w.path]


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-contact"])
async def test_a_deleted_contact_is_skipped_and_never_revived(
    sim: RunningSimulator, open_backend: BackendOpener, bulk: bool
) -> None:
    """A contact deleted in the account ends `skipped` (`deleted`) on both paths and stays
    deleted: no PUT revives it, and the bulk path leaves it out of its import."""
    news = sim.store.add_list("News")
    gone = sim.store.add_contact("gone@example.com", deleted=True)
    source = [{"email": f"m{n:02d}@example.com"} for n in range(30)]
    source.append({"email": "gone@example.com", "first_name": "Back"})
    config = MigrationConfig(
        probe_size=1, poll_initial=0.02, poll_max=0.05, bulk_threshold=25 if bulk else None
    )
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            report = await migrate(backend, source, lists=["News"], config=config)

    assert report.outcomes["skipped"] == 1
    stored = sim.store.contact_by_email("gone@example.com")
    assert stored is not None
    assert stored.status == "deleted"
    assert news not in stored.lists
    assert not [w for w in sim.store.writes if gone in w.path]
    if bulk:
        assert report.outcomes["bulk_added"] == 30


def _unsubscribe(sim: RunningSimulator, contact_id: str, email: str) -> None:
    body = {
        "email_address": {"address": email, "permission_to_send": "unsubscribed"},
        "update_source": "Contact",
    }
    sim.store.update_contact(contact_id, body)


async def test_the_untouchable_contacts_are_read_whole_once_then_only_what_changed(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """The deleted and unsubscribed contacts are read whole once (three pages), then only
    those changed since that read (one page): a contact unsubscribed and one deleted
    meanwhile are found, the earlier ones kept, an active one never listed."""
    for n in range(1100):
        sim.store.add_contact(f"out{n:04d}@example.com", permission="unsubscribed")
    sim.store.add_contact("gone@example.com", deleted=True)
    later = sim.store.add_contact("later@example.com")
    doomed = sim.store.add_contact("doomed@example.com")
    sim.store.add_contact("stays@example.com")
    clock.advance(3600)
    async with open_backend(sim) as backend:
        await backend.verify()  # an answer: the server's time
        sent = backend.stats().requests
        first = await backend.untouchable_contacts()
        assert backend.stats().requests - sent == 3
        assert len(first) == 1101
        assert first["gone@example.com"] == "deleted"
        assert first["out0000@example.com"] == "opted_out"

        clock.advance(60)
        _unsubscribe(sim, later, "later@example.com")
        sim.store.delete_contact(doomed)
        sent = backend.stats().requests
        second = await backend.untouchable_contacts()
        assert backend.stats().requests - sent == 1
        assert second == first | {
            "later@example.com": "opted_out",
            "doomed@example.com": "deleted",
        }
        assert "stays@example.com" not in second


async def test_the_untouchable_contacts_are_read_whole_each_time_without_the_servers_time(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """When the server gives no time, every read of the deleted and unsubscribed contacts is
    whole (never "nothing changed" on a guess)."""
    for n in range(600):
        sim.store.add_contact(f"out{n:04d}@example.com", permission="unsubscribed")
    clock.advance(3600)
    async with open_backend(sim) as backend:
        backend.client.server_time = lambda: None  # type: ignore[method-assign]
        await backend.verify()
        sent = backend.stats().requests
        assert len(await backend.untouchable_contacts()) == 600
        assert len(await backend.untouchable_contacts()) == 600
        assert backend.stats().requests - sent == 4


def test_two_reads_have_one_version_only_when_the_documents_are_the_same() -> None:
    """A read's version equals another's when the contact is the same, key order aside, and
    differs after any change: a list, a permission, a field."""
    from engine.backend.v3 import _json

    doc: dict[str, Any] = {
        "contact_id": "c1",
        "email_address": {"address": "a@x.io", "permission_to_send": "implicit"},
        "list_memberships": ["l1"],
        "first_name": "Ann",
    }
    same = dict(reversed(list(json.loads(json.dumps(doc)).items())))
    version = _json.contact_state(doc).version
    assert version == _json.contact_state(same).version
    changes = [
        {**doc, "list_memberships": ["l1", "l2"]},
        {**doc, "email_address": {"address": "a@x.io", "permission_to_send": "unsubscribed"}},
        {**doc, "first_name": "Anne"},
    ]
    for changed in changes:
        assert version != _json.contact_state(changed).version
