"""What a read-back takes from each member's document: its email as the key (without the
cost of a state), and the state of the members it sought."""

from __future__ import annotations

import pytest

from engine.backend.v3._json import member_email, member_state
from engine.errors import MalformedResponseError


@pytest.mark.parametrize(
    ("document", "email"),
    [
        ({"email_address": {"address": "  Ann@Example.COM "}}, "ann@example.com"),
        ({"email_address": {"address": "b@example.com"}}, "b@example.com"),
        ({"email_address": "not an object"}, ""),
        ({"email_address": {"address": 7}}, ""),
        ({}, ""),
    ],
)
def test_a_members_email_key_is_the_email_its_state_gives(
    document: dict[str, object], email: str
) -> None:
    """The key is trimmed and lower-cased, "" when absent or not text, as in the state."""
    assert member_email(document) == email
    state = member_state({"contact_id": "c1", "list_memberships": [], **document})
    assert state.ref.email == email


def test_a_sought_member_that_is_malformed_is_still_an_error() -> None:
    """A member whose key matched but whose lists are not ids raises, as before."""
    document = {"contact_id": "c1", "email_address": {"address": "a@e.com"}, "list_memberships": 3}
    assert member_email(document) == "a@e.com"
    with pytest.raises(MalformedResponseError):
        member_state(document)
