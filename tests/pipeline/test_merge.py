"""`decide`: what a fetched contact needs, from full entries as the simulator renders them."""

from __future__ import annotations

from typing import Any

import pytest

from engine.backend import ContactState, V1Backend
from engine.backend.v1 import Account, Credentials, contact_state
from engine.backend.v1.codec import parse_contact_entry
from engine.backend.v1.records import ContactEntry, ContactList
from engine.pipeline import merge
from engine.pipeline.merge import Write
from engine.pipeline.models import Contact, Outcome
from engine.simulator import AccountStore
from engine.simulator.v1._xml import Renderer

ID_BASE = "http://api.constantcontact.com/ws/customers/demo/lists/"


def v1_backend(id_base: str = ID_BASE) -> V1Backend:
    """A v1 backend (never opened: `decide` sends nothing) that knows lists 1, 2 and 3."""
    account = Account(Credentials("demo", "key", "password"))
    lists = [
        ContactList(f"{id_base}{i}", str(i), name) for i, name in ((1, "A"), (2, "B"), (3, "C"))
    ]
    return V1Backend(account, lists)


BACKEND = v1_backend()


def decide(contact: Contact, state: ContactState | None, **settings: Any) -> Write | Outcome:
    """`merge.decide` with the v1 backend."""
    return merge.decide(contact, state, backend=settings.pop("backend", BACKEND), **settings)


def body_of(write: Write) -> bytes:
    """The PUT body of an update."""
    assert write.update is not None
    assert isinstance(write.update.body, bytes)
    return write.update.body


@pytest.fixture
def store() -> AccountStore:
    """An account with lists 1 (A), 2 (B) and 3 (C)."""
    account = AccountStore()
    for name in ("A", "B", "C"):
        account.create_list(name)
    return account


def raw_entry_of(store: AccountStore, email: str) -> ContactEntry:
    """The full entry of a stored contact, as `GET contacts/{id}` sends it, parsed."""
    contact = store.contact_by_email(email)
    assert contact is not None
    body = Renderer("demo", "api.constantcontact.com").contact_entry(contact, store.now())
    return parse_contact_entry(body)


def entry_of(store: AccountStore, email: str) -> ContactState:
    """The stored contact as the v1 backend reads it."""
    return contact_state(raw_entry_of(store, email))


def contact(*list_ids: int, email: str = "jane@example.com") -> Contact:
    """A contact to migrate onto the given lists."""
    return Contact(email, tuple(str(i) for i in list_ids), {}, [7, 9])


def write_of(result: Write | Outcome) -> Write:
    """The result, which must be a write."""
    assert isinstance(result, Write), result
    return result


def test_new_contact_is_posted() -> None:
    """No entry: a POST (no body to build) that adds every target."""
    result = write_of(decide(contact(1, 2), None, skip_removed=False))
    assert result.update is None
    assert result.added == ("1", "2")


@pytest.mark.parametrize(
    "skip_removed", [pytest.param(False, id="default"), pytest.param(True, id="skip-removed")]
)
def test_do_not_mail_is_skipped(store: AccountStore, skip_removed: bool) -> None:
    """A Do Not Mail contact is `skipped` as `opted-out` with its rows, and nothing is sent."""
    store.add_contact("jane@example.com", status="Do Not Mail")
    result = decide(contact(1), entry_of(store, "jane@example.com"), skip_removed=skip_removed)
    assert result == Outcome(
        "jane@example.com", "skipped", (7, 9), "opted-out", (), "contact", ("1",), ()
    )


def test_removed_is_skipped_with_skip_removed(store: AccountStore) -> None:
    """With `skip_removed`, a Removed contact is `skipped` as `removed`."""
    store.add_contact("jane@example.com", status="Removed")
    result = decide(contact(1), entry_of(store, "jane@example.com"), skip_removed=True)
    assert result == Outcome(
        "jane@example.com", "skipped", (7, 9), "removed", (), "contact", ("1",), ()
    )


def test_removed_is_re_added_by_default(store: AccountStore) -> None:
    """By default a Removed contact gets a PUT that puts it on its targets."""
    store.add_contact("jane@example.com", status="Removed")
    result = write_of(decide(contact(1), entry_of(store, "jane@example.com"), skip_removed=False))
    assert parse_contact_entry(body_of(result)).list_keys == {"1"}


@pytest.mark.parametrize(
    ("has", "targets"),
    [
        pytest.param([1], [1], id="same-list"),
        pytest.param([1, 2, 3], [2], id="subset"),
        pytest.param([1, 2], [2, 1], id="other-order"),
    ],
)
def test_nothing_new_is_unchanged_without_a_body(
    store: AccountStore, has: list[int], targets: list[int]
) -> None:
    """When the contact is on every target already, it is `unchanged` and no write is built."""
    store.add_contact("jane@example.com", lists=has)
    result = decide(contact(*targets), entry_of(store, "jane@example.com"), skip_removed=False)
    before = tuple(sorted(str(i) for i in has))
    assert result == Outcome(
        "jane@example.com", "unchanged", (7, 9), "", (), "contact", tuple(map(str, targets)), before
    )


def test_targets_in_https_form_match_http_ids(store: AccountStore) -> None:
    """List ids compare by their key, whatever the scheme the list's URI uses."""
    store.add_contact("jane@example.com", lists=[1])
    https = v1_backend(ID_BASE.replace("http:", "https:"))
    target = Contact("jane@example.com", ("1",), {}, [2])
    state = entry_of(store, "jane@example.com")
    assert decide(target, state, skip_removed=False, backend=https) == Outcome(
        "jane@example.com", "unchanged", (2,), "", (), "contact", ("1",), ("1",)
    )


@pytest.mark.parametrize(
    ("has", "targets"),
    [
        pytest.param([1], [2], id="one-new"),
        pytest.param([1, 3], [2, 3], id="one-new-one-kept"),
        pytest.param([], [1, 2], id="on-no-list"),
    ],
)
def test_new_list_gives_a_put_body_with_the_union(
    store: AccountStore, has: list[int], targets: list[int]
) -> None:
    """A new list gives a PUT of the fetched entry with before ∪ targets, else unchanged."""
    store.add_contact(
        "jane@example.com", lists=has, fields={"FirstName": "Jane", "City": "Boston, MA"}
    )
    before = raw_entry_of(store, "jane@example.com")
    result = write_of(decide(contact(*targets), contact_state(before), skip_removed=False))

    assert result.state == contact_state(before)
    body = body_of(result)
    after = parse_contact_entry(body)
    assert after.list_keys == {str(i) for i in has} | {str(i) for i in targets}
    assert after.list_keys >= before.list_keys
    assert (after.id, after.email, after.status) == (before.id, before.email, before.status)
    assert b"<FirstName>Jane</FirstName>" in body
    assert b"<City>Boston, MA</City>" in body
    assert result.added == tuple(str(i) for i in targets if i not in has)


def test_the_put_body_never_says_action_by_contact(store: AccountStore) -> None:
    """I2: the PUT body of a self-signed-up contact never carries ACTION_BY_CONTACT."""
    store.add_contact("jane@example.com", lists=[1], opt_in_source="ACTION_BY_CONTACT")
    before = raw_entry_of(store, "jane@example.com")
    assert b"ACTION_BY_CONTACT" in before.raw  # the trap is in the fetched entry

    body = body_of(write_of(decide(contact(2), contact_state(before), skip_removed=False)))

    assert b"ACTION_BY_CONTACT" not in body
    assert b"<OptInSource>ACTION_BY_CUSTOMER</OptInSource>" in body
    assert parse_contact_entry(body).list_keys == {"1", "2"}


def test_source_fields_are_written_over_the_contacts_and_empty_ones_change_nothing(
    store: AccountStore,
) -> None:
    """An existing contact's differing fields are written, a missing one added, the rest kept."""
    store.add_contact(
        "jane@example.com", lists=[1], fields={"FirstName": "Jane", "LastName": "Doe"}
    )
    entry = raw_entry_of(store, "jane@example.com")
    source = Contact(
        "jane@example.com",
        ("1",),
        {"FirstName": "Janet", "LastName": "Doe", "City": "Lyon & Co"},
        [3],
    )

    write = write_of(decide(source, contact_state(entry), skip_removed=False))

    assert write.fields == ("City", "FirstName")
    assert write.added == ()
    after = parse_contact_entry(body_of(write))
    assert dict(after.fields) == {**dict(entry.fields), "FirstName": "Janet", "City": "Lyon & Co"}
    assert after.lists == entry.lists


def test_lists_only_leaves_the_fields_and_an_equal_row_needs_no_write(store: AccountStore) -> None:
    """With `lists_only` a differing field is not written; equal fields need no request."""
    store.add_contact("jane@example.com", lists=[1], fields={"FirstName": "Jane"})
    entry = entry_of(store, "jane@example.com")
    renamed = Contact("jane@example.com", ("1",), {"FirstName": "Janet"}, [3])
    same = Contact("jane@example.com", ("1",), {"FirstName": "Jane"}, [3])

    assert decide(renamed, entry, skip_removed=False, lists_only=True) == Outcome(
        "jane@example.com", "unchanged", (3,), "", (), "contact", ("1",), ("1",)
    )
    outcome = decide(same, entry, skip_removed=False)
    assert isinstance(outcome, Outcome)
    assert outcome.kind == "unchanged"
