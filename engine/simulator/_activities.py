"""What both simulators share to run bulk activities in the background: one task per
activity, over a small store protocol, paced by settings.

Each activity waits its own delay, drawn around the mean with seeded jitter (so activities
finish out of order), turns running after a share of it, and is then processed: all at once
in chunks (v1: running at half the delay, done at the delay) or at a number of rows per
second (V3: running at the delay). Like the real servers, the runner never abandons an
activity: started on a store that holds unfinished ones (left by an app that stopped, or
loaded from a state file), it runs them to the end, or ends them failed when asked to. One
activity that cannot go on ends failed; the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Protocol

__all__ = ["ACTIVITY_CHUNK", "ACTIVITY_TICK", "ActivityRunner", "ActivityStore"]

log = logging.getLogger("engine.simulator")

#: Largest batch of rows applied between two chances for other requests.
ACTIVITY_CHUNK = 2000
#: Seconds between two processing steps of an activity paced in rows per second.
ACTIVITY_TICK = 0.05


class ActivityStore(Protocol):
    """What the runner needs of an account store."""

    #: Activities a running app has scheduled (not saved): an app started on the store
    #: adopts the unfinished activities that are not in it.
    claimed_activities: set[str]
    #: Bumped on every activity step, for a saver to know the state changed.
    revision: int

    def unfinished_activities(self) -> list[str]:
        """Ids of the activities not in a terminal state, oldest first."""
        ...

    def start_activity(self, activity_id: str, /) -> None:
        """Mark an activity running (no-op when it already is, or is done)."""
        ...

    def process_activity(self, activity_id: str, max_rows: int, /) -> bool:
        """Apply up to `max_rows` more rows: whether the activity is finished (then in its
        terminal state)."""
        ...

    def fail_activity(self, activity_id: str, /) -> None:
        """End an unfinished activity failed, applying nothing more."""
        ...


class ActivityRunner:
    """Runs a store's activities in the background, one task each.

    Args:
        store: The account.
        rng: The app's seeded generator, for the delays' jitter.
        delay: Mean seconds from scheduling to the end of the wait.
        jitter: Each delay is drawn uniformly in `delay * (1 ± jitter)` (no draw when 0).
        running_at: Share of its delay after which an activity turns running (v1: 0.5).
        rows_per_second: Processing pace after the delay; `None`: all rows at once, a chunk
            at a time so other requests are served in between.
        fail_unfinished: End the unfinished activities the app finds on the store failed
            instead of running them (a server that lost its queue).
    """

    def __init__(
        self,
        store: ActivityStore,
        rng: random.Random,
        *,
        delay: float,
        jitter: float = 0.0,
        running_at: float = 1.0,
        rows_per_second: float | None = None,
        fail_unfinished: bool = False,
    ) -> None:
        self._store = store
        self._rng = rng
        self._delay = delay
        self._jitter = jitter
        self._running_at = running_at
        self._fail_unfinished = fail_unfinished
        if rows_per_second is None:
            self._step, self._pause = ACTIVITY_CHUNK, 0.0
        else:
            self._step = min(ACTIVITY_CHUNK, max(1, int(rows_per_second * ACTIVITY_TICK)))
            self._pause = self._step / rows_per_second
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def schedule(self, activity_id: str, *, delay: float | None = None) -> None:
        """Start running an activity the store holds, unless an app already claimed it.

        Args:
            activity_id: The activity.
            delay: Its delay; drawn around the mean by default.
        """
        store = self._store
        if activity_id in store.claimed_activities:
            return
        store.claimed_activities.add(activity_id)
        if delay is None:
            spread = self._jitter * self._rng.uniform(-1.0, 1.0) if self._jitter else 0.0
            delay = self._delay * (1.0 + spread)
        task = asyncio.get_running_loop().create_task(
            self._run(activity_id, delay), name=f"ctct-sim-activity-{activity_id}"
        )
        self._tasks[activity_id] = task

    async def _run(self, activity_id: str, delay: float) -> None:
        store = self._store
        try:
            running_after = delay * self._running_at
            await asyncio.sleep(running_after)
            store.start_activity(activity_id)
            store.revision += 1
            if delay > running_after:
                await asyncio.sleep(delay - running_after)
            while not store.process_activity(activity_id, self._step):
                store.revision += 1
                await asyncio.sleep(self._pause)
        except Exception as exc:  # one bad activity must never stop the others
            log.warning("activity %s cannot go on (%r): it ends failed", activity_id, exc)
            store.fail_activity(activity_id)
        finally:
            store.revision += 1
            store.claimed_activities.discard(activity_id)
            self._tasks.pop(activity_id, None)

    def adopt_unfinished(self) -> None:
        """Take over the store's unfinished activities that no running app serves: run each
        from where it stopped after a fresh delay, or end it failed (`fail_unfinished`)."""
        store = self._store
        for activity_id in store.unfinished_activities():
            if activity_id in store.claimed_activities:
                continue
            if self._fail_unfinished:
                store.fail_activity(activity_id)
                store.revision += 1
            else:
                self.schedule(activity_id)

    async def run(self) -> None:
        """Adopt the store's unfinished activities, then wait until cancelled; cancelling
        stops every running activity and hands it back to the store (for the next app)."""
        self.adopt_unfinished()
        try:
            await asyncio.Event().wait()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
