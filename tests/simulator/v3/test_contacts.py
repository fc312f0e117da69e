"""Contacts: search and paging, the deleted-contact trap, POST 409, the PUT trap and the
safe recipe, sign_up_form's consent side effects, DELETE, and the write log."""

from __future__ import annotations

from typing import Any

import aiohttp

from engine.simulator.v3 import AccountStore, RunningSimulator

from .conftest import FakeClock, V3Starter, get_json, open_session, post_json, put_json

Served = tuple[RunningSimulator, aiohttp.ClientSession]


def new_contact(email: str, lists: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "create_source": "Account",
        "email_address": {"address": email, "permission_to_send": "implicit"},
        "list_memberships": lists,
        **extra,
    }


async def find(api: aiohttp.ClientSession, email: str, **params: str) -> list[dict[str, Any]]:
    body = await get_json(api, "contacts", email=email, include="list_memberships", **params)
    contacts: list[dict[str, Any]] = body["contacts"]
    return contacts


async def test_search_is_exact_and_case_insensitive(v3: Served) -> None:
    """`?email=` finds one exact address (any case by default), subresources only when
    included; two `email` parameters are refused."""
    sim, api = v3
    news = sim.store.add_list("News")
    sim.store.add_contact("Ann@Example.com", lists=[news], first_name="Ann")
    sim.store.add_contact("ann@example.com.au")
    found = await find(api, "ann@example.com")
    assert [c["email_address"]["address"] for c in found] == ["Ann@Example.com"]
    assert found[0]["list_memberships"] == [news]
    plain = await get_json(api, "contacts", email="ANN@example.com")
    assert "list_memberships" not in plain["contacts"][0]
    assert plain["contacts"][0]["first_name"] == "Ann"
    async with api.get("contacts?email=a@example.com&email=b@example.com") as response:
        assert response.status == 400


async def test_deleted_contact_trap(v3: Served) -> None:
    """A search without status=all misses a deleted contact that POST then refuses with 409
    naming it; status=all finds it."""
    sim, api = v3
    contact_id = sim.store.add_contact("gone@example.com", deleted=True)
    assert await find(api, "gone@example.com") == []
    status, body = await post_json(api, "contacts", new_contact("gone@example.com", []))
    assert status == 409
    assert body == [
        {
            "error_key": "contacts.api.conflict",
            "error_message": f"Validation failed: Email already exists for contact {contact_id}",
        }
    ]
    found = await find(api, "gone@example.com", status="all")
    assert [c["contact_id"] for c in found] == [contact_id]
    assert "deleted_at" in found[0]


async def test_post_needs_create_source_and_conflicts_on_unsubscribed(v3: Served) -> None:
    """POST without create_source is 400 `contacts.api.validation.error`; an unsubscribed
    contact's email is 409; a new one is 201 implicit with opt_in_source Account."""
    sim, api = v3
    status, body = await post_json(api, "contacts", {"email_address": {"address": "x@example.com"}})
    assert status == 400
    assert body[0]["error_key"] == "contacts.api.validation.error"
    sim.store.add_contact("out@example.com", permission="unsubscribed")
    assert (await post_json(api, "contacts", new_contact("out@example.com", [])))[0] == 409
    _, created = await post_json(api, "contacts", new_contact("new@example.com", []), expect=201)
    assert created["email_address"]["permission_to_send"] == "implicit"
    assert created["email_address"]["opt_in_source"] == "Account"


async def test_put_with_lists_replaces_them_the_trap(v3: Served) -> None:
    """A PUT whose list_memberships holds only the new list removes the contact from the
    others: the replace-on-PUT trap is real."""
    sim, api = v3
    old, new = sim.store.add_list("Old"), sim.store.add_list("New")
    contact_id = sim.store.add_contact("t@example.com", lists=[old], first_name="T")
    body = {
        "update_source": "Account",
        "email_address": {"address": "t@example.com"},
        "list_memberships": [new],
    }
    await put_json(api, f"contacts/{contact_id}", body, expect=200)
    assert sim.store.members(old) == set()
    assert (await find(api, "t@example.com"))[0]["list_memberships"] == [new]


async def test_get_union_put_recipe_keeps_every_list(v3: Served) -> None:
    """GET → union → PUT resending the core properties and only list_memberships keeps the
    old lists, the other subresources and every core property."""
    sim, api = v3
    old, new = sim.store.add_list("Old"), sim.store.add_list("New")
    created = await post_json(
        api,
        "contacts",
        new_contact(
            "r@example.com",
            [old],
            first_name="R",
            job_title="Chef",
            phone_numbers=[{"phone_number": "555-0100", "kind": "home"}],
        ),
        expect=201,
    )
    contact_id = created[1]["contact_id"]
    current = (await find(api, "r@example.com"))[0]
    body = {
        key: current[key]
        for key in ("email_address", "first_name", "last_name", "job_title", "company_name")
        if key in current
    }
    body.update(update_source="Account", list_memberships=[*current["list_memberships"], new])
    await put_json(api, f"contacts/{contact_id}", body, expect=200)
    after = await get_json(api, f"contacts/{contact_id}", include="list_memberships,phone_numbers")
    assert after["list_memberships"] == [old, new]
    assert after["first_name"] == "R"
    assert after["job_title"] == "Chef"
    assert after["phone_numbers"][0]["phone_number"] == "555-0100"
    assert after["update_source"] == "Account"


async def test_put_nulls_omitted_core_properties_and_keeps_subresources(v3: Served) -> None:
    """Core properties left out of a PUT become null (absent); omitted subresources stay."""
    sim, api = v3
    news = sim.store.add_list("News")
    contact_id = sim.store.add_contact("n@example.com", lists=[news], first_name="N", last_name="M")
    body = {"update_source": "Account", "email_address": {"address": "n@example.com"}}
    _, answer = await put_json(api, f"contacts/{contact_id}", body, expect=200)
    assert "first_name" not in answer
    assert "last_name" not in answer
    assert answer["list_memberships"] == [news]


async def test_put_rules(v3: Served) -> None:
    """PUT needs update_source and email_address (400), at most 50 lists (400), an address
    that is not another contact's (409), and a known id (404)."""
    sim, api = v3
    lists = [sim.store.add_list(f"L{i}") for i in range(51)]
    contact_id = sim.store.add_contact("p@example.com")
    sim.store.add_contact("q@example.com")
    email = {"address": "p@example.com"}
    path = f"contacts/{contact_id}"
    assert (await put_json(api, path, {"email_address": email}))[0] == 400
    assert (await put_json(api, path, {"update_source": "Account"}))[0] == 400
    too_many = {"update_source": "Account", "email_address": email, "list_memberships": lists}
    assert (await put_json(api, path, too_many))[0] == 400
    taken = {"update_source": "Account", "email_address": {"address": "Q@example.com"}}
    assert (await put_json(api, path, taken))[0] == 409
    unknown = "00000000-0000-1000-8000-000000000000"
    assert (await put_json(api, f"contacts/{unknown}", too_many | {"list_memberships": []}))[
        0
    ] == 404


async def test_put_revives_a_deleted_contact(v3: Served) -> None:
    """PUT with update_source Account revives a deleted contact, without its old lists."""
    sim, api = v3
    old, new = sim.store.add_list("Old"), sim.store.add_list("New")
    contact_id = sim.store.add_contact("back@example.com", lists=[old])
    async with api.delete(f"contacts/{contact_id}") as response:
        assert response.status == 204
    body = {
        "update_source": "Account",
        "email_address": {"address": "back@example.com"},
        "list_memberships": [new],
    }
    _, answer = await put_json(api, f"contacts/{contact_id}", body, expect=200)
    assert "deleted_at" not in answer
    assert answer["list_memberships"] == [new]
    assert [c["contact_id"] for c in await find(api, "back@example.com")] == [contact_id]


async def test_put_cannot_add_lists_to_an_unsubscribed_contact(start_v3: V3Starter) -> None:
    """By default lists added by PUT to an unsubscribed contact are dropped and it stays
    unsubscribed; with `unsubscribed_list_add="reject_400"` the PUT is refused."""
    for rule, status in (("ignore", 200), ("reject_400", 400)):
        async with start_v3(unsubscribed_list_add=rule) as (sim, api):
            news = sim.store.add_list("News")
            contact_id = sim.store.add_contact("u@example.com", permission="unsubscribed")
            body = {
                "update_source": "Account",
                "email_address": {"address": "u@example.com", "permission_to_send": "implicit"},
                "list_memberships": [news],
            }
            assert (await put_json(api, f"contacts/{contact_id}", body))[0] == status
            contact = sim.store.get_contact(contact_id)
            assert contact.lists == []
            assert contact.permission == "unsubscribed"


async def test_interleaved_foreign_write_is_lost_by_a_put_with_lists(start_v3: V3Starter) -> None:
    """With `interleave_rate=1` a foreign sign-up lands between GET and PUT; a PUT carrying
    list_memberships then removes it (the lost update the engine must accept or avoid)."""
    async with start_v3(interleave_rate=1.0) as (sim, api):
        news = sim.store.add_list("News")
        contact_id = sim.store.add_contact("i@example.com")
        body = {
            "update_source": "Account",
            "email_address": {"address": "i@example.com"},
            "list_memberships": [news],
        }
        _, answer = await put_json(api, f"contacts/{contact_id}", body, expect=200)
        assert answer["list_memberships"] == [news]
        foreign = sim.store.list_by_name("Interleaved sign-ups")
        assert foreign is not None
        assert sim.store.members(foreign.id) == set()


async def test_sign_up_form_makes_contacts_explicit_and_is_logged(v3: Served) -> None:
    """sign_up_form appends lists, re-subscribes an unsubscribed contact as explicit (200
    `updated`), creates new ones explicit (201 `created`), and every call is logged."""
    sim, api = v3
    old, new = sim.store.add_list("Old"), sim.store.add_list("New")
    contact_id = sim.store.add_contact("s@example.com", lists=[old], permission="unsubscribed")
    _, answer = await post_json(
        api,
        "contacts/sign_up_form",
        {"email_address": "s@example.com", "list_memberships": [new]},
        expect=200,
    )
    assert answer == {"contact_id": contact_id, "action": "updated"}
    contact = sim.store.get_contact(contact_id)
    assert contact.permission == "explicit"
    assert contact.lists == [old, new]
    _, created = await post_json(
        api,
        "contacts/sign_up_form",
        {"email_address": "fresh@example.com", "list_memberships": [new]},
        expect=201,
    )
    assert created["action"] == "created"
    assert sim.store.get_contact(created["contact_id"]).opt_in_source == "Contact"
    assert len(sim.store.calls("contacts.sign_up_form")) == 2
    assert (await post_json(api, "contacts/sign_up_form", {"email_address": "x@e.com"}))[0] == 400


async def test_delete_strips_memberships_and_is_logged(v3: Served) -> None:
    """DELETE answers 204, strips every list and sets deleted_at; the write log names it."""
    sim, api = v3
    news = sim.store.add_list("News")
    contact_id = sim.store.add_contact("d@example.com", lists=[news])
    async with api.delete(f"contacts/{contact_id}") as response:
        assert response.status == 204
    assert sim.store.members(news) == set()
    body = await get_json(api, f"contacts/{contact_id}", include="list_memberships")
    assert body["list_memberships"] == []
    assert body["email_address"]["opt_out_source"] == "Account"
    assert len(body["deleted_at"]) == 10
    (record,) = sim.store.destructive_calls()
    assert (record.method, record.endpoint, record.status) == ("DELETE", "contacts.delete", 204)


async def test_write_log_names_each_contact_endpoint(v3: Served) -> None:
    """Every write request is logged with method, path, endpoint name and status, also over
    `/_sim/writes`."""
    sim, api = v3
    _, created = await post_json(api, "contacts", new_contact("w@example.com", []), expect=201)
    path = f"contacts/{created['contact_id']}"
    await put_json(
        api,
        path,
        {"update_source": "Account", "email_address": {"address": "w@example.com"}},
        expect=200,
    )
    assert [(w.endpoint, w.status) for w in sim.store.writes] == [
        ("contacts.create", 201),
        ("contacts.update", 200),
    ]
    assert sim.store.destructive_calls() == []
    async with open_session(sim, base=sim.origin) as session, session.get("/_sim/writes") as r:
        writes = (await r.json())["writes"]
    assert writes[1] == {
        "method": "PUT",
        "path": f"/v3/{path}",
        "endpoint": "contacts.update",
        "status": 200,
    }


async def test_cursor_paging_and_status_filters(v3: Served) -> None:
    """`limit` pages follow `_links.next.href` to the end (`_links: {}`); `include_count`
    counts every match; `limit` outside 1-500 is 400; `status` filters by permission."""
    sim, api = v3
    news = sim.store.add_list("News")
    emails = [f"c{i:02d}@example.com" for i in range(7)]
    for email in emails:
        sim.store.add_contact(email, lists=[news])
    sim.store.add_contact("out@example.com", permission="unsubscribed")
    seen: list[str] = []
    page = await get_json(api, "contacts", lists=news, limit="3", include_count="true")
    assert page["contacts_count"] == 7
    while True:
        seen += [c["email_address"]["address"] for c in page["contacts"]]
        href = page["_links"].get("next", {}).get("href")
        if href is None:
            assert page["_links"] == {}
            break
        assert href.startswith("/v3/contacts?cursor=")
        page = await get_json(api, sim.origin + href)
    assert seen == emails
    for bad in ("0", "501", "x"):
        await get_json(api, "contacts", limit=bad, expect=400)
    unsubscribed = await get_json(api, "contacts", status="unsubscribed")
    assert [c["email_address"]["address"] for c in unsubscribed["contacts"]] == ["out@example.com"]
    await get_json(api, "contacts", status="gone", expect=400)


async def test_get_contact_by_id(v3: Served) -> None:
    """`GET /contacts/{id}` answers 200 with the resource, 404 for a malformed or unknown id."""
    sim, api = v3
    contact_id = sim.store.add_contact("g@example.com")
    assert (await get_json(api, f"contacts/{contact_id}"))["contact_id"] == contact_id
    body = await get_json(api, "contacts/12", expect=404)
    assert body == [
        {
            "error_key": "contacts.api.not_found",
            "error_message": "contact_id is in an invalid format.",
        }
    ]


def test_store_email_index_follows_a_changed_address() -> None:
    """A PUT that changes the address frees the old one for a new contact."""
    store = AccountStore()
    contact_id = store.add_contact("old@example.com")
    store.update_contact(
        contact_id, {"update_source": "Account", "email_address": {"address": "new@example.com"}}
    )
    assert store.contact_by_email("old@example.com") is None
    assert store.contact_by_email("NEW@example.com") is store.get_contact(contact_id)
    store.add_contact("old@example.com")


def test_paging_a_list_gives_each_member_once_and_checks_each_row_as_it_is_now() -> None:
    """Pages after the first of a query come from the rows its first page sorted: every
    member once, in order; a member that left the list meanwhile is not returned."""
    store = AccountStore()
    news = store.add_list("News")
    ids = [store.add_contact(f"m{n:04d}@example.com", lists=[news]) for n in range(1_200)]
    page = store.search_contacts(lists=[news], statuses=["all"], limit=500)
    seen = [c.id for c in page.contacts]
    assert page.total == 1_200
    gone = store.get_contact(ids[700])
    store.update_contact(  # leaves News before the second page is read
        gone.id,
        {
            "update_source": "Account",
            "email_address": {"address": gone.email},
            "list_memberships": [],
        },
    )
    while page.next_key is not None:
        page = store.search_contacts(lists=[news], statuses=["all"], limit=500, after=page.next_key)
        seen += [c.id for c in page.contacts]
    assert seen == [i for i in ids if i != gone.id]


def _changed_since(
    store: AccountStore, bound: float, lists: list[str] | None = None, until: float | None = None
) -> set[str]:
    """The emails an `updated_after` search of `bound` (and `updated_before` of `until`)
    finds (every status, every page)."""
    seen: set[str] = set()
    after = None
    ranges = {"updated_after": bound} | ({} if until is None else {"updated_before": until})
    while True:
        page = store.search_contacts(
            statuses=["all"], lists=lists or [], ranges=ranges, after=after
        )
        seen |= {c.email or "" for c in page.contacts}
        if page.next_key is None:
            return seen
        after = page.next_key


def test_updated_after_finds_what_each_kind_of_write_stamped() -> None:
    """An `updated_after` search finds exactly the contacts written since its bound, by
    every kind of write: a PUT, a sign-up form, a DELETE, an import and a list append."""
    clock = FakeClock()
    store = AccountStore(clock=clock)
    news = store.add_list("News")
    ids = {n: store.add_contact(f"{n}@example.com") for n in ("put", "form", "gone", "imp", "app")}
    store.add_contact("still@example.com", lists=[news])
    clock.advance(60)
    bound = clock() - 1
    assert _changed_since(store, bound) == set()
    store.update_contact(
        ids["put"], {"update_source": "Account", "email_address": {"address": "put@example.com"}}
    )
    store.sign_up_form({"email_address": "form@example.com", "list_memberships": [news]})
    store.delete_contact(ids["gone"])
    imported = store.submit_json_import(
        {
            "import_data": [{"email": "imp@example.com"}, {"email": "new@example.com"}],
            "list_ids": [news],
        }
    )
    store.run_activity(imported.id)
    appended = store.submit_list_memberships(
        {"source": {"contact_ids": [ids["app"]]}, "list_ids": [news]}, remove=False
    )
    store.run_activity(appended.id)
    everyone = {f"{n}@example.com" for n in ("put", "form", "gone", "imp", "app", "new")}
    assert _changed_since(store, bound) == everyone
    assert _changed_since(store, bound, [news]) == everyone - {
        "put@example.com",
        "gone@example.com",
    }
    assert _changed_since(store, clock() + 1) == set()


def test_an_updated_range_finds_the_contacts_stamped_within_it_and_as_they_are_now() -> None:
    """`updated_after` with `updated_before` finds the contacts whose stamp is within the
    range (bounds excluded): not those stamped after it, nor one stamped within it and
    again after it; the same as a scan of every contact finds."""
    clock = FakeClock()
    start = clock()
    store = AccountStore(clock=clock)
    news = store.add_list("News")
    for n in range(3):
        clock.advance(10)
        store.add_contact(f"c{n}@example.com")  # stamped at start + 10, 20, 30
    again = store.add_contact("again@example.com")  # at start + 30
    clock.advance(10)
    store.add_contact("late@example.com")  # at start + 40
    assert _changed_since(store, start + 10, until=start + 40) == {
        "c1@example.com",
        "c2@example.com",
        "again@example.com",
    }
    clock.advance(10)  # start + 50: stamped again, after the range
    store.update_contact(
        again,
        {
            "update_source": "Account",
            "email_address": {"address": "again@example.com"},
            "list_memberships": [news],
        },
    )
    within = {"c1@example.com", "c2@example.com"}
    assert _changed_since(store, start + 10, until=start + 40) == within
    scanned = AccountStore.from_json(store.to_json(), clock=clock)
    clock.now = start  # a stamp before the last turns the index off: every contact scanned
    scanned.add_contact("back@example.com")
    assert _changed_since(scanned, start + 10, until=start + 40) == within
    assert _changed_since(store, start + 10) == within | {"late@example.com", "again@example.com"}


def test_updated_after_searches_survive_a_clock_set_back_and_a_reload() -> None:
    """Stamps earlier than the one before (a clock set back) and a store loaded from its
    state leave `updated_after` searches finding what a scan of every contact finds."""
    clock = FakeClock()
    start = clock()
    store = AccountStore(clock=clock)
    store.add_contact("first@example.com")
    clock.advance(100)
    store.add_contact("later@example.com")
    clock.now = start + 20  # set back: these stamps come before the last one
    store.add_contact("back@example.com")
    clock.now = start + 60
    store.add_contact("ahead@example.com")
    assert _changed_since(store, start + 40) == {"later@example.com", "ahead@example.com"}
    loaded = AccountStore.from_json(store.to_json(), clock=clock)
    assert _changed_since(loaded, start + 40) == {"later@example.com", "ahead@example.com"}
    assert _changed_since(loaded, start + 10) == {
        "later@example.com",
        "ahead@example.com",
        "back@example.com",
    }
    clock.now = start + 200
    loaded.add_contact("fourth@example.com")
    assert _changed_since(loaded, start + 150) == {"fourth@example.com"}
