"""The bulk path: `ADD_CONTACTS` activities for batches of 25 or more contacts.

Each batch is encoded (≤ 20,000 rows, ≤ 4 MB), submitted under the rate governor, polled
with backoff until `COMPLETE` or `ERROR`, and its line errors are mapped back to rows.

Bulk add is documented to *append* memberships, but that is inferred for v1, not confirmed
(API doc §6.3). So the first batch that holds contacts already on other lists is checked:
before it is submitted, a sample of those contacts is read; after it completes, they are
read again. If any lost a list, the bulk path is switched off for the run, the sampled
contacts are repaired, and that batch and every later one go contact by contact. Other
batches wait for that check before they submit.

An activity that ends in `ERROR`, cannot be submitted, or does not finish within
`poll_timeout` sends its contacts through the per-contact path, which is safe to repeat
(the union is idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.activities import (
    COLUMN_NAMES,
    ActivityTooLargeError,
    encode_add_contacts,
    line_number,
)
from engine.api.client import Account
from engine.api.codec import merge_contact_lists
from engine.api.records import Activity, ContactEntry, uri_key
from engine.errors import (
    ApiError,
    ConnectionLostError,
    FatalApiError,
    QuotaExhaustedError,
)
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Batch, Contact, Outcome
from engine.pipeline.stats import RunStats

__all__ = ["BulkPath"]

log = logging.getLogger("engine.bulk")


class BulkPath:
    """Runs bulk batches; falls back to the per-contact path when bulk cannot be trusted.

    Args:
        account: the API.
        config: poll timing, caps and sample size.
        stats: the run's counters.
        send_contacts: the per-contact path's input, for fallbacks.
        on_submitted: called with each activity and its batch as soon as its id is known.
    """

    def __init__(
        self,
        account: Account,
        config: MigrationConfig,
        stats: RunStats,
        send_contacts: MemoryObjectSendStream[Contact],
        on_submitted: Callable[[Activity, Batch], None] | None = None,
    ) -> None:
        self.account = account
        self.config = config
        self.stats = stats
        self._send_contacts = send_contacts
        self._on_submitted = on_submitted
        self.enabled = True
        self.verified = False
        self._check_lock = anyio.Lock()
        self.warnings: list[str] = []
        self.fallbacks = 0

    async def run(
        self,
        receive_batches: MemoryObjectReceiveStream[Batch],
        send_outcomes: MemoryObjectSendStream[Outcome],
    ) -> None:
        """The stage: up to `limits.bulk` batches in flight."""
        stage = self.stats.stages["bulk"]
        async with receive_batches, send_outcomes, self._send_contacts:
            slots = anyio.Semaphore(self.config.limits.bulk)

            async def one(batch: Batch) -> None:
                stage.busy += len(batch.contacts)
                try:
                    for outcome in await self.run_batch(batch):
                        await send_outcomes.send(outcome)
                finally:
                    stage.busy -= len(batch.contacts)
                    stage.done += len(batch.contacts)
                    slots.release()

            async with anyio.create_task_group() as tg:
                async for batch in receive_batches:
                    await slots.acquire()  # backpressure: take a batch only when one can run
                    tg.start_soon(one, batch)

    async def run_batch(self, batch: Batch) -> list[Outcome]:
        """Run one batch; return the outcomes of the contacts it settled.

        Contacts sent to the per-contact path get their outcome there instead.
        """
        skipped: list[Outcome] = []
        if self.config.skip_removed:
            batch, skipped = await self._without_removed(batch)
            if not batch.contacts:
                return skipped
        return skipped + await self._run_batch(batch)

    async def _run_batch(self, batch: Batch) -> list[Outcome]:
        if self._needs_check():
            async with self._check_lock:
                # Checked again: another batch may have done the check while this one waited.
                if self._needs_check():
                    return await self._run(batch, check=True)
        if not self.enabled:
            await self._fall_back(batch.contacts, "bulk path switched off")
            return []
        return await self._run(batch, check=False)

    async def _without_removed(self, batch: Batch) -> tuple[Batch, list[Outcome]]:
        """The batch without its Removed contacts, and their `skipped` outcomes.

        An add activity makes a Removed contact Active again; with `skip_removed` they must
        be left alone, so their status is looked up first (50 emails a search).
        """
        found = await self.account.search_contacts([c.email for c in batch.contacts])
        removed = {e for e, s in found.items() if s.status.strip().lower() == "removed"}
        skipped = [
            Outcome(c.email, "skipped", tuple(c.rows), "removed", path="bulk")
            for c in batch.contacts
            if c.email in removed
        ]
        rest = tuple(c for c in batch.contacts if c.email not in removed)
        return Batch(rest, batch.targets), skipped

    def _needs_check(self) -> bool:
        return self.enabled and not self.verified

    async def _run(self, batch: Batch, *, check: bool) -> list[Outcome]:
        before = await self._sample(batch) if check and self.config.sample_size else {}
        try:
            activities = await self._submit(batch.contacts, batch)
            finished = [await self._poll(a) for a, _ in activities]
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError):
            raise
        except (ApiError, TimeoutError) as exc:
            await self._fall_back(batch.contacts, f"activity failed: {exc}")
            return []
        # Only a completed activity proves anything: one that ended in ERROR applied
        # nothing, so its sampled contacts lack the targets without having lost a list.
        # The check then waits for a later batch, and these contacts fall back below.
        if before and all(a.status.upper() == "COMPLETE" for a in finished):
            lost = await self._check(before, batch.targets)
            if lost:
                await self._switch_off(lost, before, batch)
                return []
            self.verified = True
        outcomes: list[Outcome] = []
        for activity, (_, contacts) in zip(finished, activities, strict=True):
            if activity.status.upper() != "COMPLETE":
                await self._fall_back(contacts, f"activity {activity.key} ended {activity.status}")
                continue
            outcomes += self._outcomes(activity, contacts, tuple(batch.targets))
        return outcomes

    async def _submit(
        self, contacts: tuple[Contact, ...], batch: Batch
    ) -> list[tuple[Activity, tuple[Contact, ...]]]:
        fields = sorted(
            {f for c in contacts for f in c.fields if f in COLUMN_NAMES and f != "EmailAddress"}
        )
        rows = [{"EmailAddress": c.email, **c.fields} for c in contacts]
        try:
            body = encode_add_contacts(
                rows,
                list(batch.targets.values()),
                fields=fields,
                max_rows=self.config.bulk_max_rows,
                max_bytes=self.config.bulk_max_bytes,
            )
        except ActivityTooLargeError:
            if len(contacts) == 1:
                raise
            half = len(contacts) // 2
            return [
                *await self._submit(contacts[:half], batch),
                *await self._submit(contacts[half:], batch),
            ]
        activity = await self.account.submit_activity(body)
        self.stats.activities += 1
        if self._on_submitted is not None:
            self._on_submitted(activity, Batch(contacts, batch.targets))
        log.info("activity %s submitted with %d contacts", activity.key, len(contacts))
        return [(activity, contacts)]

    async def _poll(self, activity: Activity) -> Activity:
        delay = self.config.poll_initial
        with anyio.fail_after(self.config.poll_timeout):
            while not activity.finished:
                await anyio.sleep(delay)
                delay = min(self.config.poll_max, max(delay * 2, 0.01))
                activity = await self.account.get_activity(activity.key)
                self.stats.polls += 1
        return activity

    def _outcomes(
        self, activity: Activity, contacts: tuple[Contact, ...], targets: tuple[str, ...]
    ) -> list[Outcome]:
        by_line = {line_number(i): c for i, c in enumerate(contacts)}
        by_email = {c.email: c for c in contacts}
        settled: dict[str, Outcome] = {}
        for error in activity.errors:
            contact = by_line.get(error.line_number)
            if contact is None or contact.email != error.email.strip().lower():
                contact = by_email.get(error.email.strip().lower(), contact)
            if contact is None:
                log.warning("activity %s: an error names no row: %s", activity.key, error)
                continue
            message = error.message.lower()
            rows = tuple(contact.rows)
            if "do not mail" in message or "do-not-mail" in message or "opted out" in message:
                outcome = Outcome(contact.email, "skipped", rows, "opted-out", path="bulk")
            elif "invalid" in message:
                outcome = Outcome(contact.email, "rejected", rows, error.message, path="bulk")
            else:
                outcome = Outcome(contact.email, "failed", rows, error.message, path="bulk")
            settled[contact.email] = outcome
        return [
            settled.get(c.email)
            or Outcome(c.email, "bulk_added", tuple(c.rows), lists_added=targets, path="bulk")
            for c in contacts
        ]

    async def _fall_back(self, contacts: tuple[Contact, ...], why: str) -> None:
        self.fallbacks += 1
        log.warning("%d contacts go contact by contact: %s", len(contacts), why)
        for contact in contacts:
            await self._send_contacts.send(contact)

    # --- the membership check -------------------------------------------------------

    async def _sample(self, batch: Batch) -> dict[str, ContactEntry]:
        """Entries of up to `sample_size` contacts of the batch that are on other lists."""
        emails = [c.email for c in batch.contacts[:50]]
        found = await self.account.search_contacts(emails)
        sample: dict[str, ContactEntry] = {}
        for summary in list(found.values())[: self.config.sample_size * 3]:
            if summary.status.strip().lower() == "do not mail":
                continue
            entry = await self.account.get_contact(summary.key)
            if entry.list_keys - set(batch.targets):
                sample[entry.key] = entry
            if len(sample) >= self.config.sample_size:
                break
        return sample

    async def _check(
        self, before: dict[str, ContactEntry], targets: dict[str, str]
    ) -> dict[str, frozenset[str]]:
        """Sampled contact key -> lists it lost (before ∪ targets minus after)."""
        lost: dict[str, frozenset[str]] = {}
        for key, entry in before.items():
            after = await self.account.get_contact(key)
            missing = (entry.list_keys | set(targets)) - after.list_keys
            if missing:
                lost[key] = missing
        return lost

    async def _switch_off(
        self, lost: dict[str, frozenset[str]], before: dict[str, ContactEntry], batch: Batch
    ) -> None:
        self.enabled = False
        self.verified = True
        message = (
            f"bulk activities did NOT keep existing memberships: {len(lost)} of {len(before)} "
            "sampled contacts lost lists. The bulk path is switched off for this run and the "
            "rest goes contact by contact; the sampled contacts were repaired. Other contacts "
            "of that first activity may have lost lists: check them with `audit`."
        )
        self.warnings.append(message)
        log.error(message)
        for key, entry in before.items():
            current = await self.account.get_contact(key)
            wanted = {uri_key(uri): uri for uri in entry.lists}
            wanted.update(batch.targets)
            body = merge_contact_lists(current, wanted)
            if body is not None:
                await self.account.put_contact(current, body)
        await self._fall_back(batch.contacts, "bulk path switched off")
