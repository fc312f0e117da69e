"""The record stage: one report line per email, the run's counts, and progress."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping, MutableMapping, MutableSet
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO, TypeVar

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.crashpoints import crash_point
from engine.errors import OutputError
from engine.journal import Intent, Journal
from engine.pipeline.models import REACTIVATED, BulkAdded, Outcome, Recorded, join_notes
from engine.pipeline.stats import RunStats
from engine.pipeline.streams import batches

__all__ = ["ReportWriter", "record_outcomes"]

T = TypeVar("T")

SUCCESSES = frozenset({"created", "updated", "unchanged", "bulk_added"})


def _string(text: str) -> str:
    """A JSON string, as `json.dumps(text, ensure_ascii=False)` writes it."""
    return encode_basestring(text)


class ReportWriter:
    """Writes outcomes as JSON Lines, buffered, from a worker thread.

    Each line: `email`, `outcome`, `reason` (when not a success), `lists_added` (list
    names), `rows` (source line numbers; several when duplicate rows were coalesced),
    `path` (`contact` or `bulk`), and `note` when there is one (e.g. why a contact of the
    bulk path was sent contact by contact). Lines are whole: a crash never leaves half a line behind
    more than the last, unflushed buffer.

    Args:
        path: the report file (truncated), or None to keep no report.
        list_names: list key -> name, to report names rather than ids.
    """

    def __init__(self, path: Path | None, list_names: Mapping[str, str]) -> None:
        self.path = path
        self._names = dict(list_names)
        self._encoded: dict[tuple[str, ...], str] = {}
        self._buffer: list[str] = []
        self._file: IO[str] | None = None

    async def open(self) -> None:
        """Create (truncate) the report file."""
        if self.path is not None:
            path = self.path

            def create() -> IO[str]:
                path.parent.mkdir(parents=True, exist_ok=True)
                return path.open("w", encoding="utf-8")

            self._file = await self._io(create)

    async def _io(self, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except OSError as exc:
            raise OutputError(
                f"cannot write the report {self.path}: {exc}. Nothing is lost (the journal "
                "and the account hold what was done): make room or make the folder writable, "
                "then run the same command again to resume"
            ) from exc

    def line(self, outcome: Outcome) -> str:
        """The JSON line of an outcome: `json.dumps` of the record, built from its parts
        (the arrays of list names are encoded once per set of lists, not once per line)."""
        parts = ['{"email": ', _string(outcome.email), ', "outcome": ', _string(outcome.kind)]
        if outcome.kind not in SUCCESSES or outcome.reason:
            parts += [', "reason": ', _string(outcome.reason)]
        parts += [', "lists_added": ', self._names_of(tuple(outcome.lists_added))]
        if outcome.targets:
            parts += [', "targets": ', self._names_of(tuple(outcome.targets))]
        if outcome.lists_before is not None:
            parts += [', "lists_before": ', self._names_of(tuple(outcome.lists_before))]
        parts += [', "rows": [', ", ".join(map(str, outcome.rows)), "]"]
        if outcome.path:
            parts += [', "path": ', _string(outcome.path)]
        if outcome.note:
            parts += [', "note": ', _string(outcome.note)]
        parts.append("}\n")
        return "".join(parts)

    def _names_of(self, ids: tuple[str, ...]) -> str:
        """The JSON array of the lists' names, kept per tuple of ids (contacts share them)."""
        encoded = self._encoded.get(ids)
        if encoded is None:
            if len(self._encoded) >= 10_000:  # lists before vary: keep the cache bounded
                self._encoded.clear()
            names = [self._names.get(k, k) for k in ids]
            encoded = self._encoded[ids] = json.dumps(names, ensure_ascii=False)
        return encoded

    async def write(self, outcome: Outcome) -> None:
        """Add an outcome; flushes every 2,000 lines."""
        if self._file is None:
            return
        self._buffer.append(self.line(outcome))
        if len(self._buffer) >= 2000:
            await self.flush()

    async def write_added(self, added: BulkAdded) -> None:
        """Add the lines of the contacts an activity added: `line` of each one's outcome,
        from one template for them all; flushes every 10,000 lines."""
        if self._file is None:
            return
        names = self._names_of(added.targets)
        middle = f', "outcome": "bulk_added", "lists_added": {names}, "targets": {names}, "rows": ['
        end = '], "path": "bulk"}\n'
        self._buffer += [
            f'{{"email": {_string(email)}{middle}{", ".join(map(str, rows))}{end}'
            for email, rows in zip(added.emails, added.rows, strict=True)
        ]
        # Written 10,000 lines at a time (about 1.5 MB): each write is a trip to a worker
        # thread, which with the reader's thread busy waits turns of the interpreter's lock
        # (up to 5 ms each) while the record stage, and every activity's slot behind it,
        # waits.
        if len(self._buffer) >= 10_000:
            await self.flush()

    async def flush(self) -> None:
        """Write the buffer out and flush the file."""
        file = self._file
        if file is None or not self._buffer:
            return
        data, self._buffer = "".join(self._buffer), []

        def write() -> None:
            file.write(data)
            file.flush()

        await self._io(write)

    async def aclose(self) -> None:
        """Flush and close; shielded from cancellation so the report stays whole."""
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            except BaseException:
                if self._file is not None:  # closed quietly: the first error is the one told
                    file, self._file = self._file, None
                    with contextlib.suppress(OSError):
                        await anyio.to_thread.run_sync(file.close)
                raise
            if self._file is not None:
                file, self._file = self._file, None
                await self._io(file.close)


def _settled(
    outcome: Outcome,
    notes: MutableMapping[str, str] | None,
    row_notes: MutableMapping[str, str] | None,
    intents: MutableMapping[str, Intent] | None,
    maybe_added: MutableSet[str] | None,
) -> Outcome:
    """A planned contact's outcome with what the earlier stages know of it (taken off)."""
    email = outcome.email
    sent_as = notes.pop(email, "") if notes else ""
    read_as = row_notes.pop(email, "") if row_notes else ""
    if sent_as or read_as:
        outcome = dataclasses.replace(outcome, note=join_notes(sent_as, outcome.note, read_as))
    if intents and email in intents:
        outcome = _with_intent(outcome, intents.pop(email))
    if maybe_added and email in maybe_added:
        maybe_added.discard(email)
        if outcome.kind == "unchanged":
            outcome = dataclasses.replace(
                outcome,
                kind="bulk_added",
                lists_added=outcome.targets,
                lists_before=None,  # read after the activity: not "before"
                note=join_notes(
                    outcome.note, "found on its lists, which its activity had asked for"
                ),
            )
    return outcome


def _with_intent(outcome: Outcome, intent: Intent) -> Outcome:
    """The outcome of a contact whose write an earlier run sent but never recorded."""
    before = intent.lists_before
    bulk = intent.kind == "bulk_added"
    if outcome.kind == "unchanged":  # that write was applied: it is what happened
        note = (
            "its activity was posted by an earlier run, stopped before recording it"
            if bulk
            else "its write was sent by an earlier run, stopped before recording it"
        )
        return dataclasses.replace(
            outcome,
            kind=intent.kind,  # type: ignore[arg-type]
            lists_added=intent.lists_added,
            lists_before=None if bulk else before,  # an activity reads nothing first
            note=join_notes(outcome.note, note),
        )
    if bulk:  # its activity may not have run: this run's own read stands
        return outcome
    if outcome.lists_before is not None:  # before the engine's writes: the earlier run's read
        return dataclasses.replace(outcome, lists_before=before)
    return outcome


async def record_outcomes(
    receive_outcomes: MemoryObjectReceiveStream[Recorded],
    *,
    writer: ReportWriter,
    stats: RunStats,
    on_done: Callable[[str], None],
    on_outcome: Callable[[Outcome], None] | None = None,
    journal: Journal | None = None,
    notes: MutableMapping[str, str] | None = None,
    row_notes: MutableMapping[str, str] | None = None,
    intents: MutableMapping[str, Intent] | None = None,
    maybe_added: MutableSet[str] | None = None,
) -> None:
    """The stage: count every outcome, journal and write it, tell the planner it is done.

    `notes` (email -> note: how the bulk path sent it) and `row_notes` (email -> what the
    reader left out of its rows) are taken off as the emails' outcomes arrive and put on
    them.
    `intents` are the writes an earlier run sent without recording their outcome: the
    contact's outcome says what that write did, with the lists it had before it.
    `maybe_added` are the emails whose bulk activity may have run before they were sent
    contact by contact: found already on their targets, they are `bulk_added`.

    The contacts an activity added (`BulkAdded`) are taken together: counted at once,
    journaled and written from one template; one of them with something of the above to
    put on its outcome is taken alone.
    """
    stage = stats.stages["record"]

    async def record(outcome: Outcome) -> None:
        if outcome.path:
            outcome = _settled(outcome, notes, row_notes, intents, maybe_added)
        stats.outcomes[outcome.kind] += len(outcome.rows)
        if outcome.path:
            stats.path_rows[outcome.path] += len(outcome.rows)
        if REACTIVATED in outcome.note:
            stats.reactivated += 1
        stats.emails += 1
        stage.done += 1
        if journal is not None:
            await journal.record(outcome)
        await writer.write(outcome)
        # Only a planned contact's outcome (it has a path) ends a write; a rejected row
        # that names an email being written must not release that email (I5).
        if outcome.email and outcome.path:
            on_done(outcome.email)
        if on_outcome is not None:
            on_outcome(outcome)

    async def record_added(added: BulkAdded) -> None:
        alone = _with_more(added, notes, row_notes, intents, maybe_added)
        if alone:
            for outcome in added.outcomes():
                if outcome.email in alone:
                    await record(outcome)
            keep = [i for i, email in enumerate(added.emails) if email not in alone]
            added = BulkAdded(
                [added.emails[i] for i in keep], [added.rows[i] for i in keep], added.targets
            )
            if not added.emails:
                return
        lines = sum(map(len, added.rows))
        stats.outcomes["bulk_added"] += lines
        stats.path_rows["bulk"] += lines
        stats.emails += len(added.emails)
        stage.done += len(added.emails)
        if journal is not None:
            await journal.record_added(added)
            crash_point("bulk-recorded")
        await writer.write_added(added)
        for email in added.emails:
            on_done(email)
        if on_outcome is not None:
            for outcome in added.outcomes():
                on_outcome(outcome)

    async with receive_outcomes:
        async for batch in batches(receive_outcomes):
            for item in batch:
                if isinstance(item, BulkAdded):
                    try:
                        await record_added(item)
                    finally:
                        if item.recorded is not None:
                            item.recorded.set()
                else:
                    await record(item)


def _with_more(
    added: BulkAdded,
    notes: Mapping[str, str] | None,
    row_notes: Mapping[str, str] | None,
    intents: Mapping[str, Intent] | None,
    maybe_added: MutableSet[str] | None,
) -> set[str]:
    """The emails of `added` that `_settled` would change (usually none, found without a
    look at each email while nothing is noted)."""
    alone: set[str] = set()
    for noted in (notes, row_notes, intents, maybe_added):
        if noted:
            alone.update(email for email in added.emails if email in noted)
    return alone
