"""The legacy v1 XML API: its client (`Account`), XML codec, bulk activity encoding, records,
and `V1Backend`, which puts it behind the pipeline's `Backend` protocol."""

from engine.backend.governor import GovernorStats, RateGovernor
from engine.backend.retry import RetryPolicy
from engine.backend.v1.activities import ActivityTooLargeError, encode_add_contacts
from engine.backend.v1.backend import V1_CAPABILITIES, V1Backend, contact_state
from engine.backend.v1.client import Account, Credentials, classify
from engine.backend.v1.records import (
    Activity,
    ActivityError,
    ContactEntry,
    ContactList,
    ContactSummary,
    ListMember,
)

__all__ = [
    "V1_CAPABILITIES",
    "Account",
    "Activity",
    "ActivityError",
    "ActivityTooLargeError",
    "ContactEntry",
    "ContactList",
    "ContactSummary",
    "Credentials",
    "GovernorStats",
    "ListMember",
    "RateGovernor",
    "RetryPolicy",
    "V1Backend",
    "classify",
    "contact_state",
    "encode_add_contacts",
]
