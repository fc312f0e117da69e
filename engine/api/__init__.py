"""The Constant Contact v1 API layer: client, XML codec, activity encoding, retries, rate."""

from engine.api.activities import ActivityTooLargeError, encode_add_contacts
from engine.api.client import Account, Credentials, classify
from engine.api.governor import GovernorStats, RateGovernor
from engine.api.records import (
    Activity,
    ActivityError,
    ContactEntry,
    ContactList,
    ContactSummary,
    ListMember,
)
from engine.api.retry import RetryPolicy

__all__ = [
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
    "classify",
    "encode_add_contacts",
]
