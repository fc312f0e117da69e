"""`migrate`: wires the stages together and runs them in one task group.

```
source ─▶ read ─▶ plan ─┬─▶ fetch ─▶ merge ─▶ put ─┬─▶ record ─▶ report
                        └─▶ bulk ─────(fallback)──▶ fetch                 │
                             └────────────────────────────┘
```

Every arrow is a bounded anyio memory stream; closing the send half is end-of-input. A
fatal error in any stage cancels every other stage; the report is flushed either way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.client import Account
from engine.api.records import ContactList
from engine.errors import ConfigError, EngineError, PipelineError
from engine.pipeline.bulk import BulkPath
from engine.pipeline.config import MigrationConfig
from engine.pipeline.fetch import Fetched, fetch_contacts
from engine.pipeline.merge import Write, merge_lists
from engine.pipeline.models import OUTCOMES, Batch, Contact, Outcome, Rejected, SourceRow
from engine.pipeline.plan import Planner
from engine.pipeline.put import put_contacts
from engine.pipeline.read import Source, SourceReader
from engine.pipeline.record import ReportWriter, record_outcomes
from engine.pipeline.stats import Progress, RunStats, fan_out

__all__ = ["MigrationReport", "migrate", "prepare_lists"]

log = logging.getLogger("engine")


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """The summary of a run.

    Attributes:
        rows: rows read from the source.
        emails: report records (one per email; one per rejected row).
        outcomes: outcome kind -> rows; adds up to `rows` (invariant I3).
        merged_rows: rows coalesced into another row of the same email.
        requests: requests sent to the API.
        retries: requests retried.
        throttles: throttle answers received.
        activities: bulk activities submitted.
        polls: activity status polls.
        elapsed: seconds the run took.
        report_path: the JSON Lines report, if one was written.
        bulk_enabled: False when the membership check switched the bulk path off.
        warnings: things the user must know (e.g. why bulk was switched off).
    """

    rows: int
    emails: int
    outcomes: dict[str, int]
    merged_rows: int
    requests: int
    retries: int
    throttles: int
    activities: int
    polls: int
    elapsed: float
    report_path: Path | None
    bulk_enabled: bool = True
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no row was rejected and none failed."""
        return not (self.outcomes.get("rejected") or self.outcomes.get("failed"))

    def summary(self) -> str:
        """One paragraph for people."""
        counts = ", ".join(f"{self.outcomes.get(k, 0)} {k}" for k in OUTCOMES)
        return (
            f"{self.rows} rows ({self.merged_rows} merged as duplicates) -> {counts}. "
            f"{self.requests} requests ({self.retries} retried, {self.throttles} throttled), "
            f"{self.activities} activities, {self.polls} polls, in {self.elapsed:.1f}s."
        )


async def prepare_lists(
    account: Account, names: Sequence[str], *, create: bool
) -> dict[str, ContactList]:
    """Every user list of the account by name, after creating missing `names` if asked.

    Raises:
        ConfigError: a name in `names` is unknown (and `create` is off) or a system list.
    """
    lists = {item.name: item for item in await account.lists() if not item.is_system}
    system = [n for n in names if n.lower() in ("active", "do not mail", "removed")]
    if system:
        raise ConfigError(f"{', '.join(map(repr, system))}: system lists cannot be targets")
    missing = [n for n in dict.fromkeys(names) if n not in lists]
    if missing and not create:
        await account.resolve_lists(names)  # raises the ConfigError that lists what exists
    for name in missing:
        lists[name] = await account.create_list(name)
        log.info("created list %r (%s)", name, lists[name].id)
    return lists


async def migrate(
    account: Account,
    source: Source,
    *,
    lists: Sequence[str] = (),
    config: MigrationConfig | None = None,
    report: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> MigrationReport:
    """Put every contact of `source` on its target lists, keeping every membership it has.

    Args:
        account: an opened `Account`.
        source: a CSV or JSON Lines path, or an (async) iterable of mappings.
        lists: list names every contact must be on (added to `config.lists`).
        config: the rest of the settings; defaults suit the real API.
        report: where to write the JSON Lines report (one line per email).
        on_progress: called with a `Progress` every `config.progress_interval` seconds.
        on_outcome: called with every `Outcome` as it is recorded.

    Returns:
        the run's summary; the outcomes add up to the rows read.

    Raises:
        ConfigError: before any write, for unknown lists or bad settings.
        SourceError: the source cannot be read at all.
        FatalApiError: authentication, access, or quota; the report holds what was done.
    """
    config = config or MigrationConfig()
    if lists:
        config = dataclasses.replace(config, lists=tuple(dict.fromkeys((*config.lists, *lists))))
    reader = SourceReader(source, config.read)
    if reader.path is None and not config.lists and not config.read.lists_column:
        raise ConfigError("no target lists: pass lists=[...] or a lists column")
    stats = RunStats()
    scan = await reader.scan()
    stats.rows_total = scan.rows if reader.path is not None else None
    if reader.path is not None and not config.lists and not scan.list_names:
        raise ConfigError("no target lists: pass --list NAME or a lists column with names")
    await account.verify()
    by_name = await prepare_lists(
        account, [*config.lists, *sorted(scan.list_names)], create=config.create_lists
    )
    # `linger` is for streaming sources: a file's batches fill up to the caps or the end of
    # the input, or its 20,000 rows would go out in as many activities as linger periods.
    planner = Planner(
        config if reader.path is None else dataclasses.replace(config, linger=0), by_name
    )
    writer = ReportWriter(Path(report) if report else None, {c.key: n for n, c in by_name.items()})
    await writer.open()
    requests_before, retries_before = account.requests_sent, account.retries
    throttles_before = account.governor.stats().throttles

    send_rows, receive_rows = anyio.create_memory_object_stream[SourceRow | Rejected](
        config.queue_size
    )
    send_contacts, receive_contacts = anyio.create_memory_object_stream[Contact](config.queue_size)
    send_batches, receive_batches = anyio.create_memory_object_stream[Batch](config.limits.bulk)
    send_fetched, receive_fetched = anyio.create_memory_object_stream[Fetched](config.queue_size)
    send_writes, receive_writes = anyio.create_memory_object_stream[Write](config.queue_size)
    send_outcomes, receive_outcomes = anyio.create_memory_object_stream[Outcome](config.queue_size)
    bulk = BulkPath(account, config, stats, send_contacts.clone())
    queues = {
        "read": receive_rows,
        "fetch": receive_contacts,
        "bulk": receive_batches,
        "merge": receive_fetched,
        "put": receive_writes,
        "record": receive_outcomes,
    }

    def progress(final: bool = False) -> Progress:
        for name, stream in queues.items():
            stats.stages[name].queued = stream.statistics().current_buffer_used  # type: ignore[index]
        gov = account.governor.stats()
        return Progress(
            elapsed=time.monotonic() - stats.started,
            rows_read=stats.rows_read,
            rows_total=stats.rows_total,
            rows_done=sum(stats.outcomes.values()),
            outcomes=dict(stats.outcomes),
            stages={k: (s.busy, s.queued) for k, s in stats.stages.items()},
            requests=account.requests_sent - requests_before,
            retries=account.retries - retries_before,
            throttles=gov.throttles - throttles_before,
            rate=gov.rate,
            activities=stats.activities,
            final=final,
        )

    async def report_progress() -> None:
        if on_progress is None:
            return
        while True:
            await anyio.sleep(config.progress_interval)
            on_progress(progress())

    async def read(send: MemoryObjectSendStream[SourceRow | Rejected]) -> None:
        async with send:
            async for item in reader.rows():
                stats.rows_read += len(item.lines) if isinstance(item, SourceRow) else 1
                await send.send(item)

    outcome_sends = [send_outcomes.clone() for _ in range(5)]
    send_outcomes.close()
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(report_progress)
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, send_rows)
                tg.start_soon(
                    planner.run, receive_rows, send_contacts, send_batches, outcome_sends[0]
                )
                tg.start_soon(
                    _fetch_stage,
                    receive_contacts,
                    send_fetched,
                    account,
                    outcome_sends[1],
                    stats,
                    config.limits.fetch,
                )
                tg.start_soon(
                    partial(
                        merge_lists,
                        send_outcomes=outcome_sends[2],
                        skip_removed=config.skip_removed,
                        stats=stats.stages["merge"],
                    ),
                    receive_fetched,
                    send_writes,
                )
                put_worker = partial(
                    put_contacts,
                    account=account,
                    skip_removed=config.skip_removed,
                    stats=stats.stages["put"],
                )
                tg.start_soon(
                    partial(fan_out, limit=config.limits.put),
                    put_worker,
                    receive_writes,
                    outcome_sends[3],
                )
                tg.start_soon(bulk.run, receive_batches, outcome_sends[4])
                tg.start_soon(
                    partial(
                        record_outcomes,
                        writer=writer,
                        stats=stats,
                        on_done=planner.done,
                        on_outcome=on_outcome,
                    ),
                    receive_outcomes,
                )
            outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        await writer.aclose()
        for stream in outcome_sends:
            stream.close()
        send_contacts.close()
    if on_progress is not None:
        on_progress(progress(final=True))
    rows = stats.rows_read
    return MigrationReport(
        rows=rows,
        emails=stats.emails,
        outcomes={k: stats.outcomes.get(k, 0) for k in OUTCOMES},
        merged_rows=rows - stats.emails,
        requests=account.requests_sent - requests_before,
        retries=account.retries - retries_before,
        throttles=account.governor.stats().throttles - throttles_before,
        activities=stats.activities,
        polls=stats.polls,
        elapsed=time.monotonic() - stats.started,
        report_path=writer.path,
        bulk_enabled=bulk.enabled,
        warnings=tuple(bulk.warnings),
    )


async def _fetch_stage(
    receive: MemoryObjectReceiveStream[Contact],
    send: MemoryObjectSendStream[Fetched],
    account: Account,
    send_outcomes: MemoryObjectSendStream[Outcome],
    stats: RunStats,
    limit: int,
) -> None:
    async def worker(
        receive: MemoryObjectReceiveStream[Contact], send: MemoryObjectSendStream[Fetched]
    ) -> None:
        await fetch_contacts(
            receive,
            send,
            account=account,
            send_outcomes=send_outcomes.clone(),
            stats=stats.stages["fetch"],
        )

    async with send_outcomes:
        await fan_out(worker, receive, send, limit=limit)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed task group: the first engine error, as it is."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, EngineError):
            return exc
    for exc in leaves:
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return PipelineError("pipeline", exc)
    return leaves[0]
