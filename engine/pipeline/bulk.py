"""The bulk path: bulk activities for batches of 25 or more contacts.

Each batch is encoded by the backend within its caps (v1: `ADD_CONTACTS`, ≤ 20,000 rows,
≤ 4 MB), submitted under the rate governor, polled with backoff until it is complete or has
failed, and settled contact by contact by the backend (v1 maps its line errors back to rows);
what the backend cannot vouch for goes through the per-contact path.

That bulk add *appends* memberships is documented for v3 and inferred, not confirmed, for v1
(API doc §6.3). So bulk is trusted only after a probe has completed and passed: the batch is
looked up until `probe_size` *witnesses* are found, existing contacts on lists other than the
targets, each read in full (v3's lookup carries the lists: no second read), several lookups
at once where a lookup takes one email (v3; there, when the first lookups find too few, the
members of every other list are read instead, 500 a request, whenever that is cheaper than a
lookup per contact left: a batch of new contacts then costs a few requests, not one each).
They go first, in an activity of their own, and are read again after it. If any lost a
list, each witness is repaired, the bulk path is switched off for the run, and everything
goes contact by contact. Until the probe has passed, nothing unverified goes out in bulk: when
it cannot conclude (its activity failed, a lookup or a read failed), the batch goes contact by
contact and the next batch probes again. A batch with no witness at all, every existing
contact of it read and found on no other list, cannot lose a membership even on a replacing
server, so it is submitted. Other batches wait for the probe before they submit.

An activity that fails, cannot be submitted, shows no change of status for `stall_timeout`
(stuck), or does not finish within `poll_timeout` sends its contacts through the per-contact
path, which is safe to repeat (the union is idempotent); each of those contacts' outcomes
carries a note saying why. While activities are polled, the run's stats show each one's status
and how long it has not changed, and a warning is logged when one has not moved for a third of
`stall_timeout`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from contextlib import aclosing
from itertools import chain
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.backend.protocol import (
    Backend,
    BulkActivity,
    BulkResult,
    Capabilities,
    ContactRef,
    ContactState,
    ContactStatus,
    ListReader,
    UntouchableIndex,
)
from engine.backend.retry import SINGLE_ATTEMPT
from engine.crashpoints import crash_point
from engine.errors import (
    ActivityTooLargeError,
    ApiError,
    ConnectionLostError,
    FatalApiError,
    QuotaExhaustedError,
    RetryableApiError,
)
from engine.journal import PendingActivity
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Batch, BulkAdded, Contact, Outcome, OutcomeKind, Recorded
from engine.pipeline.stats import ActivityWait, RunStats
from engine.pipeline.streams import send_soon

__all__ = ["BulkPath", "field_groups", "lookup_window", "scan_plan", "scan_witnesses"]

#: A chunk of contacts (as many emails as one lookup takes) and what its lookup found, or
#: the error it failed with.
Lookup = tuple[tuple[Contact, ...], "dict[str, ContactRef | ContactState] | ApiError"]

log = logging.getLogger("engine.bulk")


def field_groups(
    contacts: tuple[Contact, ...], writable: Collection[str]
) -> dict[tuple[str, ...], list[Contact]]:
    """The contacts by the `writable` fields they give (one activity each): a contact is
    sent with exactly its row's fields, since an empty cell may clear a field (see
    `_submit`)."""
    groups: dict[tuple[str, ...], list[Contact]] = {}
    for contact in contacts:
        columns = tuple(sorted(f for f in contact.fields if f in writable))
        groups.setdefault(columns, []).append(contact)
    return groups


def lookup_window(capabilities: Capabilities, config: MigrationConfig) -> int:
    """Contacts the bulk path looks up at once: one request's worth (50 on v1), or, on an
    API that takes one email a lookup (v3), as many lookups as the fetch stage keeps in
    flight."""
    if capabilities.lookup_batch > 1:
        return capabilities.lookup_batch
    return max(config.limits.fetch, config.limits.put)


async def scan_plan(backend: Backend, targets: Collection[str], left: int) -> list[str] | None:
    """The lists whose members a witness search reads instead of looking up `left` more
    contacts one by one: every list but the targets (only a contact on one of them can lose
    a list). None when that costs as many requests or more, when the backend cannot read a
    list's members with their lists, or when a list's size is unknown. Every such list is
    read, even one said to be empty: its count only prices the scan."""
    capabilities = backend.capabilities
    page = capabilities.list_page
    if not page or capabilities.lookup_batch > 1 or not isinstance(backend, ListReader):
        return None
    others = [info for info in await backend.lists() if info.id not in targets]
    if any(info.members is None for info in others):
        return None
    cost = sum(max(1, math.ceil((info.members or 0) / page)) for info in others)
    return [info.id for info in others] if cost < left else None


async def scan_witnesses(
    backend: ListReader,
    lists: Sequence[str],
    emails: Collection[str],
    targets: Collection[str],
    size: int,
    witnesses: dict[str, ContactState],
) -> bool:
    """Add to `witnesses` (contact id -> state) the contacts of `emails` found among the
    members of `lists` on a list other than `targets`, read with their lists (many a
    request), until there are `size`. Returns whether the lists were read to the end: then
    every contact that could lose a list was seen, and one of `emails` not among the
    witnesses has none to lose (new, on the targets only, or opted out and left out)."""
    for list_id in lists:
        async with aclosing(backend.list_contacts(list_id)) as members:
            async for state in members:
                ref = state.ref
                if ref.email not in emails or ref.status == "opted_out":
                    continue
                if not state.list_ids.issubset(targets):
                    witnesses[ref.id] = state
                    if len(witnesses) >= size:
                        return False
    return True


def _ref(hit: ContactRef | ContactState) -> ContactRef:
    return hit.ref if isinstance(hit, ContactState) else hit


#: Contacts per `BulkAdded`: the record stage takes one item at a time, and one of this
#: size holds the event loop about a millisecond.
ADDED_CHUNK = 1000


def _settled(
    group: Batch, results: Sequence[BulkResult], targets: tuple[str, ...]
) -> Iterator[Recorded]:
    """The outcomes of the contacts of an activity the backend vouched for: those it added
    together (a `BulkAdded` for each `ADDED_CHUNK`), an `Outcome` for each other one."""
    emails: list[str] = []
    rows: list[list[int]] = []
    for (email, lines), result in zip(group.keys(), results, strict=True):
        if result.kind == "added":
            emails.append(email)
            rows.append(lines)
            if len(emails) >= ADDED_CHUNK:
                yield BulkAdded(emails, rows, targets, anyio.Event())
                emails, rows = [], []
        elif result.kind != "unknown":
            kind: OutcomeKind
            if result.kind == "opted_out":
                kind, reason = "skipped", "opted-out"
            elif result.kind == "invalid":
                kind, reason = "rejected", result.reason
            else:
                kind, reason = "failed", result.reason
            yield Outcome(email, kind, tuple(lines), reason, (), "bulk", targets)
    if emails:
        yield BulkAdded(emails, rows, targets, anyio.Event())


A = TypeVar("A")
B = TypeVar("B")


async def _both(
    first: Callable[[], Awaitable[A]], second: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """`first()` and `second()` at once. An error of either cancels the other and is raised
    as itself, not in an exception group (the callers tell errors apart by their class)."""
    results: list[Any] = [None, None]
    errors: list[Exception] = []

    async def run(index: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[index] = await call()
        except Exception as exc:
            errors.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    if errors:
        raise errors[0]
    return results[0], results[1]


class Stopping(Exception):
    """The run is stopping: leave the activity to the journal and a resumed run."""


class ActivityStuckError(TimeoutError):
    """An activity's status did not change for `stall_timeout` seconds."""


class ForeignActivityError(ApiError):
    """A journaled activity id answers with an activity the engine did not submit."""


class BulkPath:
    """Runs bulk batches; falls back to the per-contact path when bulk cannot be trusted.

    Args:
        backend: the API.
        config: poll timing, caps and sample size.
        stats: the run's counters.
        send_contacts: the per-contact path's input, for fallbacks.
        on_submitted: called with each activity and its contacts (packed) as soon as its id
            is known.
        stop: set when the run is stopping: no more activities are submitted.
        intend: awaited with each activity's emails and targets before it is posted (the
            journal's record of a write about to go, for a run killed before it learns the
            activity's id).
    """

    def __init__(
        self,
        backend: Backend,
        config: MigrationConfig,
        stats: RunStats,
        send_contacts: MemoryObjectSendStream[Contact],
        on_submitted: Callable[[BulkActivity, Batch], Awaitable[None]] | None = None,
        stop: anyio.Event | None = None,
        intend: Callable[[list[str], tuple[str, ...]], Awaitable[None]] | None = None,
    ) -> None:
        self.backend = backend
        self._intend = intend
        self.config = config
        self.stats = stats
        self._send_contacts = send_contacts
        self._on_submitted = on_submitted
        self._stop = stop
        self.enabled = True
        self.verified = False
        self._check_lock = anyio.Lock()
        self._post_lock = anyio.Lock()
        self.warnings: list[str] = []
        #: email -> why it was sent contact by contact (put on its outcome by the record stage).
        self.notes: dict[str, str] = {}
        #: emails sent contact by contact after an activity that may have run.
        self.maybe_added: set[str] = set()
        # The per-contact input is shared by `run` and `resume`: closed when both are done.
        self._senders = 2

    def _release_send_contacts(self) -> None:
        self._senders -= 1
        if self._senders == 0:
            self._send_contacts.close()

    async def run(
        self,
        receive_batches: MemoryObjectReceiveStream[Batch],
        send_outcomes: MemoryObjectSendStream[Recorded],
    ) -> None:
        """The stage: up to `limits.bulk` batches in flight."""
        try:
            await self._run_stage(receive_batches, send_outcomes)
        finally:
            self._release_send_contacts()

    async def _run_stage(
        self,
        receive_batches: MemoryObjectReceiveStream[Batch],
        send_outcomes: MemoryObjectSendStream[Recorded],
    ) -> None:
        stage = self.stats.stages["bulk"]
        async with receive_batches, send_outcomes:
            slots = anyio.Semaphore(self.config.limits.bulk)

            async def one(batch: Batch) -> None:
                stage.busy += batch.size
                self.stats.batches_open += 1
                self.stats.batches_seen += 1
                try:
                    if self._stop is not None and self._stop.is_set():
                        return  # not sent: these contacts are redone by a resumed run
                    last: BulkAdded | None = None
                    for outcome in await self.run_batch(batch):  # made one at a time
                        await send_soon(send_outcomes, outcome)
                        if isinstance(outcome, BulkAdded):
                            last = outcome
                    if last is not None and last.recorded is not None:
                        await last.recorded.wait()  # and so all of them: recorded in order
                except Stopping:
                    return
                finally:
                    stage.busy -= batch.size
                    stage.done += batch.size
                    self.stats.batches_open -= 1
                    slots.release()

            async with anyio.create_task_group() as tg:
                async for batch in receive_batches:
                    await slots.acquire()  # backpressure: take a batch only when one can run
                    tg.start_soon(one, batch)
                    del batch

    async def run_batch(self, batch: Batch) -> Iterable[Recorded]:
        """Run one batch; return the outcomes of the contacts it settled, made as they are
        read (an activity's are tens of thousands: never all objects at once).

        Contacts sent to the per-contact path get their outcome there instead.
        """
        skipped: list[Outcome] = []
        revives = self.backend.capabilities.bulk_revives_deleted
        if self.config.skip_removed or self.config.lists_only or revives:
            batch, skipped = await self._looked_up(batch)
            if not batch.size:
                return skipped
        return chain(skipped, await self._run_batch(batch))

    async def _run_batch(self, batch: Batch) -> Iterable[Recorded]:
        if self._needs_check():
            probed: tuple[Iterable[Recorded], Batch | None] | None = None
            async with self._check_lock:
                # Checked again: another batch may have done the check while this one waited.
                if self._needs_check():
                    probed = await self._probe(batch)
            if probed is not None:
                # What the probe leaves goes once the lock is released: the batches waiting
                # for the verdict need not wait for this batch's activity as well.
                outcomes, rest = probed
                if rest is None:
                    return outcomes
                return chain(outcomes, (await self._submit_and_settle(rest))[0])
        if not self.enabled:
            await self._fall_back(batch.contacts, "bulk path switched off")
            return []
        return (await self._submit_and_settle(batch))[0]

    async def _looked_up(self, batch: Batch) -> tuple[Batch, list[Outcome]]:
        """The batch after looking up its contacts' status (as many emails a request as the
        backend's lookup takes), with the `skipped` outcomes of those it leaves out.

        An add activity makes a Removed contact Active again: with `skip_removed` they are
        left out. An opted-out contact is left out always (an import may write its fields:
        I2), and so is a deleted one (an API whose bulk requests revive deleted contacts
        lists both kinds, 500 a request on v3, instead of a lookup per contact). With
        `lists_only`, an existing contact goes with its email only, so the activity changes
        none of its fields (a new contact keeps its fields). A lookup that fails leaves its
        contacts' status unknown, never "absent": they go contact by contact, where each is
        read before any write.
        """
        untouchable = None
        if not (self.config.skip_removed or self.config.lists_only):
            # Only deleted and opted-out contacts matter here: listed, not looked up.
            untouchable = await self._untouchable()
            if untouchable is not None and untouchable.keys().isdisjoint(batch.emails()):
                return batch, []  # none of them is deleted or opted out: sent as it is
        contacts = batch.contacts
        found: dict[str, str] = {}  # email -> status, of the contacts that exist
        unknown: list[Contact] = []
        if untouchable is not None:
            found = {c.email: untouchable[c.email] for c in contacts if c.email in untouchable}
            contacts_to_look_up: tuple[Contact, ...] = ()
        else:
            contacts_to_look_up = contacts
        for start in range(0, len(contacts_to_look_up), self._lookup_window):
            window = contacts_to_look_up[start : start + self._lookup_window]
            for chunk, page in await self._lookups(window):
                if isinstance(page, ApiError):
                    log.info(
                        "a status lookup failed (%s): its contacts go contact by contact", page
                    )
                    unknown += chunk
                    continue
                found.update((e, _ref(hit).status) for e, hit in page.items())
        if unknown:
            await self._fall_back(tuple(unknown), "their status could not be looked up")
        # With `revive_deleted`, a deleted contact is revived contact by contact (its own
        # write, reported as such), whatever a bulk request does to deleted contacts.
        revived = tuple(
            c for c in contacts if self.config.revive_deleted and found.get(c.email) == "deleted"
        )
        if revived:
            await self._fall_back(revived, "deleted contacts are revived contact by contact")
        # Left out, never sent in bulk: an opted-out contact (I2: a bulk request may write
        # its fields), a deleted one (a bulk request would revive it), and a Removed one with
        # `skip_removed` (an add would make it Active again).
        left_out = {
            e: "opted-out" if status == "opted_out" else status
            for e, status in found.items()
            if status == "opted_out"
            or (status == "deleted" and not self.config.revive_deleted)
            or (status == "removed" and self.config.skip_removed)
        }
        skipped = [
            Outcome(c.email, "skipped", tuple(c.rows), left_out[c.email], path="bulk")
            for c in contacts
            if c.email in left_out
        ]
        gone = set(left_out) | {c.email for c in (*unknown, *revived)}
        kept = tuple(
            Contact(c.email, c.targets, {}, c.rows)
            if self.config.lists_only and c.email in found and c.fields
            else c
            for c in contacts
            if c.email not in gone
        )
        return Batch(kept, batch.targets), skipped

    async def _untouchable(self) -> dict[str, ContactStatus] | None:
        """The account's deleted and opted-out contacts, read now, when the backend lists
        them cheaply (v3: 500 a request instead of a lookup per contact); None otherwise, or
        when the read fails (the batch is then looked up contact by contact: never "not
        deleted" by default)."""
        if not isinstance(self.backend, UntouchableIndex):
            return None
        try:
            return await self.backend.untouchable_contacts()
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError):
            raise
        except ApiError as exc:
            log.info("the deleted and opted-out contacts could not be listed (%s)", exc)
            return None

    def _needs_check(self) -> bool:
        return self.enabled and not self.verified and self.config.probe_size > 0

    async def _probe(self, batch: Batch) -> tuple[Iterable[Recorded], Batch | None]:
        """Prove that bulk appends with a few contacts of the batch, read before and after
        their own activity. Returns their outcomes and what of the batch may go in bulk
        after them: the rest when the probe passed, the whole batch when none of it is on
        another list (nothing to lose); None when nothing more goes in bulk (there is no
        rest, or it went contact by contact).

        Its lookups and reads go at once (a round trip each, whatever the latency) over a
        connection pool of their own, closed when the probe ends (`Backend.burst`): on the
        run's pool, their connections would stay open to the end."""
        async with self.backend.burst():
            return await self._probe_in_burst(batch)

    async def _probe_in_burst(self, batch: Batch) -> tuple[Iterable[Recorded], Batch | None]:
        try:
            witnesses, scanned_all = await self._witnesses(batch)
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError):
            raise
        except (ApiError, TimeoutError) as exc:
            await self._fall_back(
                batch.contacts, f"bulk not verified yet: the probe failed ({exc})"
            )
            return [], None
        if not witnesses:
            if scanned_all:  # no contact of the batch is on another list: nothing to lose
                return [], batch
            await self._fall_back(batch.contacts, "bulk not verified yet: a probe read failed")
            return [], None
        chosen = {state.ref.email for state in witnesses.values()}
        probe, rest = batch.split(chosen)  # packed while the probe's activity runs
        outcomes, verdict = await self._submit_and_settle(probe, before=witnesses)
        if verdict == "passed":
            return outcomes, rest if rest.size else None
        if verdict == "failed":
            await self._fall_back(rest.contacts, "bulk path switched off")
        else:
            await self._fall_back(rest.contacts, f"bulk not verified yet: the probe was {verdict}")
        return outcomes, None

    async def _submit_and_settle(
        self, batch: Batch, *, before: dict[str, ContactState] | None = None
    ) -> tuple[Iterable[Recorded], str]:
        """Submit, poll, check (with `before`) and map outcomes.

        Returns the outcomes of the contacts it settled (the others went contact by contact)
        and, with `before`, the probe's verdict: "passed", "failed" (bulk switched off) or
        why it was inconclusive.
        """
        targets = batch.targets
        try:
            activities = await self._submit(batch)
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError, Stopping):
            raise
        except (ApiError, TimeoutError) as exc:
            await self._fall_back(batch.contacts, f"activity not submitted: {exc}")
            return [], f"inconclusive (its activity could not be submitted: {exc})"
        try:
            finished = [await self.wait_for(a, rows=group.rows) for a, group in activities]
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError, Stopping):
            raise
        except (ApiError, TimeoutError) as exc:  # submitted: it may have run, or still may
            await self._fall_back(batch.contacts, f"activity failed: {exc}", maybe_applied=True)
            return [], f"inconclusive (its activity failed: {exc})"
        crash_point("activity-complete")
        verdict = "unchecked"
        # Only a completed activity proves anything: one that failed applied nothing, so
        # its contacts lack the targets without having lost a list.
        results: list[list[BulkResult] | None] | None = None
        if before is not None:
            if all(a.state == "complete" for a in finished):
                # The probed contacts are read again while the activity's are settled (on
                # v3 a read of their list): two round trips at once. Settling writes
                # nothing, and when a list was lost its results are not used.
                (lost, checked), results = await _both(
                    lambda: self._check(before, targets),
                    lambda: self._results(finished, activities, targets),
                )
                if lost:
                    repaired = await self._switch_off(lost, before, batch.contacts, targets)
                    return repaired, "failed"
                if checked:
                    self.verified = self.stats.bulk_verified = True
                    verdict = "passed"
                else:
                    verdict = "inconclusive (no probed contact could be read back)"
            else:
                verdict = "inconclusive (its activity did not complete)"
        return await self._settle(finished, activities, targets, results), verdict

    async def _results(
        self,
        finished: list[BulkActivity],
        activities: list[tuple[BulkActivity, Batch]],
        targets: tuple[str, ...],
    ) -> list[list[BulkResult] | None]:
        """What the backend says of each completed activity's contacts (None for another)."""
        return [
            await self.backend.settle(activity, group.emails(), targets)
            if activity.state == "complete"
            else None
            for activity, (_, group) in zip(finished, activities, strict=True)
        ]

    async def _settle(
        self,
        finished: list[BulkActivity],
        activities: list[tuple[BulkActivity, Batch]],
        targets: tuple[str, ...],
        results: list[list[BulkResult] | None] | None = None,
    ) -> Iterable[Recorded]:
        """The outcomes of finished activities' contacts; those an activity cannot vouch for
        go contact by contact. `results`: the backend's, already read (`_results`)."""
        outcomes: list[Iterable[Recorded]] = []
        for index, (activity, (_, group)) in enumerate(zip(finished, activities, strict=True)):
            if activity.state != "complete":
                # One that ended part way may have added some: found on their targets, they
                # are `bulk_added`, not `unchanged`.
                await self._fall_back(
                    group.contacts,
                    f"activity {activity.id} ended {activity.status}",
                    maybe_applied=activity.partial,
                )
                continue
            read = None if results is None else results[index]
            settled, unknown = await self._outcomes(activity, group, targets, read)
            outcomes.append(settled)
            if unknown:
                await self._fall_back(
                    tuple(c for c in group.contacts if c.email in unknown),
                    f"activity {activity.id} did not say what it did to them",
                )
        return chain.from_iterable(outcomes)

    async def resume(
        self, pending: list[PendingActivity], send_outcomes: MemoryObjectSendStream[Recorded]
    ) -> None:
        """Settle activities an earlier run submitted: poll them instead of resubmitting.

        Whatever became of them (finished, `ERROR`, expired, stuck, or an id that now names
        another activity), their contacts end with an outcome: settled from the activity
        when it is the one journaled, or sent through the per-contact path.
        """
        try:
            await self._resume(pending, send_outcomes)
        finally:
            self._release_send_contacts()

    async def _resume(
        self, pending: list[PendingActivity], send_outcomes: MemoryObjectSendStream[Recorded]
    ) -> None:
        async with send_outcomes:
            for item in pending:
                activity = BulkActivity(item.id, "pending", "PENDING")
                try:
                    finished = await self.wait_for(
                        activity,
                        expected=item.insert_time,
                        rows=sum(len(c.rows) for c in item.contacts),
                    )
                except Stopping:
                    return
                except (FatalApiError, ConnectionLostError, QuotaExhaustedError):
                    raise
                except (ApiError, TimeoutError) as exc:  # e.g. 404: expired after 14 days
                    await self._fall_back(
                        item.contacts, f"activity {item.id}: {exc}", maybe_applied=True
                    )
                    continue
                for outcome in await self._settle(
                    [finished], [(finished, Batch(item.contacts, item.targets))], item.targets
                ):
                    await send_soon(send_outcomes, outcome)

    async def _submit(self, batch: Batch) -> list[tuple[BulkActivity, Batch]]:
        """Submit the contacts in one activity per set of fields they give.

        A contact is sent with exactly the fields its row gives: an activity's columns are
        the same for each of its rows, and an empty cell may clear a field on the server
        ([U] API doc §6.3), which the per-contact path never does. So contacts are grouped
        by the fields they give (a typical export has a few such groups). When they all give
        the same (`Batch.fields`), the batch is one activity, encoded from its packed text
        one contact at a time.
        """
        writable = self.backend.capabilities.fields
        if batch.fields is not None:
            columns = tuple(f for f in batch.fields if f in writable)
            return await self._submit_group(batch, columns)
        submitted: list[tuple[BulkActivity, Batch]] = []
        for columns, group in field_groups(batch.contacts, writable).items():
            submitted += await self._submit_group(Batch(group, batch.targets), columns)
        return submitted

    async def _submit_group(
        self, group: Batch, columns: tuple[str, ...]
    ) -> list[tuple[BulkActivity, Batch]]:
        """Submit a group of contacts in one activity, or in halves when they are too many
        for one; returns each activity with its contacts."""
        targets = group.targets
        try:
            request = self.backend.encode_bulk(
                group.pairs(),
                targets,
                columns,
                max_rows=self.config.max_rows,
                max_bytes=self.config.max_bytes,
            )
        except ActivityTooLargeError:
            if group.size == 1:
                raise
            contacts = group.contacts
            half = len(contacts) // 2
            first, second = Batch(contacts[:half], targets), Batch(contacts[half:], targets)
            del contacts  # packed while their activities run
            return [
                *await self._submit_group(first, columns),
                *await self._submit_group(second, columns),
            ]
        if self._stop is not None and self._stop.is_set():
            raise Stopping
        if self._intend is not None:
            await self._intend(group.emails(), targets)
        activity = await self._post_activity(request)
        self.stats.activities += 1
        crash_point("activity-submitted")
        if self._on_submitted is not None:
            await self._on_submitted(activity, group)
        crash_point("activity-journaled")
        log.info("activity %s submitted with %d contacts", activity.id, group.size)
        return [(activity, group)]

    async def _post_activity(self, request: object) -> BulkActivity:
        """POST an activity; after a lost answer, adopt the activity the server made of it
        instead of posting it again.

        An answer lost after the server applied the POST (a dropped connection, a timeout, a
        5xx from a proxy) would otherwise be retried blindly, and the account would run the
        activity twice, once unknown to the journal. So the ids of the newest activities are
        read before posting, and after a lost answer again: exactly one new activity is this
        one (posts are serialised by a lock, so no other batch of this run posts meanwhile),
        and it is adopted. With none the POST is sent again after the usual backoff; with
        several (another client posts too) the engine cannot tell, and posts again: a second
        activity adds the same memberships, which is harmless, and is the one settled.
        """
        started = time.monotonic()
        async with self._post_lock:
            known = {a.id for a in await self.backend.recent_activities()}
            attempt = 0
            while True:
                attempt += 1
                try:
                    return await self.backend.submit(request, retry=SINGLE_ATTEMPT)
                except RetryableApiError as error:
                    new = [a for a in await self.backend.recent_activities() if a.id not in known]
                    if len(new) == 1:
                        log.warning(
                            "the answer to an activity POST was lost (%s); the server had "
                            "made it activity %s: adopted, not posted again",
                            error,
                            new[0].id,
                        )
                        return new[0]
                    known.update(a.id for a in new)
                    await self.backend.back_off(attempt, error, started)

    async def wait_for(
        self, activity: BulkActivity, *, expected: str = "", rows: int = 0
    ) -> BulkActivity:
        """Poll until the activity finishes.

        `expected` is the creation stamp the server gave when the activity was submitted: an
        answer with another one is not the activity the journal knows (a server that lost
        its state gives ids again), so it is never used to settle anything.

        Raises:
            ForeignActivityError: the id now names another activity.
            ActivityStuckError: its status (and transaction count) did not change for
                `stall_timeout` seconds.
            TimeoutError: it did not finish within `poll_timeout` seconds.
        """
        config = self.config
        delay = config.poll_initial
        now = anyio.current_time()
        wait = ActivityWait(activity.id, activity.status, since=now, changed=now, rows=rows)
        self.stats.waiting[activity.id] = wait
        warned = False
        try:
            with anyio.move_on_after(config.poll_timeout) as scope:
                while not activity.finished:
                    await self._sleep_unless_stopped(delay)
                    delay = config.next_poll(delay)
                    seen = (activity.status, activity.progress)
                    activity = await self.backend.poll(activity.id)
                    self.stats.polls += 1
                    if expected and activity.created and activity.created != expected:
                        raise ForeignActivityError(
                            f"activity {activity.id} is not the one submitted (created "
                            f"{activity.created}, not {expected}): the server is not "
                            "the one the journal talked to"
                        )
                    now = anyio.current_time()
                    if (activity.status, activity.progress) != seen:
                        wait.status, wait.changed, warned = activity.status, now, False
                        continue
                    unchanged = now - wait.changed
                    if unchanged >= config.stall_timeout:
                        raise ActivityStuckError(
                            f"activity {activity.id} is stuck: {activity.status or 'no status'} "
                            f"with no change for {unchanged:.0f} s"
                        )
                    if not warned and unchanged >= config.stall_timeout / 3:
                        warned = True
                        log.warning(
                            "activity %s has been %s with no change for %.0f s; its contacts "
                            "go contact by contact if it has not moved after %.0f s",
                            activity.id,
                            activity.status,
                            unchanged,
                            config.stall_timeout,
                        )
            if scope.cancelled_caught:
                raise TimeoutError(
                    f"activity {activity.id} did not finish within {config.poll_timeout:.0f} s"
                )
            self.stats.activity_finished(anyio.current_time() - wait.since)  # for the ETA
        finally:
            self.stats.waiting.pop(wait.key, None)
        return activity

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        if self._stop is None:
            await anyio.sleep(seconds)
            return
        with anyio.move_on_after(seconds):
            await self._stop.wait()
        if self._stop.is_set():
            raise Stopping  # the journal knows the activity: a resumed run polls it

    async def _outcomes(
        self,
        activity: BulkActivity,
        group: Batch,
        targets: tuple[str, ...],
        results: list[BulkResult] | None = None,
    ) -> tuple[Iterator[Recorded], set[str]]:
        """The outcomes of a completed activity's contacts, as the backend settles them (made
        one at a time as they are read), and the emails it cannot vouch for (they go
        contact by contact). Read from the group's emails and rows only: its fields are not
        unpacked. `results`: the backend's, when they were read already."""
        if results is None:
            results = await self.backend.settle(activity, group.emails(), targets)
        unknown = {r.email for r in results if r.kind == "unknown"}
        return _settled(group, results, targets), unknown

    async def _fall_back(
        self, contacts: tuple[Contact, ...], why: str, *, maybe_applied: bool = False
    ) -> None:
        """Send `contacts` through the per-contact path, noting why on their outcomes.

        `maybe_applied`: their activity was submitted and may have run (its status is
        unknown, or it is stuck): one of them found already on its targets is then reported
        `bulk_added` (the activity did it), not `unchanged`.
        """
        log.warning("%d contacts go contact by contact: %s", len(contacts), why)
        note = f"sent contact by contact: {why}"
        for contact in contacts:
            self.notes[contact.email] = note
            if maybe_applied:
                self.maybe_added.add(contact.email)
            await self._send_contacts.send(contact)

    # --- the membership check -------------------------------------------------------

    async def _witnesses(self, batch: Batch) -> tuple[dict[str, ContactState], bool]:
        """Up to `probe_size` witnesses of the batch (contact id -> state read now), and
        whether the whole batch was looked at with every existing contact read.

        The batch is looked up (50 emails a request on v1, `_lookup_window` lookups at once
        on v3) until enough witnesses are found:
        existing contacts on lists other than the targets, which a replacing server would
        make lose a list. A failed lookup raises (an email not found must really be absent);
        a contact that cannot be read (gone since the lookup, a broken entry) is no witness,
        and then the batch cannot count as fully looked at.

        Where a lookup takes one email (v3) and the first window found too few, the rest is
        not looked up one by one when reading every other list's members costs fewer
        requests (`scan_plan`, `scan_witnesses`): a batch of new contacts would otherwise cost a
        lookup each, as much as the per-contact path.
        """
        size = self.config.probe_size
        witnesses: dict[str, ContactState] = {}
        unread = 0
        window = self._lookup_window
        # Unpacked a window at a time: the first is often all that is looked up.
        for start, contacts in zip(
            range(0, batch.size, window), batch.windows(window), strict=True
        ):
            if start == window:  # the first window found too few: is a scan cheaper?
                scan = await scan_plan(self.backend, batch.targets, batch.size - start)
                if scan is not None:  # the scan matches emails, not contacts
                    assert isinstance(self.backend, ListReader)
                    done = await scan_witnesses(
                        self.backend, scan, set(batch.emails()), batch.targets, size, witnesses
                    )
                    return witnesses, done and unread == 0
            hits: list[ContactRef | ContactState] = []
            for _, found in await self._lookups(contacts):
                if isinstance(found, ApiError):
                    raise found  # an email not found must really be absent
                hits += [hit for hit in found.values() if _ref(hit).status != "opted_out"]
            if self.backend.capabilities.lookup_has_lists:  # the lookup read them, just now
                states = [hit for hit in hits if isinstance(hit, ContactState)]
            else:
                states = await self._read_all(hits)
            unread += len(hits) - len(states)
            for state in states:
                if state.list_ids - set(batch.targets):
                    witnesses[state.ref.id] = state
                    if len(witnesses) >= size:
                        return witnesses, False
        return witnesses, unread == 0

    @property
    def _lookup_window(self) -> int:
        return lookup_window(self.backend.capabilities, self.config)

    async def _lookups(self, contacts: Sequence[Contact]) -> list[Lookup]:
        """Each chunk of `contacts` (as many emails as a lookup takes) with what its strict
        lookup found, or the `ApiError` it failed with; the chunks are looked up at once
        (the governor paces them). Fatal errors propagate."""
        step = self.backend.capabilities.lookup_batch
        chunks = [tuple(contacts[i : i + step]) for i in range(0, len(contacts), step)]
        results: list[Lookup] = []
        fatal: list[BaseException] = []

        async def one(chunk: tuple[Contact, ...]) -> None:
            try:
                page = await self.backend.find([c.email for c in chunk], strict=True)
            except (FatalApiError, ConnectionLostError, QuotaExhaustedError) as exc:
                fatal.append(exc)
                return
            except ApiError as exc:
                results.append((chunk, exc))
                return
            results.append((chunk, page))

        if len(chunks) == 1:
            await one(chunks[0])
        else:
            async with anyio.create_task_group() as tg:
                for chunk in chunks:
                    tg.start_soon(one, chunk)
        if fatal:
            raise fatal[0]  # not wrapped in an exception group: the run's handlers see it
        return results

    async def _read_all(self, hits: Sequence[ContactRef | ContactState]) -> list[ContactState]:
        """The contacts of `hits` that could be read, read concurrently (the governor bounds
        them); one that cannot be read (404, a broken entry) is left out."""
        states: dict[str, ContactState] = {}

        async def read(ref: ContactRef) -> None:
            try:
                states[ref.id] = await self.backend.read(ref)
            except (FatalApiError, ConnectionLostError, QuotaExhaustedError):
                raise
            except ApiError as exc:
                log.info("contact %s cannot be read for the bulk check: %s", ref.id, exc)

        async with anyio.create_task_group() as tg:
            for hit in hits:
                tg.start_soon(read, _ref(hit))
        return [states[_ref(hit).id] for hit in hits if _ref(hit).id in states]

    async def _check(
        self, before: dict[str, ContactState], targets: tuple[str, ...]
    ) -> tuple[dict[str, frozenset[str]], int]:
        """Probed contact id -> lists it lost (before ∪ targets minus after), and how many
        probed contacts could be read back."""
        lost: dict[str, frozenset[str]] = {}
        after_all = await self._read_all([state.ref for state in before.values()])
        for after in after_all:
            missing = (before[after.ref.id].list_ids | set(targets)) - after.list_ids
            if missing:
                lost[after.ref.id] = missing
        return lost, len(after_all)

    async def _switch_off(
        self,
        lost: dict[str, frozenset[str]],
        before: dict[str, ContactState],
        probe: tuple[Contact, ...],
        targets: tuple[str, ...],
    ) -> list[Outcome]:
        """Switch bulk off and repair each probed contact: the union of the lists it had and
        the targets, PUT from a fresh read. Returns the repaired contacts' outcomes (written
        to, so `updated`, with the lists they had before); one that cannot be repaired here
        goes contact by contact."""
        self.enabled = False
        self.verified = self.stats.bulk_verified = True
        message = (
            f"bulk activities did NOT keep existing memberships: {len(lost)} of {len(before)} "
            "probed contacts lost lists. They were repaired, the bulk path is switched off "
            "for this run, and every contact goes contact by contact."
        )
        self.warnings.append(message)
        log.error(message)
        by_email = {c.email: c for c in probe}
        outcomes: list[Outcome] = []
        for key, state in before.items():
            contact = by_email.pop(state.ref.email, None)
            try:
                current = await self.backend.read(state.ref)
                update = self.backend.add_lists(
                    current, tuple(dict.fromkeys((*state.lists, *targets)))
                )
                if update is not None:
                    await self.backend.update(update)
            except (FatalApiError, ConnectionLostError, QuotaExhaustedError):
                raise
            except ApiError as exc:  # its email goes contact by contact below, read afresh
                log.error("probed contact %s could not be repaired here: %s", key, exc)
                if contact is not None:
                    by_email[contact.email] = contact
                continue
            if contact is not None:
                outcomes.append(
                    Outcome(
                        contact.email,
                        "updated",
                        tuple(contact.rows),
                        "",
                        tuple(sorted(set(targets) - state.list_ids)),
                        "contact",
                        targets,
                        tuple(sorted(state.list_ids)),
                        note="probed in bulk: the activity dropped lists, repaired contact "
                        "by contact",
                    )
                )
        await self._fall_back(tuple(by_email.values()), "bulk path switched off")
        return outcomes
