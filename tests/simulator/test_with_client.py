"""The simulator's quirks seen through the engine's own client (`Account`) over https:
what a user of the client meets, with the errors and messages the client gives."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy, encode_add_contacts
from engine.backend.v1.codec import merge_contact_lists
from engine.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConflictError,
    DoNotMailError,
    NotFoundError,
    QuotaExhaustedError,
    ThrottledError,
)
from engine.simulator import RunningSimulator, SimulatorConfig, serve

ID_BASE = "http://api.constantcontact.com/ws/customers/demo"


def client(
    sim: RunningSimulator, *, password: str | None = None, base_url: str | None = None, **kw: object
) -> Account:
    """An `Account` on `sim`: no rate limit, two quick attempts per request."""
    config = sim.config
    return Account(
        Credentials(config.username, config.api_key, password or config.password),
        base_url=base_url or sim.base_url,
        ca_file=sim.ca_path,
        governor=RateGovernor(rate=None, concurrency=16),
        retry=RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.02, wait_jitter=0),
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(**overrides: object) -> AsyncIterator[RunningSimulator]:
    """A simulator on 127.0.0.1, port 0, with some settings changed."""
    config = dataclasses.replace(
        SimulatorConfig(host="127.0.0.1", port=0, activity_delay=0.02, seed=3), **overrides
    )
    async with serve(config) as sim:
        yield sim


async def test_service_document_and_the_ca_are_what_the_client_trusts(
    simulator: RunningSimulator,
) -> None:
    """The client proves its credentials on the service document over https with the CA."""
    async with client(simulator) as account:
        hrefs = await account.verify()
    assert hrefs == ("/ws/customers/demo/lists", "/ws/customers/demo/activities")
    assert simulator.ca_path is not None
    ssl.create_default_context(cafile=str(simulator.ca_path))  # a loadable CA file


async def test_wrong_password_is_an_authentication_error_naming_the_login_form(
    simulator: RunningSimulator,
) -> None:
    """A 401 becomes `AuthenticationError` whose message explains APIKEY%username."""
    async with client(simulator, password="wrong-password") as account:
        with pytest.raises(AuthenticationError, match="APIKEY%username") as caught:
            await account.verify()
    assert "wrong-password" not in str(caught.value)


async def test_service_document_without_the_trailing_slash_is_403_explained(
    simulator: RunningSimulator,
) -> None:
    """The real server's 403 without the trailing slash reaches the user as a clear cause."""
    async with client(simulator) as account:
        with pytest.raises(AccessDeniedError, match="must end with a slash"):
            await account._send(  # the one way to send the slash-less URL the client avoids
                "GET", simulator.base_url.rstrip("/"), kind="service", parse=lambda b: b
            )


async def test_plain_http_is_refused_and_explained() -> None:
    """Plain http to the simulator's http listener is a 403 that names https."""
    async with running(http_port=0) as sim:
        assert sim.http_base_url is not None
        account = client(sim, base_url=sim.http_base_url, allow_http=True)
        async with account:
            with pytest.raises(AccessDeniedError, match="https only"):
                await account.verify()


async def test_lists_are_keyed_by_id_not_sort_order(simulator: RunningSimulator) -> None:
    """System lists come first; every user list's SortOrder differs from its id."""
    store = simulator.store
    ids = [store.create_list(f"List {n}") for n in range(3)]
    async with client(simulator) as account:
        lists = await account.lists()
        resolved = await account.resolve_lists(["List 1"])
    assert [item.key for item in lists[:3]] == ["active", "do-not-mail", "removed"]
    user = lists[3:]
    assert [int(item.key) for item in user] == ids
    assert all(item.sort_order != int(item.key) for item in user)
    assert resolved["List 1"].id == f"{ID_BASE}/lists/{ids[1]}"


async def test_lists_feed_is_followed_across_pages(simulator: RunningSimulator) -> None:
    """120 lists take three pages of 50; the client follows `next` to every one."""
    for n in range(120):
        simulator.store.create_list(f"L{n:03d}")
    async with client(simulator) as account:
        lists = await account.lists()
    assert len([item for item in lists if not item.is_system]) == 120


async def test_duplicate_list_name_is_a_conflict(simulator: RunningSimulator) -> None:
    """Creating a list whose name exists is a 409 `ConflictError`; a new name is created."""
    simulator.store.create_list("News")
    async with client(simulator) as account:
        created = await account.create_list("Promo")
        with pytest.raises(ConflictError):
            await account.create_list("News")
    assert created.name == "Promo"
    assert simulator.store.list_by_name("Promo") is not None


async def test_search_lower_cases_and_finds_any_status(simulator: RunningSimulator) -> None:
    """Mixed-case queries are lower-cased by the client; Removed and Do Not Mail are found."""
    store = simulator.store
    a = store.create_list("A")
    store.add_contact("jane@example.com", lists=[a])
    store.add_contact("gone@example.com", status="Removed")
    store.add_contact("out@example.com", status="Do Not Mail")
    emails = ["Jane@Example.COM", "gone@example.com", "out@example.com", "nobody@example.com"]
    async with client(simulator) as account:
        found = await account.search_contacts(emails)
    assert {e: s.status for e, s in found.items()} == {
        "jane@example.com": "Active",
        "gone@example.com": "Removed",
        "out@example.com": "Do Not Mail",
    }


async def test_search_miss_as_500_is_read_as_not_found() -> None:
    """With the simulator answering 500 on a miss, the client reports no contact found."""
    async with running(search_miss_500=True) as sim, client(sim) as account:
        assert await account.search_contacts(["nobody@example.com"]) == {}


async def test_create_contact_then_409_in_any_status(simulator: RunningSimulator) -> None:
    """POST returns the new id; the same email again, in any case, is a 409."""
    store = simulator.store
    a = store.create_list("A")
    store.add_contact("out@example.com", status="Do Not Mail")
    async with client(simulator) as account:
        created = await account.create_contact("New@Example.com", [f"{ID_BASE}/lists/{a}"])
        with pytest.raises(ConflictError):
            await account.create_contact("new@example.com", [f"{ID_BASE}/lists/{a}"])
        with pytest.raises(ConflictError):
            await account.create_contact("out@example.com", [f"{ID_BASE}/lists/{a}"])
    stored = store.contact_by_email("new@example.com")
    assert stored is not None
    assert created == f"{ID_BASE}/contacts/{stored.id}"
    assert stored.lists == {a}


async def test_put_with_only_the_new_list_shrinks_the_other_list(
    simulator: RunningSimulator,
) -> None:
    """The trap is real: a PUT naming only the new list removes the contact from list A."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    contact_id = store.add_contact("jane@example.com", lists=[a])
    async with client(simulator) as account:
        entry = await account.get_contact(str(contact_id))
        naive = entry.raw.replace(f"{ID_BASE}/lists/{a}".encode(), f"{ID_BASE}/lists/{b}".encode())
        await account.put_contact(entry, naive)
    assert store.members(a) == set()
    assert store.members(b) == {contact_id}


async def test_get_union_put_keeps_every_list(simulator: RunningSimulator) -> None:
    """The recipe: GET, union of lists, PUT the whole entry back: A keeps its member."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    contact_id = store.add_contact("jane@example.com", lists=[a], fields={"FirstName": "Jane"})
    async with client(simulator) as account:
        entry = await account.get_contact(str(contact_id))
        body = merge_contact_lists(entry, {str(b): f"{ID_BASE}/lists/{b}"})
        assert body is not None
        await account.put_contact(entry, body)
        after = await account.get_contact(str(contact_id))
    assert after.list_keys == {str(a), str(b)}
    stored = store.contact_by_email("jane@example.com")
    assert stored is not None
    assert stored.fields.get("FirstName") == "Jane"


async def test_do_not_mail_put_and_unknown_contact(simulator: RunningSimulator) -> None:
    """Adding lists to a Do Not Mail contact is `DoNotMailError`; an unknown id is 404."""
    store = simulator.store
    a = store.create_list("A")
    contact_id = store.add_contact("out@example.com", status="Do Not Mail")
    async with client(simulator) as account:
        entry = await account.get_contact(str(contact_id))
        body = merge_contact_lists(entry, {str(a): f"{ID_BASE}/lists/{a}"})
        assert body is not None
        with pytest.raises(DoNotMailError):
            await account.put_contact(entry, body)
        with pytest.raises(NotFoundError):
            await account.get_contact("99999")
    assert store.members(a) == set()


async def test_members_feed_pages(simulator: RunningSimulator) -> None:
    """The members feed of a 120-member list is read whole across pages."""
    store = simulator.store
    a = store.create_list("A")
    for n in range(120):
        store.add_contact(f"m{n}@example.com", lists=[a])
    async with client(simulator) as account:
        members = [m.email async for m in account.list_members(str(a))]
    assert sorted(members) == sorted(f"m{n}@example.com" for n in range(120))


async def test_activity_appends_and_reports_do_not_mail_lines(
    simulator: RunningSimulator,
) -> None:
    """An ADD_CONTACTS activity keeps other lists, reaches COMPLETE, and reports the Do Not
    Mail row as a line error with its line number (the header is line 1)."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    kept = store.add_contact("kept@example.com", lists=[a])
    store.add_contact("out@example.com", status="Do Not Mail")
    body = encode_add_contacts(
        [{"EmailAddress": "kept@example.com"}, {"EmailAddress": "out@example.com"}]
        + [{"EmailAddress": f"n{i}@example.com", "FirstName": "N, Jr."} for i in range(30)],
        [f"{ID_BASE}/lists/{b}"],
        fields=["FirstName"],
    )
    async with client(simulator) as account:
        activity = await account.submit_activity(body)
        while not activity.finished:
            await anyio.sleep(0.02)
            activity = await account.get_activity(activity.key)
    assert activity.status == "COMPLETE"
    assert [(e.line_number, e.email) for e in activity.errors] == [(3, "out@example.com")]
    assert store.members(a) == {kept}
    assert kept in store.members(b)
    stored = store.contact_by_email("n0@example.com")
    assert stored is not None
    assert stored.fields.get("FirstName") == "N, Jr."


async def test_throttle_is_retried_and_quota_is_fatal() -> None:
    """A 429 throttle is a retryable `ThrottledError`; an exhausted daily quota stops."""
    async with running(rate_limit=1.0, rate_burst=1, throttle_status=429) as sim:
        account = Account(
            Credentials("demo", "demo-key", "demo-password"),
            base_url=sim.base_url,
            ca_file=sim.ca_path,
            governor=RateGovernor(rate=None, concurrency=4),
            retry=RetryPolicy(attempts=1),
        )
        async with account:
            await account.verify()
            with pytest.raises(ThrottledError):
                await account.verify()
    async with running(daily_quota=1) as sim, client(sim) as account:
        await account.verify()
        with pytest.raises(QuotaExhaustedError, match="quota"):
            await account.verify()
