"""A planner batch's packed form (`engine.pipeline.models.Batch`)."""

from __future__ import annotations

import pytest

from engine.pipeline.models import Batch, Contact


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


def test_an_email_with_a_line_break_is_refused_not_split_in_two() -> None:
    """The emails are packed one a line: one holding a line break (never a valid address)
    is an error, not two contacts."""
    with pytest.raises(ValueError, match="line break"):
        Batch([Contact("a@example.com\nb@example.com", ("l1",), {}, [2])], ("l1",))
