"""The v1 API's public names, where they were before the backend seam (`engine.backend.v1`
holds them now, `engine.backend` the governor and the retry policy both APIs share)."""

from engine.backend.v1 import (
    Account,
    Activity,
    ActivityError,
    ActivityTooLargeError,
    ContactEntry,
    ContactList,
    ContactSummary,
    Credentials,
    GovernorStats,
    ListMember,
    RateGovernor,
    RetryPolicy,
    classify,
    codec,
    encode_add_contacts,
)

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
    "codec",
    "encode_add_contacts",
]
