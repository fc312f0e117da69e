"""The account store's rules, without HTTP."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

from engine.simulator import AccountStore, SimulatorConfig
from engine.simulator.v1.store import (
    BadRequest,
    Conflict,
    ContactInput,
    Forbidden,
    LineError,
    NotFound,
    iso_time,
)

LIST_URI = "http://api.constantcontact.com/ws/customers/demo/lists/{}"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_271_874_934.066) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 2010-04-21T18:35:34.066Z."""
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> AccountStore:
    """An account with three lists (A, B, C) and no contacts."""
    account = AccountStore(SimulatorConfig(), clock=clock)
    for name in ("A", "B", "C"):
        account.create_list(name)
    return account


def uris(*list_ids: int) -> list[str]:
    return [LIST_URI.format(i) for i in list_ids]


def test_iso_time_has_milliseconds_and_z() -> None:
    """Timestamps are ISO-8601 UTC with milliseconds, as in the captures."""
    assert iso_time(1_271_874_934.066) == "2010-04-21T18:35:34.066Z"


def test_seeding_ten_thousand_contacts_is_fast(store: AccountStore) -> None:
    """Seeding 10,000 contacts takes well under a second."""
    started = time.perf_counter()
    for n in range(10_000):
        store.add_contact(f"person{n}@example.com", lists=[1 + n % 3], fields={"FirstName": "P"})
    assert time.perf_counter() - started < 1.0
    assert store.member_count(1) == 3334
    assert store.contact_count() == 10_000


def test_emails_are_stored_lower_case_and_unique(store: AccountStore) -> None:
    """Emails are stored lower-cased; a second add of the same address in any case conflicts."""
    contact_id = store.add_contact("Jane@X.com", lists=[1])
    found = store.contact_by_email("jane@x.com")
    assert found is not None
    assert found.id == contact_id
    assert found.email == "jane@x.com"
    with pytest.raises(Conflict):
        store.add_contact("JANE@x.com")


def test_search_is_case_sensitive_and_skips_misses(store: AccountStore) -> None:
    """Search matches the stored lower-case address exactly, in query order, skipping misses."""
    a = store.add_contact("a@x.com", lists=[1])
    b = store.add_contact("b@x.com", lists=[1])
    assert [c.id for c in store.search(["b@x.com", "nobody@x.com", "a@x.com"])] == [b, a]
    assert store.search(["A@x.com"]) == []


def test_sort_order_differs_from_id(store: AccountStore) -> None:
    """Default SortOrder values are not the list ids (clients must not confuse them)."""
    for stored in store.lists():
        assert stored.sort_order != stored.id


def test_duplicate_list_name_conflicts(store: AccountStore) -> None:
    """Creating a list whose name exists gives 409."""
    with pytest.raises(Conflict) as caught:
        store.create_list("a")
    assert caught.value.status == 409


def test_create_contact_requires_a_list(store: AccountStore) -> None:
    """POST without lists is refused with the real (misspelt) message."""
    with pytest.raises(BadRequest, match="at least on valid ContactList"):
        store.create_contact(ContactInput("new@x.com", lists=[]))


def test_create_contact_conflicts_with_any_status(store: AccountStore) -> None:
    """POST of an address that exists as Do Not Mail still gives 409."""
    contact_id = store.add_contact("gone@x.com", lists=[1])
    store.opt_out(contact_id)
    with pytest.raises(Conflict):
        store.create_contact(ContactInput("Gone@X.com", lists=uris(2)))


def test_create_contact_rejects_unknown_list_and_long_fields(store: AccountStore) -> None:
    """Unknown lists and over-long fields are 400."""
    with pytest.raises(BadRequest):
        store.create_contact(ContactInput("n@x.com", lists=uris(99)))
    with pytest.raises(BadRequest, match="FirstName"):
        store.create_contact(ContactInput("n@x.com", fields={"FirstName": "x" * 51}, lists=uris(1)))
    with pytest.raises(BadRequest, match="Invalid email"):
        store.create_contact(ContactInput("not-an-email", lists=uris(1)))


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("http://api.constantcontact.com/ws/customers/demo/lists/2", id="http"),
        pytest.param("https://api.constantcontact.com/ws/customers/demo/lists/2", id="https"),
        pytest.param("https://127.0.0.1:8443/ws/customers/DEMO/lists/2", id="other-host"),
        pytest.param("/ws/customers/demo/lists/2", id="relative"),
    ],
)
def test_list_uris_accept_any_scheme_host_or_relative(store: AccountStore, uri: str) -> None:
    """List URIs are accepted as http, https, any host, or server-relative paths."""
    assert store.resolve_list_uri(uri) == 2


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("http://api.constantcontact.com/ws/customers/other/lists/2", id="other-user"),
        pytest.param("http://api.constantcontact.com/ws/customers/demo/lists/active", id="system"),
        pytest.param("lists/2", id="bare-relative"),
        pytest.param("ftp://x/ws/customers/demo/lists/2", id="scheme"),
    ],
)
def test_list_uris_reject_other_forms(store: AccountStore, uri: str) -> None:
    """Other accounts' lists, system lists and odd URIs are 400."""
    with pytest.raises(BadRequest):
        store.resolve_list_uri(uri)


def test_put_replaces_memberships_and_keeps_old_stamps(
    store: AccountStore, clock: FakeClock
) -> None:
    """PUT replaces the list set: unlisted lists are dropped; kept lists keep their OptInTime."""
    contact_id = store.add_contact("p@x.com", lists=[1, 2])
    first_stamp = store.get_contact(contact_id).memberships[1].time
    clock.tick(5)
    store.update_contact(contact_id, ContactInput("p@x.com", lists=uris(1, 3)))
    contact = store.get_contact(contact_id)
    assert contact.lists == {1, 3}
    assert contact.memberships[1].time == first_stamp
    assert contact.memberships[3].time == iso_time(clock.now)
    assert store.members(2) == set()


def test_put_with_no_lists_removes_and_lists_reactivate(store: AccountStore) -> None:
    """An empty ContactLists makes the contact Removed; giving it lists makes it Active."""
    contact_id = store.add_contact("p@x.com", lists=[1])
    store.update_contact(contact_id, ContactInput("p@x.com", lists=[]))
    assert store.get_contact(contact_id).status == "Removed"
    store.update_contact(contact_id, ContactInput("p@x.com", lists=uris(2)))
    assert store.get_contact(contact_id).status == "Active"


def test_put_updates_last_update_time_only_on_change(store: AccountStore, clock: FakeClock) -> None:
    """LastUpdateTime moves on a real change only."""
    contact_id = store.add_contact("p@x.com", lists=[1], fields={"FirstName": "P"})
    before = store.get_contact(contact_id).last_update_time
    clock.tick(10)
    body = ContactInput("p@x.com", fields={"FirstName": "P", "LastName": ""}, lists=uris(1))
    store.update_contact(contact_id, body)
    assert store.get_contact(contact_id).last_update_time == before
    store.update_contact(
        contact_id, ContactInput("p@x.com", fields={"FirstName": "Q"}, lists=uris(1))
    )
    assert store.get_contact(contact_id).last_update_time == iso_time(clock.now)


def test_put_clears_absent_fields_unless_configured(store: AccountStore) -> None:
    """A PUT replaces the whole contact: missing detail elements are cleared (setting)."""
    contact_id = store.add_contact("p@x.com", lists=[1], fields={"FirstName": "P", "City": "X"})
    store.update_contact(
        contact_id, ContactInput("p@x.com", fields={"FirstName": "P"}, lists=uris(1))
    )
    assert store.get_contact(contact_id).fields == {"FirstName": "P"}
    store.config = dataclasses.replace(store.config, put_clears_absent_fields=False)
    store.update_contact(contact_id, ContactInput("p@x.com", fields={"City": "Y"}, lists=uris(1)))
    assert store.get_contact(contact_id).fields == {"FirstName": "P", "City": "Y"}


def test_put_rejects_another_contacts_entry_id(store: AccountStore) -> None:
    """A PUT body whose <id> names another contact is 400."""
    contact_id = store.add_contact("p@x.com", lists=[1])
    body = ContactInput("p@x.com", lists=uris(1), entry_id="http://h/ws/customers/demo/contacts/99")
    with pytest.raises(BadRequest):
        store.update_contact(contact_id, body)


def test_do_not_mail_rules(store: AccountStore) -> None:
    """A customer PUT adding lists to Do Not Mail is 403; field edits pass; a contact's own
    action re-subscribes it."""
    contact_id = store.add_contact("dnm@x.com", lists=[1])
    store.opt_out(contact_id)
    with pytest.raises(Forbidden):
        store.update_contact(contact_id, ContactInput("dnm@x.com", lists=uris(1)))
    store.update_contact(contact_id, ContactInput("dnm@x.com", fields={"FirstName": "D"}, lists=[]))
    assert store.get_contact(contact_id).fields == {"FirstName": "D"}
    store.config = dataclasses.replace(store.config, dnm_put_rule="any")
    with pytest.raises(Forbidden):
        store.update_contact(contact_id, ContactInput("dnm@x.com", lists=[]))
    store.update_contact(
        contact_id, ContactInput("dnm@x.com", lists=uris(2), opt_in_source="ACTION_BY_CONTACT")
    )
    contact = store.get_contact(contact_id)
    assert (contact.status, contact.lists, contact.opt_out_time) == ("Active", {2}, "")


def test_opt_out_leaves_every_list(store: AccountStore) -> None:
    """DELETE is an opt-out: Do Not Mail, no lists, OptOutTime set, record kept."""
    contact_id = store.add_contact("p@x.com", lists=[1, 2])
    store.opt_out(contact_id)
    contact = store.get_contact(contact_id)
    assert (contact.status, contact.lists) == ("Do Not Mail", set())
    assert contact.opt_out_time
    assert contact.opt_out_source == "ACTION_BY_CUSTOMER"
    assert store.member_ids_desc("do-not-mail") == [contact_id]
    with pytest.raises(NotFound):
        store.opt_out(999)


def test_bulk_add_appends_and_creates(store: AccountStore) -> None:
    """An add activity appends lists, keeps other memberships, creates new contacts, and
    reports Do Not Mail and invalid rows by line (header = line 1)."""
    kept = store.add_contact("kept@x.com", lists=[1])
    dnm = store.add_contact("dnm@x.com", lists=[1])
    store.opt_out(dnm)
    removed = store.add_contact("removed@x.com", status="Removed")
    data = (
        "EMAIL ADDRESS, First Name\r\n"
        "Kept@X.com, Kept\r\n"
        "new@x.com, New\r\n"
        "dnm@x.com, D\r\n"
        "bad@@x, B\r\n"
        "removed@x.com,\r\n"
    )
    activity = store.submit_activity("SV_ADD", data, uris(2))
    assert activity.type == "ADD_CONTACT_DETAIL"
    assert activity.status == "PENDING"
    store.run_activity(activity.id)
    assert activity.status == "COMPLETE"
    assert store.get_contact(kept).lists == {1, 2}
    assert store.get_contact(kept).fields["FirstName"] == "Kept"
    new = store.contact_by_email("new@x.com")
    assert new is not None
    assert new.lists == {2}
    assert new.opt_in_source == "ACTION_BY_CUSTOMER"
    assert store.get_contact(removed).status == "Active"
    assert store.get_contact(dnm).lists == set()
    assert activity.errors == [
        LineError(4, "dnm@x.com", "Contact is on the Do Not Mail list"),
        LineError(5, "bad@@x", "Invalid email address"),
    ]
    assert activity.transaction_count == 3


def test_bulk_last_row_wins_and_empty_cells_keep(store: AccountStore) -> None:
    """Duplicate rows: the last wins; empty cells do not clear fields (default)."""
    contact_id = store.add_contact("p@x.com", lists=[1], fields={"City": "Boston"})
    data = 'Email Address,First Name,City\np@x.com,One,"Boston, MA"\np@x.com,Two,\n'
    activity = store.run_activity(store.submit_activity("ADD_CONTACTS", data, uris(1)).id)
    assert store.get_contact(contact_id).fields == {"FirstName": "Two", "City": "Boston, MA"}
    assert activity.transaction_count == 2


def test_bulk_settings_skip_dnm_and_clear_empty_cells(store: AccountStore) -> None:
    """`bulk_skip_dnm_rows` drops Do Not Mail rows silently; `bulk_empty_cells_clear` lets an
    empty cell clear a field."""
    store.config = dataclasses.replace(
        store.config, bulk_skip_dnm_rows=True, bulk_empty_cells_clear=True
    )
    store.opt_out(store.add_contact("dnm@x.com", lists=[1]))
    kept = store.add_contact("p@x.com", lists=[1], fields={"City": "Boston", "FirstName": "P"})
    data = "Email Address,City\ndnm@x.com,X\np@x.com,\n"
    activity = store.run_activity(store.submit_activity("SV_ADD", data, uris(2)).id)
    assert activity.errors == []
    assert activity.transaction_count == 1
    assert store.get_contact(kept).fields == {"FirstName": "P"}


def test_delete_list_drops_memberships(store: AccountStore) -> None:
    """Deleting a list takes it off its members; a member left on no list is Removed."""
    only = store.add_contact("only@x.com", lists=[1])
    both = store.add_contact("both@x.com", lists=[1, 2])
    store.delete_list(1)
    assert store.get_contact(only).status == "Removed"
    assert store.get_contact(both).lists == {2}
    assert store.list_by_name("A") is None
    with pytest.raises(NotFound):
        store.members(1)


def test_bulk_email_only_is_add_contacts_and_replace_mode(store: AccountStore) -> None:
    """Email-only data is stored as ADD_CONTACTS; `bulk_semantics="replace"` drops other lists."""
    contact_id = store.add_contact("p@x.com", lists=[1])
    store.config = dataclasses.replace(store.config, bulk_semantics="replace")
    activity = store.submit_activity("SV_ADD", "Email Address\np@x.com\n", uris(2))
    assert activity.type == "ADD_CONTACTS"
    store.run_activity(activity.id)
    assert store.get_contact(contact_id).lists == {2}


def test_bulk_failed_activity_applies_nothing(store: AccountStore) -> None:
    """An activity drawn to fail ends in ERROR and changes nothing."""
    activity = store.submit_activity("SV_ADD", "Email Address\nn@x.com\n", uris(1), fail=True)
    store.run_activity(activity.id)
    assert activity.status == "ERROR"
    assert activity.run_finish_time
    assert store.contact_by_email("n@x.com") is None


def test_bulk_remove_and_clear(store: AccountStore) -> None:
    """REMOVE takes the listed contacts off the lists; CLEAR empties the lists; a contact left
    on no list is Removed."""
    a = store.add_contact("a@x.com", lists=[1, 2])
    b = store.add_contact("b@x.com", lists=[2])
    store.run_activity(
        store.submit_activity("REMOVE_CONTACTS_FROM_LISTS", "Email Address\na@x.com", uris(1)).id
    )
    assert store.get_contact(a).lists == {2}
    store.run_activity(store.submit_activity("CLEAR_CONTACTS_FROM_LISTS", None, uris(2)).id)
    assert store.members(2) == set()
    assert store.get_contact(a).status == store.get_contact(b).status == "Removed"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param("First Name\nx\n", "Email Address column", id="no-email-column"),
        pytest.param("Email Address,Shoe Size\na@x.com,9\n", "Unknown column", id="unknown-column"),
        pytest.param("", "data parameter", id="empty"),
    ],
)
def test_bulk_whole_request_errors(store: AccountStore, data: str, message: str) -> None:
    """Data without an email column, with an unknown column, or empty is 400."""
    with pytest.raises(BadRequest, match=message):
        store.submit_activity("SV_ADD", data, uris(1))


def test_bulk_unknown_columns_can_be_ignored(store: AccountStore) -> None:
    """With `bulk_ignore_unknown_columns`, unknown columns are skipped."""
    store.config = dataclasses.replace(store.config, bulk_ignore_unknown_columns=True)
    activity = store.submit_activity("SV_ADD", "Email Address,Shoe Size\na@x.com,9\n", uris(1))
    assert activity.type == "ADD_CONTACTS"


def test_bulk_row_cap_rejects_or_truncates(store: AccountStore) -> None:
    """Over the row cap: 400 by default, or truncation with a line error."""
    store.config = dataclasses.replace(store.config, bulk_max_rows=2)
    data = "Email Address\na@x.com\nb@x.com\nc@x.com\n"
    with pytest.raises(BadRequest, match="more than 2 rows"):
        store.submit_activity("SV_ADD", data, uris(1))
    store.config = dataclasses.replace(store.config, bulk_truncate=True)
    activity = store.run_activity(store.submit_activity("SV_ADD", data, uris(1)).id)
    assert activity.transaction_count == 2
    assert [e.line for e in activity.errors] == [4]
    assert store.contact_by_email("c@x.com") is None


def test_bulk_byte_cap_rejects(store: AccountStore) -> None:
    """Over the byte cap: 400 by default."""
    store.config = dataclasses.replace(store.config, bulk_max_bytes=20)
    with pytest.raises(BadRequest, match="larger than 20 bytes"):
        store.submit_activity("SV_ADD", "Email Address\nsomeone.long@example.com\n", uris(1))


def test_bulk_rejects_unknown_state_code(store: AccountStore) -> None:
    """An unknown US/Canadian state code is a line error with the real wording."""
    data = "Email Address,US State/CA Province\na@x.com,Test2\nb@x.com,ma\n"
    activity = store.run_activity(store.submit_activity("SV_ADD", data, uris(1)).id)
    assert activity.errors == [LineError(2, "a@x.com", 'Unknown US/Canadian state/prov "Test2"')]
    b = store.contact_by_email("b@x.com")
    assert b is not None
    assert b.fields["StateCode"] == "MA"


def test_activity_ids_are_shaped_and_never_repeat_for_the_same_seed(clock: FakeClock) -> None:
    """Activity ids are `a07e1` + 14 lower-case alphanumerics, new even for the same seed
    (a restarted server must never give an id it gave before)."""
    ids = []
    for _ in range(2):
        account = AccountStore(SimulatorConfig(seed=7), clock=clock)
        account.create_list("A")
        ids.append(account.submit_activity("SV_ADD", "Email Address\na@x.com", uris(1)).id)
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"a07e1[a-z0-9]{14}", i) for i in ids)


def test_json_round_trip_and_atomic_save(store: AccountStore, tmp_path: Path) -> None:
    """State survives save/load: lists, contacts, memberships with stamps, statuses, next ids."""
    a = store.add_contact("a@x.com", lists=[1, 3], fields={"FirstName": "A"})
    store.opt_out(store.add_contact("b@x.com", lists=[2]))
    store.run_activity(store.submit_activity("SV_ADD", "Email Address\nc@x.com", uris(2)).id)
    path = tmp_path / "state.json"
    store.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    loaded = AccountStore.load(path)
    assert loaded.to_json() == store.to_json()
    assert loaded.get_contact(a).memberships == store.get_contact(a).memberships
    assert loaded.create_list("D") == 4
    assert loaded.add_contact("d@x.com") == store.contact_count() + 1


def test_unfinished_activities_keep_their_rows_through_a_save_and_run_after_load(
    store: AccountStore,
) -> None:
    """An activity still pending when saved is pending after a reload, and runs to the end."""
    activity = store.submit_activity("SV_ADD", "Email Address\nn@x.com\nm@x.com", uris(1))
    loaded = AccountStore.from_json(json.loads(json.dumps(store.to_json())))
    assert loaded.get_activity(activity.id).status == "PENDING"
    assert loaded.unfinished_activities() == [activity.id]
    assert loaded.run_activity(activity.id).status == "COMPLETE"
    assert loaded.contact_by_email("m@x.com") is not None
    assert loaded.unfinished_activities() == []


def test_unfinished_activities_end_in_error_after_load_when_asked(store: AccountStore) -> None:
    """With unfinished_activities='error', an activity pending when saved is ERROR, unapplied."""
    activity = store.submit_activity("SV_ADD", "Email Address\nn@x.com", uris(1))
    loaded = AccountStore.from_json(
        json.loads(json.dumps(store.to_json())), SimulatorConfig(unfinished_activities="error")
    )
    assert loaded.get_activity(activity.id).status == "ERROR"
    assert loaded.contact_by_email("n@x.com") is None


def test_from_json_rejects_other_documents() -> None:
    """A document that is not a simulator state is refused with ValueError."""
    with pytest.raises(ValueError, match="format"):
        AccountStore.from_json({"lists": []})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"error_rate": 1.5}, "error_rate", id="error-rate"),
        pytest.param({"port": 70000}, "port", id="port"),
        pytest.param({"throttle_status": 500}, "throttle_status", id="throttle-status"),
        pytest.param({"username": "bad/name"}, "username", id="username"),
        pytest.param({"rate_limit": 0}, "rate_limit", id="rate-limit"),
        pytest.param({"plain_http_status": 302}, "plain_http_status", id="plain-status"),
    ],
)
def test_config_validation_names_the_field(overrides: dict[str, object], field: str) -> None:
    """An invalid setting raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**overrides)  # type: ignore[arg-type]


def test_config_repr_hides_secrets() -> None:
    """The config's repr never shows the password or the API key."""
    text = repr(SimulatorConfig(password="s3cret-pw", api_key="k3y"))
    assert "s3cret-pw" not in text
    assert "k3y" not in text
