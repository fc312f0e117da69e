"""`plan_migration`: what a run would do, without writing anything.

It reads the source and the account's lists (and, with `lookup`, searches the per-contact
contacts, 50 emails a request, to know which exist), runs the real planner, and counts the
requests each path would send.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from engine.api.client import SEARCH_BATCH, Account
from engine.api.records import ContactList
from engine.errors import ConfigError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Batch, Contact, Outcome, Rejected, SourceRow
from engine.pipeline.plan import Planner
from engine.pipeline.read import Source, SourceReader

__all__ = ["POLLS_PER_ACTIVITY", "DryRunPlan", "plan_migration"]

#: Polls per activity assumed by the estimate: activities take 30 s to 15 min (API doc
#: §6.4); polling from 5 s, doubling to 30 s, is about 8 polls for a few minutes' job.
POLLS_PER_ACTIVITY = 8
#: Requests of the bulk membership check: a search, and about 5 GETs before and after.
SAMPLE_CHECK_REQUESTS = 11


@dataclass(frozen=True, slots=True)
class DryRunPlan:
    """What a run would do.

    Attributes:
        rows: rows read.
        rejected: rows that would be rejected.
        contact_path: contacts that would go contact by contact.
        bulk_path: contacts that would go in activities.
        activities: activities that would be submitted.
        existing: contacts of the per-contact path found in the account (None: not looked up).
        requests: requests the run would send (an upper bound without lookups).
        lookup_requests: requests this dry run itself sent for lookups.
        rate: the rate limit, requests/s (None: unlimited).
        daily_budget: requests allowed per day, when set.
        lists_to_create: target list names the account lacks (created with --create-lists).
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

    @property
    def seconds(self) -> float | None:
        """Time the requests take at the rate limit (None when unlimited)."""
        return None if self.rate is None else self.requests / self.rate

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
        lines = [
            f"rows read:              {self.rows} ({self.rejected} would be rejected)",
            f"per-contact path:       {self.contact_path} contacts; {existing}",
            f"bulk path:              {self.bulk_path} contacts in {self.activities} activities",
            f"requests to send:       {self.requests}"
            + (" (at most)" if self.existing is None else ""),
        ]
        if self.seconds is not None:
            lines.append(
                f"time at {self.rate:g} requests/s: {self.seconds / 60:.1f} minutes"
                + (f" ({self.seconds / 3600:.1f} hours)" if self.seconds > 3600 else "")
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


async def plan_migration(
    account: Account,
    source: Source,
    *,
    lists: Sequence[str] = (),
    config: MigrationConfig | None = None,
    lookup: bool = False,
    daily_budget: int | None = None,
) -> DryRunPlan:
    """Plan a migration and count its requests; sends only GETs.

    Raises:
        ConfigError: unknown lists (without `create_lists`), as a real run would.
    """
    config = config or MigrationConfig()
    if lists:
        config = dataclasses.replace(config, lists=tuple(dict.fromkeys((*config.lists, *lists))))
    reader = SourceReader(source, config.read)
    scan = await reader.scan()
    sent_before = account.requests_sent
    await account.verify()
    by_name = {item.name: item for item in await account.lists() if not item.is_system}
    names = list(dict.fromkeys([*config.lists, *sorted(scan.list_names)]))
    missing = tuple(n for n in names if n not in by_name)
    if missing and not config.create_lists:
        await account.resolve_lists(names)  # raises the ConfigError naming what exists
    if not names and reader.path is not None:
        raise ConfigError("no target lists: pass --list NAME or a lists column with names")
    for number, name in enumerate(missing):  # stand-ins, so the planner can plan them
        by_name[name] = ContactList(id=f"planned:{number}", key=f"planned:{number}", name=name)
    planner = Planner(dataclasses.replace(config, linger=0), by_name)
    rows = rejected = activities = bulk_contacts = 0
    per_contact: list[str] = []

    send_rows, receive_rows = anyio.create_memory_object_stream[SourceRow | Rejected](1024)
    send_contacts, receive_contacts = anyio.create_memory_object_stream[Contact](1024)
    send_batches, receive_batches = anyio.create_memory_object_stream[Batch](16)
    send_outcomes, receive_outcomes = anyio.create_memory_object_stream[Outcome](1024)

    async def read() -> None:
        nonlocal rows
        async with send_rows:
            async for item in reader.rows():
                rows += len(item.lines) if isinstance(item, SourceRow) else 1
                await send_rows.send(item)

    async def count_contacts() -> None:
        async with receive_contacts:
            async for contact in receive_contacts:
                per_contact.append(contact.email)
                planner.done(contact.email)

    async def count_batches() -> None:
        nonlocal activities, bulk_contacts
        async with receive_batches:
            async for batch in receive_batches:
                bulk_contacts += len(batch.contacts)
                activities += math.ceil(len(batch.contacts) / config.bulk_max_rows)
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

    existing: int | None = None
    n = len(per_contact)
    if lookup and per_contact:
        existing = 0
        for start in range(0, n, SEARCH_BATCH):
            existing += len(
                await account.search_contacts(per_contact[start : start + SEARCH_BATCH])
            )
    searches = math.ceil(n / SEARCH_BATCH)
    # An existing contact: GET + PUT (at most); a new one: POST.
    contact_requests = searches + (2 * n if existing is None else 2 * existing + (n - existing))
    bulk_requests = activities * (1 + POLLS_PER_ACTIVITY)
    if activities:
        bulk_requests += SAMPLE_CHECK_REQUESTS
    rate = account.governor.stats().rate
    return DryRunPlan(
        rows=rows,
        rejected=rejected,
        contact_path=n,
        bulk_path=bulk_contacts,
        activities=activities,
        existing=existing,
        requests=2 + len(missing) + contact_requests + bulk_requests,
        lookup_requests=account.requests_sent - sent_before,
        rate=rate,
        daily_budget=daily_budget,
        lists_to_create=missing,
    )
