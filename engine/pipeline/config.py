"""The migration's configuration: frozen, keyword-only, validated, safe by default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from engine.backend.protocol import Capabilities
from engine.errors import ConfigError
from engine.pipeline.read import ReadOptions

__all__ = ["MigrationConfig", "StageLimits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageLimits:
    """How many workers each stage runs (requests in flight are also capped by the governor).

    Attributes:
        fetch: workers searching (50 emails a request) and fetching full entries.
        put: workers sending PUT and POST requests.
        bulk: activities in flight at once.
    """

    fetch: int = 4
    put: int = 8
    bulk: int = 4

    def __post_init__(self) -> None:
        for name in ("fetch", "put", "bulk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"the {name} limit must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationConfig:
    """How to migrate.

    Attributes:
        lists: list names every contact must be on (with or instead of a lists column).
        read: how to read the source (columns, lists column, encoding).
        bulk_threshold: a flushed batch of at least this many contacts goes to a bulk
            activity (the API's own rule is 25); None never uses bulk.
        bulk_max_rows: rows per activity; None: the backend's cap (v1: 20,000).
        bulk_max_bytes: encoded bytes per activity; None: the backend's cap (4 MB).
        create_lists: create target lists the account lacks instead of stopping.
        skip_removed: leave contacts in `Removed` status alone (`skipped`, reason `removed`)
            instead of re-adding them, which makes them Active again.
        lists_only: write lists only: an existing contact's fields are never changed (by
            default the source's non-empty fields are written over the contact's, on both
            paths; an empty cell never clears a field). New contacts get their fields either
            way. On the bulk path this costs one search per 50 contacts, to tell existing
            contacts (sent with their email only) from new ones.
        limits: workers per stage.
        queue_size: capacity of each queue between stages.
        max_pending: contacts the planner holds in unflushed batches before it flushes the
            largest (keeps memory flat with many list sets).
        linger: seconds an unfilled batch of a streaming source waits before it is flushed.
        poll_initial: first wait before polling an activity, in seconds; each later wait is
            half as long again (`next_poll`).
        poll_max: the longest wait between polls, in seconds.
        poll_timeout: seconds after which an unfinished activity is given up (its contacts
            then go through the per-contact path, which is safe to repeat).
        stall_timeout: seconds an activity may show the same status (and transaction
            count) before it counts as stuck: its contacts then go through the per-contact
            path, and their outcomes say so. A warning is logged at a third of it. The
            default (15 minutes) leaves a busy real server time to start a queued activity.
        activity_seconds: the time an activity is expected to take on the server, for the
            dry run's estimate and the ETA until the run has timed its own activities (the
            real API takes from 30 s to 15 minutes; the default is 2 minutes).
        probe_size: contacts of the first bulk activity that holds contacts already on other
            lists: they go first, in an activity of their own, read before and after, to
            prove that bulk add keeps memberships (0: no probe; not recommended).
        progress_interval: seconds between progress events.
        verify_writes: how the per-contact path guards against another writer (the API has
            no ETags, so a PUT built from an older GET drops whatever changed since):
            "stale" re-reads an entry before the PUT when it is older than `stale_after`
            seconds (no extra request when the pipeline keeps up); "all" re-reads every entry
            right before its PUT and reads it back after, re-applying the union if a
            concurrent write removed a list (two more requests per updated contact);
            "off" never re-reads.
        stale_after: seconds after which a fetched entry counts as stale.
        append_writes: on an API that appends known contacts to lists by id (v3's
            `add_list_memberships`), an existing contact that only gains lists is appended
            that way, its id batched with others (up to the API's 500 a request): no
            read→write window, no list can be dropped, one request for many contacts. False
            sends each such contact's write on its own (v3: the whole-contact PUT).
        append_linger: seconds the first contact of an unfilled append batch waits for
            others before the batch is sent (a full batch, or the end of the input, sends
            it at once). Longer: fewer requests; shorter: outcomes sooner.
        revive_deleted: bring deleted contacts (v3: deleted, hidden from searches, blocking
            creation) back onto the target lists instead of skipping them (`skipped`,
            reason `deleted`). A deleted contact was deleted by someone on purpose; only
            the user can say it may come back.
    """

    lists: tuple[str, ...] = ()
    read: ReadOptions = field(default_factory=ReadOptions)
    bulk_threshold: int | None = 25
    bulk_max_rows: int | None = None
    bulk_max_bytes: int | None = None
    create_lists: bool = False
    skip_removed: bool = False
    lists_only: bool = False
    limits: StageLimits = field(default_factory=StageLimits)
    queue_size: int = 1024
    max_pending: int = 60_000
    linger: float = 2.0
    poll_initial: float = 5.0
    poll_max: float = 30.0
    poll_timeout: float = 3 * 3600.0
    stall_timeout: float = 15 * 60.0
    activity_seconds: float = 120.0
    probe_size: int = 25
    progress_interval: float = 1.0
    verify_writes: Literal["stale", "all", "off"] = "stale"
    stale_after: float = 2.0
    append_writes: bool = True
    append_linger: float = 30.0
    revive_deleted: bool = False

    def __post_init__(self) -> None:
        if self.bulk_threshold is not None and self.bulk_threshold < 1:
            raise ConfigError("bulk_threshold must be at least 1 (or None to never use bulk)")
        if self.bulk_max_rows is not None and self.bulk_max_rows < 1:
            raise ConfigError("bulk_max_rows must be at least 1")
        if self.bulk_max_bytes is not None and self.bulk_max_bytes < 10_000:
            raise ConfigError("bulk_max_bytes must be at least 10,000")
        if self.queue_size < 1 or self.max_pending < 1:
            raise ConfigError("queue_size and max_pending must be at least 1")
        for name in (
            "linger",
            "poll_initial",
            "poll_max",
            "poll_timeout",
            "progress_interval",
            "activity_seconds",
            "append_linger",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} cannot be negative")
        if self.stall_timeout <= 0:
            raise ConfigError("stall_timeout must be more than 0 seconds")
        if self.verify_writes not in ("stale", "all", "off"):
            raise ConfigError("verify_writes must be 'stale', 'all' or 'off'")
        if self.probe_size < 0:
            raise ConfigError("probe_size cannot be negative")
        if any(not name.strip() for name in self.lists):
            raise ConfigError("a list name is empty")

    def next_poll(self, delay: float) -> float:
        """The wait before an activity's next poll after a wait of `delay`: half as long again,
        up to `poll_max`. Half, not twice: a poll that just misses the end of an activity
        leaves it waiting a third of the time it has run instead of as long again (the
        simulator's 0.2 s activities, polled at 0.2 and 0.6 s, were most of the last
        appends' settling); an activity of three minutes polled from 5 s to 30 s takes one
        poll more."""
        return min(self.poll_max, max(delay * 1.5, 0.01))

    def for_backend(self, capabilities: Capabilities) -> MigrationConfig:
        """This configuration with the backend's caps and field limits where it leaves them
        to the backend, checked against them.

        Raises:
            ConfigError: a cap above what the backend's API allows.
        """
        rows = self.bulk_max_rows or capabilities.bulk_max_rows
        size = self.bulk_max_bytes or capabilities.bulk_max_bytes
        if rows > capabilities.bulk_max_rows:
            raise ConfigError(
                f"bulk_max_rows is {rows}; the {capabilities.dialect} API takes at most "
                f"{capabilities.bulk_max_rows} contacts a request"
            )
        if size > capabilities.bulk_max_bytes:
            raise ConfigError(
                f"bulk_max_bytes is {size}; the {capabilities.dialect} API takes at most "
                f"{capabilities.bulk_max_bytes} bytes a request"
            )
        read = self.read
        if read.field_limits is None:
            read = dataclasses.replace(read, field_limits=dict(capabilities.fields))
        return dataclasses.replace(self, bulk_max_rows=rows, bulk_max_bytes=size, read=read)

    @property
    def max_rows(self) -> int:
        """`bulk_max_rows`, once set (by `for_backend`)."""
        if self.bulk_max_rows is None:
            raise ConfigError("bulk_max_rows is not set: use config.for_backend(capabilities)")
        return self.bulk_max_rows

    @property
    def max_bytes(self) -> int:
        """`bulk_max_bytes`, once set (by `for_backend`)."""
        if self.bulk_max_bytes is None:
            raise ConfigError("bulk_max_bytes is not set: use config.for_backend(capabilities)")
        return self.bulk_max_bytes
