"""A planner batch's packed form (`engine.pipeline.models.Batch`), and the outcomes of its
contacts when its activity is settled."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from engine.backend.protocol import BulkResult
from engine.pipeline.bulk import _settled
from engine.pipeline.models import Batch, BulkAdded, Contact, Outcome


def _contacts() -> list[Contact]:
    return [
        Contact("a@example.com", ("l1",), {"FirstName": "Zoë"}, [2]),
        Contact("b@example.com", ("l1",), {}, [3, 9, 12]),
        Contact("c@xn--bcher-kva.example", ("l1",), {"City": 'say "hi"\nthere'}, [4]),
    ]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_batch_gives_back_each_contacts_email_rows_and_fields_in_order(count: int) -> None:
    """Emails, (email, rows), (email, fields) and whole contacts come back as given, for an
    empty batch, a batch of one and a batch with several rows to a contact."""
    contacts = _contacts()[:count]
    batch = Batch(contacts, ("l1",))
    assert (batch.size, batch.rows) == (count, sum(len(c.rows) for c in contacts))
    assert batch.emails() == [c.email for c in contacts]
    assert list(batch.keys()) == [(c.email, c.rows) for c in contacts]
    assert list(batch.pairs()) == [(c.email, c.fields) for c in contacts]
    assert [(c.email, c.targets, c.fields, c.rows) for c in batch.contacts] == [
        (c.email, c.targets, c.fields, c.rows) for c in contacts
    ]


@pytest.mark.parametrize("count", [999, 1000, 2501])
def test_a_large_batch_gives_back_every_contact_and_its_journal_form(count: int) -> None:
    """Over a thousand contacts (read back a thousand at a time), with line breaks, commas
    and brackets in their fields: pairs and whole contacts come back in order, and `text`
    is the JSON array of [email, rows, fields] the journal keeps."""
    contacts = [
        Contact(f"c{n}@example.com", ("l1",), {"Note": f"a,\n]b[{n}\u2028"}, [n + 2, n + 9])
        for n in range(count)
    ]
    batch = Batch(contacts, ("l1",))
    assert list(batch.pairs()) == [(c.email, c.fields) for c in contacts]
    assert json.loads(batch.text) == [[c.email, c.rows, c.fields] for c in contacts]
    assert [c.fields for c in batch.contacts] == [c.fields for c in contacts]


def test_fields_that_hold_the_cut_between_two_contacts_stay_whole() -> None:
    """Field values holding what separates two contacts in the packed form (`}],["`, with
    quotes, backslashes and brackets around it), and contacts without fields: each contact
    comes back as it went in, one a line."""
    tricky = ['}],["', '"}],["x', "\\", 'a\\"}],["b', "}]", "[", '{"k":"v"}', "é😀"]
    contacts = [
        Contact(
            f"c{n}@example.com",
            ("l1",),
            {} if n % 5 == 0 else {"FirstName": tricky[n % 8], "LastName": tricky[3 * n % 8]},
            [n + 2],
        )
        for n in range(40)
    ]
    batch = Batch(contacts, ("l1",))
    assert list(batch.pairs()) == [(c.email, c.fields) for c in contacts]
    assert [json.loads(line) for line in batch._lines_list()] == [
        [c.email, c.rows, c.fields] for c in contacts
    ]
    chosen, others = batch.split({"c1@example.com", "c2@example.com"})
    assert [c.fields for c in chosen.contacts] == [contacts[1].fields, contacts[2].fields]
    assert others.size == 38


def _as_tuples(contacts: Iterable[Contact]) -> list[tuple[object, ...]]:
    return [(c.email, c.targets, c.fields, c.rows) for c in contacts]


@pytest.mark.parametrize("count", [0, 1, 20])
def test_windows_unpack_the_contacts_in_order_a_window_at_a_time(count: int) -> None:
    """Windows of 7 are the contacts in order, 7 at a time (the last one shorter)."""
    contacts = [
        Contact(f"c{n}@example.com", ("l1",), {"Note": f"a,\n]{n}"}, [n + 2]) for n in range(count)
    ]
    windows = list(Batch(contacts, ("l1",)).windows(7))
    assert [len(w) for w in windows] == [len(contacts[i : i + 7]) for i in range(0, count, 7)]
    assert _as_tuples(c for w in windows for c in w) == _as_tuples(contacts)


@pytest.mark.parametrize(
    "chosen", [set(), {"b@example.com"}, {"a@example.com", "c@xn--bcher-kva.example"}]
)
def test_a_split_batch_is_the_two_batches_of_its_chosen_and_other_contacts(
    chosen: set[str],
) -> None:
    """Split by email, a batch gives the batches made of its chosen contacts and of the
    others, in order: same size, rows, emails, keys, pairs, contacts, text and fields."""
    contacts = _contacts()
    inside, outside = Batch(contacts, ("l1",)).split(chosen)
    for part, wanted in ((inside, True), (outside, False)):
        expected = Batch([c for c in contacts if (c.email in chosen) is wanted], ("l1",))
        assert (part.size, part.rows, part.targets) == (expected.size, expected.rows, ("l1",))
        assert part.emails() == expected.emails()
        assert list(part.keys()) == list(expected.keys())
        assert list(part.pairs()) == list(expected.pairs())
        assert _as_tuples(part.contacts) == _as_tuples(expected.contacts)
        assert part.text == expected.text


def test_a_split_keeps_the_fields_its_contacts_all_give() -> None:
    """Contacts that all give the same fields still do after a split."""
    contacts = [Contact(f"c{n}@example.com", ("l1",), {"FirstName": "A"}, [n]) for n in range(4)]
    inside, outside = Batch(contacts, ("l1",)).split({"c1@example.com"})
    assert inside.fields == outside.fields == ("FirstName",)


def test_an_email_with_a_line_break_is_refused_not_split_in_two() -> None:
    """The emails are packed one a line: one holding a line break (never a valid address)
    is an error, not two contacts."""
    with pytest.raises(ValueError, match="line break"):
        Batch([Contact("a@example.com\nb@example.com", ("l1",), {}, [2])], ("l1",))


def test_an_activitys_contacts_settle_as_added_groups_and_single_outcomes() -> None:
    """Settling 2,505 contacts: the 2,500 added come as groups of at most 1,000 (in order,
    each with its rows), the opted-out, invalid and failed as one outcome each, the unknown
    as none (they go contact by contact)."""
    contacts = [Contact(f"c{n}@example.com", ("l1",), {}, [n + 2]) for n in range(2505)]
    kinds = ["added"] * 2505
    kinds[7], kinds[1500], kinds[2000], kinds[2504] = "opted_out", "invalid", "failed", "unknown"
    kinds[3] = "unknown"
    results = [
        BulkResult(c.email, kind, "why" if kind in ("invalid", "failed") else "")  # type: ignore[arg-type]
        for c, kind in zip(contacts, kinds, strict=True)
    ]
    items = list(_settled(Batch(contacts, ("l1",)), results, ("l1",)))
    groups = [item for item in items if isinstance(item, BulkAdded)]
    singles = [item for item in items if isinstance(item, Outcome)]
    assert [len(group) for group in groups] == [1000, 1000, 500]
    added = [c for c, kind in zip(contacts, kinds, strict=True) if kind == "added"]
    assert [o.email for g in groups for o in g.outcomes()] == [c.email for c in added]
    assert [r for g in groups for r in g.rows] == [c.rows for c in added]
    assert {g.targets for g in groups} == {("l1",)}
    assert [(o.email, o.kind, o.reason) for o in singles] == [
        ("c7@example.com", "skipped", "opted-out"),
        ("c1500@example.com", "rejected", "why"),
        ("c2000@example.com", "failed", "why"),
    ]
