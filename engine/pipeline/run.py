"""`migrate`: wires the stages together and runs them in one task group.

```
source ─▶ read ─▶ plan ─┬─▶ fetch ─▶ merge ─▶ put ──────┬─▶ record ─▶ journal ─▶ report
                        └─▶ bulk ─(fallback)─▶ fetch     │
        journal ─▶ resume activities ─────────────────────┘
```

Every arrow is a bounded anyio memory stream; closing the send half is end-of-input. A
fatal error in any stage cancels every other stage; the journal and the report are written
either way. With a journal, rows finished by an earlier run are skipped, activities it
submitted are polled instead of resubmitted, and the report covers every run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.backend import as_backend
from engine.backend.protocol import AppendingBackend, Backend, BulkActivity, ListInfo
from engine.backend.v1.client import Account
from engine.crashpoints import crash_point
from engine.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConfigError,
    EngineError,
    OutputError,
    PipelineError,
    RunStoppedError,
    SourceError,
    unknown_lists_message,
)
from engine.journal import Intent, Journal, journal_identity
from engine.pipeline.append import Appends
from engine.pipeline.bulk import BulkPath
from engine.pipeline.config import MigrationConfig
from engine.pipeline.fetch import Found, fetch_contacts
from engine.pipeline.merge import Write, merge_lists
from engine.pipeline.models import (
    OUTCOMES,
    Batch,
    Contact,
    Outcome,
    Recorded,
    Rejected,
    SourceRow,
    join_notes,
)
from engine.pipeline.plan import Planner
from engine.pipeline.put import put_contacts, send_write
from engine.pipeline.read import Source, SourceReader
from engine.pipeline.record import ReportWriter, record_outcomes
from engine.pipeline.stats import Progress, RunStats, fan_out
from engine.pipeline.streams import send_soon
from engine.pipeline.window import ReadWindow

__all__ = ["MigrationReport", "migrate", "prepare_lists", "snapshot_members"]

log = logging.getLogger("engine")

#: Rows looked up in the journal at once when resuming, and passed on to the planner at once.
RESUME_CHUNK = 512


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """The summary of a run (of every run, with a journal).

    Attributes:
        rows: rows read from the source.
        emails: report records (one per email; one per rejected row).
        outcomes: outcome kind -> rows; with `pending`, adds up to `rows` (invariant I3).
        pending: rows without an outcome yet (the run was stopped); a resumed run does them.
        resumed: rows whose outcome an earlier run recorded (not sent again).
        retried: rows an earlier run failed for a cause that may pass, tried again.
        reactivated: Removed contacts this run re-added (Active again) on the per-contact
            path (without `skip_removed`).
        merged_rows: rows coalesced into another row of the same email.
        requests: requests sent to the API by this run.
        retries: requests retried.
        throttles: throttle answers received.
        activities: bulk activities submitted.
        polls: activity status polls.
        elapsed: seconds the run took.
        report_path: the JSON Lines report, if one was written.
        journal_path: the journal, if one was kept.
        bulk_enabled: False when the membership check switched the bulk path off.
        stopped: True when the run was stopped before every row was done.
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
    pending: int = 0
    resumed: int = 0
    retried: int = 0
    reactivated: int = 0
    journal_path: Path | None = None
    bulk_enabled: bool = True
    stopped: bool = False
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every row is done and none was rejected or failed."""
        return not (self.outcomes.get("rejected") or self.outcomes.get("failed") or self.pending)

    def summary(self) -> str:
        """One paragraph for people."""
        counts = ", ".join(f"{self.outcomes.get(k, 0)} {k}" for k in OUTCOMES)
        text = (
            f"{self.rows} rows ({self.merged_rows} merged as duplicates) -> {counts}. "
            f"{self.requests} requests ({self.retries} retried, {self.throttles} throttled), "
            f"{self.activities} activities, {self.polls} polls, in {self.elapsed:.1f}s."
        )
        if self.resumed:
            text += f" {self.resumed} rows were done by an earlier run."
        if self.retried:
            text += f" {self.retried} rows had failed in an earlier run and were retried."
        if self.reactivated:
            text += (
                f" {self.reactivated} Removed contacts were re-added and are Active again "
                "(--skip-removed leaves them alone)."
            )
        if self.pending:
            text += (
                f" {self.pending} rows are not done yet: run the same command again to "
                "resume" + (f" (journal {self.journal_path})." if self.journal_path else ".")
            )
        return text


async def check_lists(
    backend: Backend, names: Sequence[str], *, create: bool
) -> tuple[dict[str, ListInfo], list[str]]:
    """The account's user lists by name and the `names` it lacks; writes nothing.

    Raises:
        ConfigError: a name in `names` is a system list, is missing (and `create` is off),
            or differs from an existing list only in case (which is never created).
    """
    every = await backend.lists()
    lists = {item.name: item for item in every if not item.is_system}
    system_names = {item.name.casefold() for item in every if item.is_system}
    system = [n for n in names if n.casefold() in system_names]
    if system:
        raise ConfigError(f"{', '.join(map(repr, system))}: system lists cannot be targets")
    missing = [n for n in dict.fromkeys(names) if n not in lists]
    folded = {n.casefold() for n in lists}
    if missing and (not create or any(n.casefold() in folded for n in missing)):
        # Never create a list that differs from an existing one only in case: the API
        # refuses it (409) or, worse, the account gets two look-alike lists.
        raise ConfigError(unknown_lists_message(missing, lists))
    return lists, missing


async def verified_lists(
    backend: Backend, names: Sequence[str], *, create: bool
) -> tuple[dict[str, ListInfo], list[str]]:
    """`backend.verify()` and `check_lists` at once: two reads in the time of one round
    trip, before anything is written. When both fail, the verification's error is the one
    raised: it says what to change (the credentials, the address).

    Raises:
        ConfigError: see `check_lists`.
    """
    checked: list[tuple[dict[str, ListInfo], list[str]]] = []
    failed: list[Exception] = []

    async def check() -> None:
        try:
            checked.append(await check_lists(backend, names, create=create))
        except Exception as exc:  # raised below, after the verification's own error
            failed.append(exc)

    refused: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(check)
        try:
            await backend.verify()
        except Exception as exc:
            refused = exc
            tg.cancel_scope.cancel()
    if refused is not None:
        raise refused
    if failed:
        raise failed[0]
    return checked[0]


async def create_lists(
    backend: Backend, lists: dict[str, ListInfo], missing: Sequence[str]
) -> dict[str, ListInfo]:
    """`lists` with the `missing` ones created (checked by `check_lists` first)."""
    for name in missing:
        lists[name] = await backend.create_list(name)
        log.info("created list %r (%s)", name, lists[name].id)
    return lists


async def prepare_lists(
    backend: Backend, names: Sequence[str], *, create: bool
) -> dict[str, ListInfo]:
    """Every user list of the account by name, after creating missing `names` if asked.

    Raises:
        ConfigError: see `check_lists`.
    """
    existing, missing = await check_lists(backend, names, create=create)
    return await create_lists(backend, existing, missing)


async def snapshot_members(backend: Backend) -> list[tuple[str, str]]:
    """(email, list name) for every member of every user list: the state before a run.

    Costs one request per 50 members of each list; the audit uses it to prove I1 for
    contacts the bulk path touched.
    """
    members: list[tuple[str, str]] = []
    for item in await backend.lists():
        if not item.is_system:
            members += [(email, item.name) async for email in backend.members(item.id)]
    return members


async def migrate(
    account: Account | Backend,
    source: Source,
    *,
    lists: Sequence[str] = (),
    config: MigrationConfig | None = None,
    report: str | Path | None = None,
    journal: str | Path | None = None,
    restart: bool = False,
    snapshot: bool = False,
    stop: anyio.Event | None = None,
    grace: float = 30.0,
    on_progress: Callable[[Progress], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> MigrationReport:
    """Put every contact of `source` on its target lists, keeping every membership it has.

    Args:
        account: an opened `Account` (v1), or a `Backend` over an opened client.
        source: a CSV or JSON Lines path, or an (async) iterable of mappings.
        lists: list names every contact must be on (added to `config.lists`).
        config: the rest of the settings; defaults suit the real API.
        report: where to write the JSON Lines report (one line per email).
        journal: the SQLite journal that makes the run resumable; running again with the
            same source, lists and journal resumes. A journal of another migration is
            refused unless `restart`.
        restart: delete the journal and start over.
        snapshot: before the first run, record every list's members in the journal (for
            `audit` to prove I1 on the bulk path); needs `journal`.
        stop: set it to stop: no new work is taken, requests in flight finish (for at most
            `grace` seconds), the journal and report are written.
        grace: seconds in-flight work may take after `stop` is set.
        on_progress: called with a `Progress` every `config.progress_interval` seconds.
        on_outcome: called with every `Outcome` as it is recorded.

    Returns:
        the summary; outcomes plus pending add up to the rows read.

    Raises:
        ConfigError: before any write, for unknown lists, bad settings, a foreign journal.
        SourceError: the source cannot be read at all.
        FatalApiError: authentication, access, or quota; the journal and report hold what
            was done.
    """
    backend = as_backend(account)
    config = (config or MigrationConfig()).for_backend(backend.capabilities)
    if lists:
        config = dataclasses.replace(config, lists=tuple(dict.fromkeys((*config.lists, *lists))))
    if snapshot and journal is None:
        raise ConfigError("a snapshot is kept in the journal: give a journal path")
    reader = SourceReader(source, config.read)
    _check_outputs(reader.path, report, journal)
    _check_writable(report, journal)
    if reader.path is None and not config.lists and not config.read.lists_column:
        raise ConfigError("no target lists: pass lists=[...] or a lists column")
    stats = RunStats(
        activity_seconds=config.activity_seconds,
        bulk_limit=config.limits.bulk,
        bulk_verified=config.probe_size == 0,
    )
    scan = await reader.scan()
    stats.rows_total = scan.rows if reader.path is not None else None
    if reader.path is not None and scan.rows == 0:
        # Most likely the wrong file (an export's header alone): say so, not "0 rows, ok".
        raise SourceError(f"the source {reader.path} has a header but no data rows")
    if reader.path is not None and not config.lists and not scan.list_names:
        raise ConfigError("no target lists: pass --list NAME or a lists column with names")
    names = [*config.lists, *sorted(scan.list_names)]
    # Every check before the journal is created: a mistake (a list name, the account) must
    # not leave a journal behind that would refuse the corrected command.
    existing, missing = await verified_lists(backend, names, create=config.create_lists)
    opened: Journal | None = None
    if journal is not None:
        settings = {**_identity(config), "account": backend.identity}
        identity = journal_identity(scan.digest or "iterable", names, settings)
        opened = await Journal.open(journal, identity=identity, restart=restart)
    try:
        by_name = await create_lists(backend, existing, missing)
        if opened is not None and snapshot and not await opened.has_snapshot():
            await opened.record_snapshot(await snapshot_members(backend))
        run = _Run(backend, config, reader, stats, by_name, opened, stop or anyio.Event())
        result = await run.execute(report, grace, on_progress, on_outcome)
    except BaseException:
        if opened is not None:  # closed quietly: the first error is the one to tell
            try:
                await opened.aclose("failed")
            except EngineError as exc:
                log.error("the journal could not be closed cleanly: %s", exc)
        raise
    if opened is not None:
        await opened.aclose()
    return result


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (by inode when both exist, else by resolved path)."""
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_outputs(
    source: Path | None, report: str | Path | None, journal: str | Path | None
) -> None:
    """Refuse outputs that would overwrite the source or each other (nothing is written).

    Raises:
        ConfigError: the report or the journal is the source, or they are one file.
    """
    named = {"report": report, "journal": journal}
    paths = {what: Path(p) for what, p in named.items() if p is not None}
    for what, path in paths.items():
        if source is not None and _same_file(path, source):
            raise ConfigError(
                f"the {what} path {path} is the source file: it would be overwritten; pass "
                f"another --{what} path"
            )
    if len(paths) == 2 and _same_file(paths["report"], paths["journal"]):
        raise ConfigError(
            f"the report and the journal are the same file ({paths['report']}): pass another "
            "--journal path"
        )


def _check_writable(report: str | Path | None, journal: str | Path | None) -> None:
    """Refuse, before any write to the account, a report or journal folder that cannot be
    written (read-only, missing permissions).

    Raises:
        ConfigError: which path, and why.
    """
    for what, path in (("report", report), ("journal", journal)):
        if path is None:
            continue
        folder = Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
            if Path(path).exists() and not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is not writable")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the {what} in {folder}: {exc.strerror or exc}; pass another "
                f"--{what} path (or make the folder writable)"
            ) from exc


def _identity(config: MigrationConfig) -> dict[str, object]:
    """The settings that decide what a row means: part of the journal's key."""
    read = config.read
    return {
        # Apart from the lists column's names: `--list X` on a source whose column also
        # names X is another migration (every row gains X), and must not share a journal.
        "lists_for_every_row": sorted(config.lists),
        "columns": sorted(read.columns.items()),
        "lists_column": read.lists_column,
        "separator": read.list_separator,
        "encoding": read.encoding,
        # What a row writes: a resume must write the rest the way the start wrote the first.
        # (Present only when set, so journals of the default mode keep their identity.)
        **({"lists_only": True} if config.lists_only else {}),
    }


class _Run:
    """One execution of the pipeline: its streams, stages and counters."""

    def __init__(
        self,
        backend: Backend,
        config: MigrationConfig,
        reader: SourceReader,
        stats: RunStats,
        by_name: dict[str, ListInfo],
        journal: Journal | None,
        stop: anyio.Event,
    ) -> None:
        self.backend = backend
        self.config = config
        self.reader = reader
        self.stats = stats
        self.journal = journal
        self.stop = stop
        self.resumed_rows = 0
        self.retried_rows = 0
        self.earlier_intents: dict[str, Intent] = {}
        #: email -> what the reader left out or changed of its rows, for its outcome.
        self.row_notes: dict[str, str] = {}
        self.held: set[str] = set()  # emails carried by activities of an earlier run
        # `linger` is for streaming sources: a file's batches fill up to the caps or the
        # end of the input, or 20,000 rows would go out in as many activities as lingers.
        planner_config = config if reader.path is None else dataclasses.replace(config, linger=0)
        self.planner = Planner(
            planner_config, by_name, stop=stop, coalesced=reader.path is not None
        )
        self.names = {c.id: n for n, c in by_name.items()}
        self.started = backend.stats()
        #: contacts the merge stage read and the put stage has not written: no more than
        #: the current rate lets write within `stale_after` (engine/pipeline/window.py)
        self.window = ReadWindow(
            lambda: backend.stats().rate, stale_after=config.stale_after, most=config.limits.put
        )

    def progress(
        self, queues: dict[str, MemoryObjectReceiveStream[object]], final: bool
    ) -> Progress:
        stats = self.stats
        for name, stream in queues.items():
            stats.stages[name].queued = stream.statistics().current_buffer_used  # type: ignore[index]
        now_stats, started = self.backend.stats(), self.started
        elapsed = time.monotonic() - stats.started
        rows_done = sum(stats.outcomes.values()) + self.resumed_rows
        now = anyio.current_time()
        return Progress(
            elapsed=elapsed,
            rows_read=stats.rows_read,
            rows_total=stats.rows_total,
            rows_done=rows_done,
            outcomes=dict(stats.outcomes),
            stages={k: (s.busy, s.queued) for k, s in stats.stages.items()},
            requests=now_stats.requests - started.requests,
            retries=now_stats.retries - started.retries,
            throttles=now_stats.throttles - started.throttles,
            rate=now_stats.rate,
            activities=stats.activities,
            final=final,
            waiting=stats.waiting_now(now),
            polls=stats.polls,
            eta_by_path=stats.eta(now, rows_done, elapsed),
        )

    async def read(self, send: MemoryObjectSendStream[list[SourceRow | Rejected]]) -> None:
        """The read stage, a chunk of rows at a time; with a journal, rows done by an
        earlier run are left out."""
        resumed = self.journal is not None and self.journal.resumed
        async with send:
            waiting: list[SourceRow | Rejected] = []
            async for rows in self.reader.chunks():
                waiting += rows
                # On at most RESUME_CHUNK at a time, as they come; a resumed run looks them
                # up in the journal RESUME_CHUNK at a time (an async source gives its rows
                # one by one: a lookup each would be a trip to the journal's thread each).
                while len(waiting) >= RESUME_CHUNK or (waiting and not resumed):
                    chunk, waiting = waiting[:RESUME_CHUNK], waiting[RESUME_CHUNK:]
                    await self._pass_on(chunk, send)
                    crash_point("read")
                    if self.stop.is_set():
                        return
            if waiting:
                await self._pass_on(waiting, send)

    async def _pass_on(
        self,
        chunk: list[SourceRow | Rejected],
        send: MemoryObjectSendStream[list[SourceRow | Rejected]],
    ) -> None:
        self.stats.rows_read += sum(
            len(item.lines) if isinstance(item, SourceRow) else 1 for item in chunk
        )
        done: set[str] = set()
        if self.journal is not None and self.journal.resumed:
            emails = [i.email for i in chunk if isinstance(i, SourceRow)]
            done, again = await self.journal.outcomes_of(emails)
            self.retried_rows += sum(
                len(i.lines) for i in chunk if isinstance(i, SourceRow) and i.email in again
            )
        kept: list[SourceRow | Rejected] = []
        for item in chunk:
            if isinstance(item, SourceRow):
                if item.email in done or item.email in self.held:
                    if item.email in done:
                        self.resumed_rows += len(item.lines)
                    continue
                if item.warnings:
                    # Put on the contact's outcome by the record stage (and taken off there).
                    earlier = self.row_notes.get(item.email, "")
                    self.row_notes[item.email] = join_notes(earlier, *item.warnings)
            kept.append(item)
        if kept:
            await send_soon(send, kept)

    async def intend_activity(self, emails: list[str], targets: tuple[str, ...]) -> None:
        """Journal an activity's contacts before it is posted: a run killed after the POST
        but before its id is journaled leaves them as writes that may have been applied."""
        if self.journal is not None:
            await self.journal.intend_bulk(emails, targets)

    async def on_submitted(self, activity: BulkActivity, batch: Batch) -> None:
        """Journal an activity as soon as its id is known, before it is relied on."""
        if self.journal is not None:
            await self.journal.activity_submitted(
                activity.id, batch.targets, batch.text, activity.created
            )

    async def execute(
        self,
        report: str | Path | None,
        grace: float,
        on_progress: Callable[[Progress], None] | None,
        on_outcome: Callable[[Outcome], None] | None,
    ) -> MigrationReport:
        config, stats, backend = self.config, self.stats, self.backend
        pending = await self.journal.pending_activities() if self.journal else []
        self.earlier_intents = (
            await self.journal.earlier_intents()
            if self.journal is not None and self.journal.resumed
            else {}
        )
        self.held = {c.email for item in pending for c in item.contacts}
        report_path = Path(report) if report else None
        # The report is written as outcomes arrive; a resumed run instead writes it from the
        # journal at the end, so that it covers every run.
        resumed = self.journal is not None and self.journal.resumed
        writer = ReportWriter(None if resumed else report_path, self.names)
        await writer.open()

        size = config.queue_size
        # Rows go in chunks (`read`): about as many rows wait as `queue_size`.
        send_rows, receive_rows = anyio.create_memory_object_stream[list[SourceRow | Rejected]](
            max(1, size // RESUME_CHUNK)
        )
        send_contacts, receive_contacts = anyio.create_memory_object_stream[Contact](size)
        # No buffer: a batch of up to 20,000 contacts waits in the planner until a bulk
        # worker is free, rather than in a queue (memory, invariant I6).
        send_batches, receive_batches = anyio.create_memory_object_stream[Batch](0)
        send_found, receive_found = anyio.create_memory_object_stream[Found](size)
        # No buffer before the put stage: a merge worker hands its write straight to a put
        # worker, so no entry waits in a queue growing stale (the API has no ETags).
        send_writes, receive_writes = anyio.create_memory_object_stream[Write](0)
        send_outcomes, receive_outcomes = anyio.create_memory_object_stream[Recorded](size)
        bulk = BulkPath(
            backend,
            config,
            stats,
            send_contacts.clone(),
            on_submitted=self.on_submitted,
            stop=self.stop,
            intend=self.intend_activity,
        )
        queues: dict[str, MemoryObjectReceiveStream[object]] = {
            "read": receive_rows,
            "fetch": receive_contacts,
            "bulk": receive_batches,
            "merge": receive_found,
            "put": receive_writes,
            "record": receive_outcomes,
        }

        async def report_progress() -> None:
            if on_progress is None:
                return
            while True:
                await anyio.sleep(config.progress_interval)
                on_progress(self.progress(queues, final=False))

        async def enforce_grace(scope: anyio.CancelScope) -> None:
            await self.stop.wait()
            log.warning("stopping: no new work; in-flight requests get %.0fs", grace)
            await anyio.sleep(grace)
            scope.cancel()

        resume_send = send_outcomes.clone()
        outcome_sends = [send_outcomes.clone() for _ in range(5)]
        send_outcomes.close()
        crashed: BaseException | None = None
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(report_progress)
                outer.start_soon(enforce_grace, outer.cancel_scope)
                if self.journal is not None:
                    outer.start_soon(self.journal.flush_periodically)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.read, send_rows)
                    tg.start_soon(
                        self.planner.run,
                        receive_rows,
                        send_contacts,
                        send_batches,
                        outcome_sends[0],
                    )
                    tg.start_soon(self._fetch, receive_contacts, send_found, outcome_sends[1])
                    tg.start_soon(self._merge, receive_found, send_writes, outcome_sends[2])
                    tg.start_soon(self._put, receive_writes, outcome_sends[3], bulk)
                    tg.start_soon(bulk.run, receive_batches, outcome_sends[4])
                    tg.start_soon(bulk.resume, pending, resume_send)
                    tg.start_soon(self._record, receive_outcomes, writer, on_outcome, bulk)
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            crashed = _first_error(group)
        finally:
            try:
                await writer.aclose()
            except OutputError as exc:
                if crashed is not None:  # the first error is the one to tell
                    log.error("%s", exc)
                else:
                    crashed = exc
            for stream in (*outcome_sends, resume_send):
                stream.close()
            send_contacts.close()
        if self.journal is not None:
            try:
                await self.journal.flush()
                crash_point("journal")
                if report_path is not None and resumed:
                    await self.journal.write_report(report_path, writer.line)
            except OutputError as exc:
                if crashed is None:
                    raise
                log.error("%s", exc)
        if isinstance(crashed, AuthenticationError | AccessDeniedError):
            resume = "run the same command again to resume" + (
                "" if self.journal is None else f" (journal {self.journal.path})"
            )
            raise RunStoppedError(f"{crashed}. Nothing is lost: once that is done, {resume}") from (
                crashed
            )
        if crashed is not None:
            raise crashed
        result = await self._summary(report_path, bulk)
        if on_progress is not None:
            on_progress(self.progress(queues, final=True))
        return result

    async def _fetch(
        self,
        receive: MemoryObjectReceiveStream[Contact],
        send: MemoryObjectSendStream[Found],
        send_outcomes: MemoryObjectSendStream[Outcome],
    ) -> None:
        """The fetch stage. Where a lookup takes one email and gives the lists (v3), it is
        each contact's read, which on v1 the merge stage's `limits.put` workers send: it
        gets as many lookups in flight (4 would cap a run at 4 round trips at a time)."""
        limits, capabilities = self.config.limits, self.backend.capabilities
        limit = limits.fetch
        if capabilities.lookup_batch == 1 and capabilities.lookup_has_lists:
            limit = max(limits.fetch, limits.put)
        await fetch_contacts(
            receive,
            send,
            backend=self.backend,
            send_outcomes=send_outcomes,
            stats=self.stats.stages["fetch"],
            limit=limit,
            stop=self.stop,
        )

    async def _merge(
        self,
        receive: MemoryObjectReceiveStream[Found],
        send: MemoryObjectSendStream[Write],
        send_outcomes: MemoryObjectSendStream[Outcome],
    ) -> None:
        await merge_lists(
            receive,
            send,
            backend=self.backend,
            send_outcomes=send_outcomes,
            skip_removed=self.config.skip_removed,
            stats=self.stats.stages["merge"],
            limit=self.config.limits.put,  # on v1 each sends its contact's read
            stop=self.stop,
            lists_only=self.config.lists_only,
            revive_deleted=self.config.revive_deleted,
            window=self.window,
        )

    async def _put(
        self,
        receive: MemoryObjectReceiveStream[Write],
        send: MemoryObjectSendStream[Outcome],
        bulk: BulkPath,
    ) -> None:
        """The put workers; on an API with appends (and `append_writes`), an existing
        contact that only gains lists is batched into appends by id instead."""
        config, backend = self.config, self.backend
        intend = self.journal.intend if self.journal is not None else None
        write = functools.partial(
            send_write,
            backend=backend,
            skip_removed=config.skip_removed,
            verify=config.verify_writes,
            stale_after=config.stale_after,
            intend=intend,
            lists_only=config.lists_only,
            revive_deleted=config.revive_deleted,
        )
        appends = None
        if (
            config.append_writes
            and isinstance(backend, AppendingBackend)
            and backend.capabilities.append_max > 0
        ):
            appends = Appends(
                backend,
                bulk,
                # a contact an append did not vouch for is read again, whatever `verify`
                functools.partial(write, verify=config.verify_writes.replace("off", "stale")),
                linger=config.append_linger,
                limit=config.limits.bulk,
                writers=config.limits.put,
                intend=self.journal.intend_many if self.journal is not None else None,
                stop=self.stop,
            )

        async def worker(
            receive: MemoryObjectReceiveStream[Write], send: MemoryObjectSendStream[Outcome]
        ) -> None:
            await put_contacts(
                receive,
                send,
                backend=backend,
                skip_removed=config.skip_removed,
                stats=self.stats.stages["put"],
                stop=self.stop,
                verify=config.verify_writes,
                stale_after=config.stale_after,
                intend=intend,
                lists_only=config.lists_only,
                revive_deleted=config.revive_deleted,
                appends=appends,
            )

        if appends is None:
            await fan_out(worker, receive, send, limit=config.limits.put)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(appends.run, send.clone())
            try:
                await fan_out(worker, receive, send, limit=config.limits.put)
            finally:
                appends.close()

    async def _record(
        self,
        receive: MemoryObjectReceiveStream[Recorded],
        writer: ReportWriter,
        on_outcome: Callable[[Outcome], None] | None,
        bulk: BulkPath,
    ) -> None:
        await record_outcomes(
            receive,
            writer=writer,
            stats=self.stats,
            on_done=self.planner.done,
            on_outcome=on_outcome,
            journal=self.journal,
            notes=bulk.notes,
            row_notes=self.row_notes,
            intents=self.earlier_intents,
            maybe_added=bulk.maybe_added,
        )

    async def _summary(self, report_path: Path | None, bulk: BulkPath) -> MigrationReport:
        stats, started, now_stats = self.stats, self.started, self.backend.stats()
        outcomes: dict[str, int] = {k: stats.outcomes.get(k, 0) for k in OUTCOMES}
        emails = stats.emails
        if self.journal is not None:
            counts, emails = await self.journal.counts()
            outcomes = {k: counts.get(k, 0) for k in OUTCOMES}
        rows = stats.rows_read
        return MigrationReport(
            rows=rows,
            emails=emails,
            outcomes=outcomes,
            merged_rows=max(0, sum(outcomes.values()) - emails),
            requests=now_stats.requests - started.requests,
            retries=now_stats.retries - started.retries,
            throttles=now_stats.throttles - started.throttles,
            activities=stats.activities,
            polls=stats.polls,
            elapsed=time.monotonic() - stats.started,
            report_path=report_path,
            pending=max(0, rows - sum(outcomes.values())),
            resumed=self.resumed_rows,
            retried=self.retried_rows,
            reactivated=stats.reactivated,
            journal_path=self.journal.path if self.journal else None,
            bulk_enabled=bulk.enabled,
            stopped=self.stop.is_set(),
            warnings=tuple(bulk.warnings),
        )


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
