"""The seam between the pipeline and an API dialect.

`protocol` holds the neutral records and the `Backend` protocol the pipeline, the journal, the
audit and the dry run are written against; each dialect implements it in its own module
(`v1`: the legacy XML API over `engine.api`).
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
]
