"""Live counters of the stages, the progress event built from them, and error triage."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.errors import (
    ApiError,
    ConnectionLostError,
    DoNotMailError,
    FatalApiError,
    QuotaExhaustedError,
    RetryableApiError,
    UnsafeMergeError,
)
from engine.pipeline.models import Contact, Outcome, Stage

__all__ = [
    "ActivityWait",
    "Progress",
    "RunStats",
    "StageStats",
    "WaitingActivity",
    "fan_out",
    "outcome_for_error",
]

T = TypeVar("T")
U = TypeVar("U")


@dataclass(slots=True)
class StageStats:
    """Counters one stage keeps up to date (only that stage writes them).

    Attributes:
        done: items the stage finished.
        busy: items it is working on now.
        queued: items waiting in its input queue (filled in by the progress task).
    """

    done: int = 0
    busy: int = 0
    queued: int = 0


@dataclass(slots=True)
class ActivityWait:
    """An activity being polled (the bulk stage updates it; `anyio.current_time` clock).

    Attributes:
        key: the activity id.
        status: its last status.
        since: when polling started.
        changed: when its status (or transaction count) last changed.
        rows: the source rows of its contacts.
    """

    key: str
    status: str
    since: float
    changed: float
    rows: int = 0


@dataclass(frozen=True, slots=True)
class WaitingActivity:
    """An activity being waited for, as a progress event shows it.

    Attributes:
        key: the activity id.
        status: its last status (`PENDING`, `RUNNING`, …).
        age: seconds since the engine started waiting for it.
        unchanged: seconds since its status last changed.
    """

    key: str
    status: str
    age: float
    unchanged: float


@dataclass(slots=True)
class RunStats:
    """Every counter of a run.

    Attributes:
        stages: per-stage counters.
        outcomes: outcome kind -> number of rows.
        emails: emails (report records) recorded.
        rows_read: rows read from the source.
        rows_total: rows in the source when known (files), for the ETA.
        activities: bulk activities submitted.
        polls: activity status polls sent.
        reactivated: Removed contacts this run made Active again.
        waiting: activity id -> the activity being polled.
        started: monotonic start time.
        path_rows: path (`contact`, `bulk`) -> rows with an outcome from it.
        activity_seconds: how long an activity is expected to take on the server, until
            this run has timed its own (`activity_time`).
        activity_time: (activities finished, their total seconds from submission).
        bulk_limit: activities in flight at once.
        batches_open: batches the bulk path holds and has not finished.
        batches_seen: batches the bulk path has taken.
        bulk_verified: the bulk probe has passed (no probe activity is still to come).
    """

    stages: dict[Stage, StageStats] = field(
        default_factory=lambda: {
            name: StageStats()
            for name in ("read", "plan", "fetch", "merge", "put", "bulk", "record")
        }
    )
    outcomes: Counter[str] = field(default_factory=Counter)
    emails: int = 0
    rows_read: int = 0
    rows_total: int | None = None
    activities: int = 0
    polls: int = 0
    reactivated: int = 0
    waiting: dict[str, ActivityWait] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    path_rows: Counter[str] = field(default_factory=Counter)
    activity_seconds: float = 120.0
    activity_time: tuple[int, float] = (0, 0.0)
    bulk_limit: int = 4
    batches_open: int = 0
    batches_seen: int = 0
    bulk_verified: bool = False

    def activity_finished(self, seconds: float) -> None:
        """Time one more activity: it took `seconds` from submission to its end."""
        count, total = self.activity_time
        self.activity_time = (count + 1, total + seconds)

    def eta(self, now: float, rows_done: int, elapsed: float) -> float | None:
        """Seconds left, path by path, when the total is known (None before any outcome).

        The per-contact path has its contacts in its stages to finish, at its pace so far.
        The bulk path waits for its activities in flight, then for one activity per batch
        it holds that has none in flight yet (plus the rest of the batch whose probe is in
        flight), `bulk_limit` at a time; each activity is expected to take as long as this
        run's activities took on average (`activity_seconds` before one has finished). Rows
        not read yet are shared between the paths as the rows read so far were.
        """
        if self.rows_total is None or rows_done == 0 or elapsed <= 0:
            return None
        stages = self.stages
        contact_open = sum(stages[s].busy + stages[s].queued for s in ("fetch", "merge", "put"))
        bulk_open = stages["bulk"].busy + stages["bulk"].queued
        contact_seen = self.path_rows["contact"] + contact_open
        bulk_seen = self.path_rows["bulk"] + bulk_open
        unread = max(0, self.rows_total - self.rows_read)
        share = bulk_seen / max(1, contact_seen + bulk_seen)
        contact_left = contact_open + unread * (1 - share)
        if not bulk_seen:  # no activity yet: the pace so far is the whole story
            left = max(0, self.rows_total - rows_done)
            return left / (rows_done / elapsed)
        done = self.path_rows["contact"]
        contact_eta = contact_left / (done / elapsed) if done else 0.0
        count, total = self.activity_time
        expected = total / count if count else self.activity_seconds
        waits = [max(0.0, expected - (now - w.since)) for w in self.waiting.values()]
        batch_rows = bulk_seen / max(1, self.batches_seen)
        to_come = max(0, self.batches_open - len(self.waiting)) + int(
            not self.bulk_verified and bool(self.waiting)
        )
        to_come += math.ceil(unread * share / max(1.0, batch_rows))
        waves = math.ceil(to_come / max(1, self.bulk_limit))
        bulk_eta = max(waits, default=0.0) + waves * expected
        return max(contact_eta, bulk_eta)

    def waiting_now(self, now: float) -> tuple[WaitingActivity, ...]:
        """The activities being polled, oldest first, as of `now` (`anyio.current_time`)."""
        return tuple(
            WaitingActivity(w.key, w.status, now - w.since, now - w.changed)
            for w in sorted(self.waiting.values(), key=lambda w: w.since)
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress event, sent every `progress_interval` seconds and once at the end.

    Attributes:
        elapsed: seconds since the run started.
        rows_read: rows read so far.
        rows_total: rows in the source, when known.
        rows_done: rows with an outcome.
        outcomes: outcome kind -> rows.
        stages: stage -> (busy, queued).
        requests: requests sent.
        retries: requests retried.
        throttles: throttle answers received.
        rate: the governor's current rate limit (None: unlimited).
        activities: bulk activities submitted.
        final: True for the last event of the run.
        waiting: the activities being polled, oldest first: status, age, time unchanged.
        polls: activity status polls sent.
        eta_by_path: the run's own estimate of the seconds left (`RunStats.eta`), which
            `eta` prefers.
    """

    elapsed: float
    rows_read: int
    rows_total: int | None
    rows_done: int
    outcomes: dict[str, int]
    stages: dict[str, tuple[int, int]]
    requests: int
    retries: int
    throttles: int
    rate: float | None
    activities: int
    final: bool = False
    waiting: tuple[WaitingActivity, ...] = ()
    polls: int = 0
    eta_by_path: float | None = None

    @property
    def rows_per_second(self) -> float:
        """Rows finished per second so far."""
        return self.rows_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, when the total is known: the run's estimate path by path, or else
        the rows left at the pace so far."""
        if self.eta_by_path is not None:
            return self.eta_by_path
        if self.rows_total is None or self.rows_done == 0:
            return None
        return max(0.0, (self.rows_total - self.rows_done) / self.rows_per_second)


def outcome_for_error(contact: Contact, error: Exception, path: str) -> Outcome:
    """The outcome of a contact whose request failed for good, or re-raise if the run must stop.

    Fatal API errors (401, bad 403, 415, quota) and a connection lost for longer than the
    retry budget stop the run; a Do Not Mail 403 is `skipped` (`opted-out`); anything else
    specific to this contact is `failed` with the reason.
    """
    if isinstance(error, FatalApiError | ConnectionLostError | QuotaExhaustedError):
        raise error
    if isinstance(error, DoNotMailError):
        return Outcome(contact.email, "skipped", tuple(contact.rows), "opted-out", path=path)
    if isinstance(error, ApiError):
        reason = f"{error.status or ''} {error.message}".strip()
    elif isinstance(error, UnsafeMergeError):
        reason = f"merge refused, nothing sent: {error}"
    else:
        raise error
    # A cause that may pass (a 5xx, throttling, a garbled answer after its retries): the
    # same command run again retries the contact instead of counting it done.
    retryable = isinstance(error, RetryableApiError)
    return Outcome(
        contact.email, "failed", tuple(contact.rows), reason, path=path, retryable=retryable
    )


async def fan_out(
    worker: Callable[
        [MemoryObjectReceiveStream[T], MemoryObjectSendStream[U]], Coroutine[Any, Any, None]
    ],
    receive: MemoryObjectReceiveStream[T],
    send: MemoryObjectSendStream[U],
    *,
    limit: int,
) -> None:
    """Run `limit` copies of `worker`, each over its own clone of both channel halves.

    The output closes when every worker has finished, which is how end-of-input flows on.
    """
    async with receive, send, anyio.create_task_group() as tg:
        for _ in range(limit):
            tg.start_soon(worker, receive.clone(), send.clone())
