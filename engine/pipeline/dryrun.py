"""`plan_migration`: what a run would do, without writing anything.

It reads the source and the account's lists, runs the real planner, and counts every request
each path would send, step by step as the stages send them:

- before the stages: the credentials check, the lists feed, each list to create, and with
  `snapshot` every list's members (one request per 50);
- per-contact path: one search per 50 contacts (v3: one per contact, with the lists); for an
  existing contact a GET (not on v3), then a PUT unless it needs none (already on its lists
  and no field to write), two more reads each with `verify_writes="all"`; on v3 an existing
  contact's lists go into appends of up to 500 ids, one list each, instead (per append a
  POST, its polls and a page of the list read back), after a PUT of its fields that names
  no list when the row changes any; for a new contact a POST; nothing for an opted-out contact;
- bulk path: with `skip_removed` or `lists_only`, one search per 50 contacts; until the probe
  has passed, the probe's scan (a search per 50 contacts and a read of each existing contact
  until `probe_size` witnesses are found; v3: after the first window of lookups, the members
  of every other list, 500 a request, when that is cheaper than a lookup each), the
  witnesses' activity and their reads after it;
  then one activity per set of fields the contacts give (and per `bulk_max_rows`), each a read
  of the activities feed, a POST and its polls while the server processes it.

Without `lookup` it cannot know which contacts exist: every contact is assumed to exist and to
need a write, the probe to find its witnesses among the first 50 contacts, and the figures
are upper bounds. With `lookup` it sends the reads the run would send to learn it (searches,
the probe's scan, the members of the target lists), so the figures are what the run sends
when nothing changes in between and no request is retried.

The time includes the wait for activities: `config.activity_seconds` per activity (the real
API takes from 30 s to 15 minutes, API doc §6.4), `limits.bulk` at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from engine.backend import as_backend
from engine.backend.protocol import (
    AccountReader,
    Backend,
    ContactRef,
    ContactState,
    ListInfo,
    ListReader,
)
from engine.backend.v1.client import Account
from engine.errors import ConfigError
from engine.pipeline.bulk import field_groups, lookup_window, scan_plan, scan_witnesses
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Batch, Contact, Outcome, Rejected, SourceRow
from engine.pipeline.plan import Planner
from engine.pipeline.read import Source, SourceReader
from engine.pipeline.run import verified_lists

__all__ = ["DryRunPlan", "plan_migration", "polls_for"]

#: Requests around each activity besides its polls: the activities feed read before the POST
#: (how a lost answer is told from a failed POST) and the POST.
_PER_ACTIVITY = 2

_PAGE_SIZE = 50


def polls_for(seconds: float, config: MigrationConfig) -> int:
    """Polls of an activity that takes `seconds`, at the bulk path's schedule (the first after
    `poll_initial`, then `MigrationConfig.next_poll`)."""
    delay, waited, polls = config.poll_initial, 0.0, 0
    while True:
        waited += delay
        polls += 1
        if waited >= seconds or polls >= 100_000:
            return polls
        delay = config.next_poll(delay)


@dataclass(frozen=True, slots=True)
class DryRunPlan:
    """What a run would do.

    Attributes:
        rows: rows read.
        rejected: rows that would be rejected.
        contact_path: contacts that would go contact by contact.
        bulk_path: contacts that would go in activities.
        activities: activities that would be submitted (the probe's included).
        existing: contacts of the per-contact path found in the account (None: not looked up).
        requests: requests the run would send (an upper bound without lookups).
        lookup_requests: requests this dry run itself sent for lookups.
        rate: the rate limit, requests/s (None: unlimited).
        daily_budget: requests allowed per day, when set.
        lists_to_create: target list names the account lacks (created with --create-lists).
        setup_requests: of `requests`, those sent before the stages start.
        contact_requests: of `requests`, those of the per-contact path.
        bulk_requests: of `requests`, those of the bulk path (searches, probe, activities,
            polls).
        activity_seconds: the time each activity is assumed to take on the server.
        bulk_limit: activities in flight at once.
        looked_up: the figures come from lookups, not assumptions.
    """

    rows: int
    rejected: int
    contact_path: int
    bulk_path: int
    activities: int
    existing: int | None
    requests: int
    lookup_requests: int
    rate: float | None
    daily_budget: int | None
    lists_to_create: tuple[str, ...]
    setup_requests: int = 0
    contact_requests: int = 0
    bulk_requests: int = 0
    activity_seconds: float = 120.0
    bulk_limit: int = 4
    looked_up: bool = False

    @property
    def seconds(self) -> float | None:
        """The run's expected duration: the requests at the rate limit, the per-contact path
        alongside the bulk path, whose activities also wait for the server (None when there
        is no rate limit and no activity)."""
        if self.rate is None and not self.activities:
            return None
        rate = self.rate or math.inf
        waves = math.ceil(self.activities / max(self.bulk_limit, 1))
        bulk = self.bulk_requests / rate + waves * self.activity_seconds
        return self.setup_requests / rate + max(self.contact_requests / rate, bulk)

    @property
    def days(self) -> int | None:
        """Days of daily budget the run needs (None without a budget)."""
        return None if self.daily_budget is None else math.ceil(self.requests / self.daily_budget)

    def describe(self) -> str:
        """The plan, for people."""
        existing = (
            "not looked up (pass --lookup to count them; assumed all exist)"
            if self.existing is None
            else f"{self.existing} exist, {self.contact_path - self.existing} are new"
        )
        bound = "" if self.looked_up else " (at most)"
        lines = [
            f"rows read:              {self.rows} ({self.rejected} would be rejected)",
            f"per-contact path:       {self.contact_path} contacts; {existing}",
            f"bulk path:              {self.bulk_path} contacts in {self.activities} activities"
            + (" (looked up)" if self.looked_up and self.bulk_path else ""),
            f"requests to send:       {self.requests}{bound}: {self.setup_requests} to start, "
            f"{self.contact_requests} per-contact, {self.bulk_requests} bulk",
        ]
        seconds = self.seconds
        if seconds is not None:
            at = "with no rate limit" if self.rate is None else f"at {self.rate:g} requests/s"
            wait = (
                f", each activity taking {self.activity_seconds:g} s on the server"
                if self.activities
                else ""
            )
            lines.append(
                f"time {at}{wait}: {seconds / 60:.1f} minutes"
                + (f" ({seconds / 3600:.1f} hours)" if seconds > 3600 else "")
            )
        if self.daily_budget is not None:
            verdict = "suffices" if self.requests <= self.daily_budget else "does NOT suffice"
            lines.append(
                f"daily budget:           {self.daily_budget} requests/day {verdict}; "
                f"{self.days} day(s) needed"
            )
        if self.lists_to_create:
            lines.append(f"lists to create:        {', '.join(self.lists_to_create)}")
        lines.append("nothing was written.")
        return "\n".join(lines)


class _Estimate:
    """Counts the requests of each path as the planner hands it contacts and batches."""

    def __init__(self, backend: Backend, config: MigrationConfig, lookup: bool) -> None:
        self.backend = backend
        self.step = backend.capabilities.lookup_batch
        self.config = config
        self.lookup = lookup
        self.per_contact: list[Contact] = []
        self.bulk_contacts = 0
        self.activities = 0
        self.bulk_requests = 0
        self.verified = config.probe_size == 0

    async def _statuses(self, emails: Sequence[str]) -> dict[str, ContactRef]:
        paged = await self._paged_statuses(emails)
        if paged is not None:
            return paged
        found: dict[str, ContactRef] = {}
        for start in range(0, len(emails), self.step):
            chunk = list(emails[start : start + self.step])
            hits = await self.backend.find(chunk)
            found.update((e, h.ref if isinstance(h, ContactState) else h) for e, h in hits.items())
        return found

    async def _paged_statuses(self, emails: Sequence[str]) -> dict[str, ContactRef] | None:
        """The statuses of `emails` read from pages of the whole account (v3: 500 contacts
        a request), when that costs fewer requests than their lookups: the pages are read
        until they would cost as much as the lookups, and then given up (None: look them
        up). So the dry run pays at most twice the cheaper of the two."""
        lookups = math.ceil(len(emails) / self.step)
        if not isinstance(self.backend, AccountReader) or lookups < 4:
            return None
        wanted = set(emails)
        found: dict[str, ContactRef] = {}
        before = self.backend.stats().requests
        async with contextlib.aclosing(self.backend.account_contacts()) as contacts:
            async for state in contacts:
                if self.backend.stats().requests - before >= lookups:
                    return None  # a larger account than the lookups are worth
                if state.ref.email in wanted:
                    found[state.ref.email] = state.ref
        return found

    async def batch(self, batch: Batch) -> None:
        """Count one bulk batch's requests (looking its contacts up, with `lookup`)."""
        config = self.config
        contacts = batch.contacts
        self.bulk_contacts += len(contacts)
        searches = math.ceil(len(contacts) / self.step)
        requests = 0
        found: dict[str, ContactRef] | None = None
        if config.skip_removed or config.lists_only:
            requests += searches
            if self.lookup:
                found = await self._statuses([c.email for c in contacts])
                if config.skip_removed:
                    contacts = tuple(
                        c
                        for c in contacts
                        if c.email not in found or found[c.email].status != "removed"
                    )
            if config.lists_only:
                contacts = tuple(
                    Contact(c.email, c.targets, {}, c.rows)
                    if found is None or c.email in found
                    else c
                    for c in contacts
                )
        probe: tuple[Contact, ...] = ()
        if not self.verified and contacts:
            scan, witnesses = await self._probe_scan(contacts, batch.targets)
            requests += scan
            if witnesses:
                probe = tuple(c for c in contacts if c.email in witnesses)
                contacts = tuple(c for c in contacts if c.email not in witnesses)
                requests += len(probe)  # each witness read again after its activity
            self.verified = bool(witnesses) or self.verified
        polls = polls_for(config.activity_seconds, config)
        for group in (probe, contacts):
            activities = self._activities(group)
            self.activities += activities
            requests += activities * (_PER_ACTIVITY + polls)
        self.bulk_requests += requests

    async def _probe_scan(
        self, contacts: tuple[Contact, ...], targets: tuple[str, ...]
    ) -> tuple[int, set[str]]:
        """The requests of the probe's scan, and the witnesses' emails."""
        size = self.config.probe_size
        if not self.lookup:
            # Assumed: the first lookup's contacts exist, all on other lists.
            first = contacts[: self.step]
            return 1 + len(first), {c.email for c in first[:size]}
        requests, witnesses = 0, set[str]()
        window = lookup_window(self.backend.capabilities, self.config)
        for start in range(0, len(contacts), self.step):
            if start == window and self.step == 1:  # the run's choice after its first window
                before = self.backend.stats().requests
                scan = await scan_plan(self.backend, targets, len(contacts) - start)
                if scan is not None:
                    assert isinstance(self.backend, ListReader)
                    scanned: dict[str, ContactState] = {}
                    emails = {c.email for c in contacts} - witnesses
                    left = size - len(witnesses)
                    await scan_witnesses(self.backend, scan, emails, targets, left, scanned)
                    witnesses |= {state.ref.email for state in scanned.values()}
                    requests += self.backend.stats().requests - before
                    break
                requests += self.backend.stats().requests - before  # the lists read
            chunk = contacts[start : start + self.step]
            found = await self.backend.find([c.email for c in chunk])
            requests += 1
            for email, hit in found.items():
                if isinstance(hit, ContactState):
                    state = hit
                elif hit.status == "opted_out":
                    continue
                else:
                    state = await self.backend.read(hit)
                    requests += 1
                if state.ref.status != "opted_out" and state.list_ids - set(targets):
                    witnesses.add(email)
            if len(witnesses) >= size:
                break
        if len(witnesses) > size:  # the run stops at `size`, in the order it reads them
            witnesses = set(sorted(witnesses, key=[c.email for c in contacts].index)[:size])
        return requests, witnesses

    def _activities(self, contacts: tuple[Contact, ...]) -> int:
        """Activities for these contacts: one per set of fields given, per `bulk_max_rows`."""
        groups = field_groups(contacts, self.backend.capabilities.fields).values()
        return sum(math.ceil(len(group) / self.config.max_rows) for group in groups)

    async def contact_path(self, targets_members: dict[str, set[str]] | None) -> tuple[int, int]:
        """The per-contact path's requests, and how many of its contacts exist (all, unless
        looked up)."""
        config = self.config
        contacts = self.per_contact
        n = len(contacts)
        requests = math.ceil(n / self.step)
        found = await self._statuses([c.email for c in contacts]) if self.lookup else None
        capabilities = self.backend.capabilities
        appending = config.append_writes and capabilities.append_max > 0
        appends: dict[str, int] = {}  # list id -> contacts appended to it by id
        existing = 0
        for contact in contacts:
            summary = None if found is None else found.get(contact.email)
            if found is not None and summary is None:
                requests += 1  # POST
                continue
            existing += 1
            status = "active" if summary is None else summary.status
            if (
                status == "opted_out"
                or (status == "removed" and config.skip_removed)
                or (status == "deleted" and not config.revive_deleted)
            ):
                continue  # settled from its search entry
            requests += 0 if capabilities.lookup_has_lists else 1  # the read
            on_targets = targets_members is not None and all(
                contact.email in targets_members.get(key, ()) for key in contact.targets
            )
            lists_only = config.lists_only or not contact.fields
            if on_targets and status != "removed" and lists_only:
                continue  # unchanged: no write
            if appending and status not in ("removed", "deleted"):
                requests += 0 if lists_only else 1  # its fields: a PUT that names no list
                for key in contact.targets:  # one batch per list it gains
                    if targets_members is None or contact.email not in targets_members.get(key, ()):
                        appends[key] = appends.get(key, 0) + 1
                continue  # its id goes into an append
            requests += 1 + (2 if config.verify_writes == "all" else 0)
        polls = polls_for(config.activity_seconds, config)
        for count in appends.values():
            activities = math.ceil(count / capabilities.append_max)
            self.activities += activities
            requests += activities * (2 + polls)  # its POST, polls, a page read back
        return requests, existing


async def plan_migration(
    account: Account | Backend,
    source: Source,
    *,
    lists: Sequence[str] = (),
    config: MigrationConfig | None = None,
    lookup: bool = False,
    daily_budget: int | None = None,
    snapshot: bool = False,
) -> DryRunPlan:
    """Plan a migration and count its requests; sends only GETs.

    Raises:
        ConfigError: unknown lists (without `create_lists`), as a real run would.
    """
    backend = as_backend(account)
    config = (config or MigrationConfig()).for_backend(backend.capabilities)
    if lists:
        config = dataclasses.replace(config, lists=tuple(dict.fromkeys((*config.lists, *lists))))
    reader = SourceReader(source, config.read)
    scan = await reader.scan()
    sent_before = backend.stats().requests
    names = list(dict.fromkeys([*config.lists, *sorted(scan.list_names)]))
    # Raises the run's ConfigError for an unknown list, naming what exists.
    by_name, missing_names = await verified_lists(backend, names, create=config.create_lists)
    missing = tuple(missing_names)
    if not names and reader.path is not None:
        raise ConfigError("no target lists: pass --list NAME or a lists column with names")
    setup = 1 + _pages(len(by_name)) + len(missing)
    if snapshot:
        setup += sum(_pages(item.members or 0) for item in by_name.values())
    for number, name in enumerate(missing):  # stand-ins, so the planner can plan them
        by_name[name] = ListInfo(f"planned:{number}", name)
    planner = Planner(dataclasses.replace(config, linger=0), by_name)
    estimate = _Estimate(backend, config, lookup)
    rows = rejected = 0

    send_rows, receive_rows = anyio.create_memory_object_stream[list[SourceRow | Rejected]](2)
    send_contacts, receive_contacts = anyio.create_memory_object_stream[Contact](1024)
    send_batches, receive_batches = anyio.create_memory_object_stream[Batch](16)
    send_outcomes, receive_outcomes = anyio.create_memory_object_stream[Outcome](1024)

    async def read() -> None:
        nonlocal rows
        async with send_rows:
            async for chunk in reader.chunks():
                rows += sum(len(i.lines) if isinstance(i, SourceRow) else 1 for i in chunk)
                await send_rows.send(chunk)

    async def count_contacts() -> None:
        async with receive_contacts:
            async for contact in receive_contacts:
                estimate.per_contact.append(contact)
                planner.done(contact.email)

    async def count_batches() -> None:
        async with receive_batches:
            async for batch in receive_batches:
                await estimate.batch(batch)
                for contact in batch.contacts:
                    planner.done(contact.email)

    async def count_rejected() -> None:
        nonlocal rejected
        async with receive_outcomes:
            async for outcome in receive_outcomes:
                rejected += len(outcome.rows)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        tg.start_soon(planner.run, receive_rows, send_contacts, send_batches, send_outcomes)
        tg.start_soon(count_contacts)
        tg.start_soon(count_batches)
        tg.start_soon(count_rejected)

    members: dict[str, set[str]] | None = None
    if lookup and estimate.per_contact:
        # Which contacts are on their lists already: the target lists' members, one request
        # per 50 (a list still to be created has none).
        members = {}
        for key in sorted({k for c in estimate.per_contact for k in c.targets}):
            if not key.startswith("planned:"):
                members[key] = {email async for email in backend.members(key)}
    contact_requests, existing = await estimate.contact_path(members)
    return DryRunPlan(
        rows=rows,
        rejected=rejected,
        contact_path=len(estimate.per_contact),
        bulk_path=estimate.bulk_contacts,
        activities=estimate.activities,
        existing=existing if lookup else None,
        requests=setup + contact_requests + estimate.bulk_requests,
        lookup_requests=backend.stats().requests - sent_before,
        rate=backend.stats().rate,
        daily_budget=daily_budget,
        lists_to_create=missing,
        setup_requests=setup,
        contact_requests=contact_requests,
        bulk_requests=estimate.bulk_requests,
        activity_seconds=config.activity_seconds,
        bulk_limit=config.limits.bulk,
        looked_up=lookup,
    )


def _pages(entries: int) -> int:
    """Requests to read a feed of `entries` entries (one page, even when empty)."""
    return max(1, math.ceil(entries / _PAGE_SIZE))
