"""The seam between the pipeline and an API dialect.

`protocol` holds the neutral records and the `Backend` protocol the pipeline, the journal, the
audit and the dry run are written against; each dialect implements it in its own module
(`v1/`: the legacy XML API, its client and `V1Backend`). `governor` and `retry` are
shared by both APIs.
"""

from engine.backend.protocol import (
    Backend,
    BackendStats,
    BulkActivity,
    BulkResult,
    Capabilities,
    ContactRef,
    ContactState,
    ContactStatus,
    ListId,
    ListInfo,
    ListWrite,
)
from engine.backend.v1 import V1_CAPABILITIES, V1Backend
from engine.backend.v1.client import Account


def as_backend(api: Account | Backend) -> Backend:
    """The backend of `api`: a v1 `Account` is wrapped in a `V1Backend` (the public v1
    names keep working wherever a backend is expected)."""
    return V1Backend(api) if isinstance(api, Account) else api


__all__ = [
    "V1_CAPABILITIES",
    "Backend",
    "BackendStats",
    "BulkActivity",
    "BulkResult",
    "Capabilities",
    "ContactRef",
    "ContactState",
    "ContactStatus",
    "ListId",
    "ListInfo",
    "ListWrite",
    "V1Backend",
    "as_backend",
]
