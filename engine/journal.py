"""The journal: a durable record of a migration, so a stopped or crashed run resumes.

One SQLite file (WAL mode) per migration, by default next to the report. It is keyed by a
hash of the source's bytes and the target lists: a journal of another migration is refused
rather than mixed in. It holds:

- `outcomes`: one row per email (or per rejected row) that reached an outcome; a resumed
  run does not send these again, and writes its report from this table, so the report
  covers every row of the source across all runs;
- `activities`: every bulk activity id with the contacts it carries, written (and
  committed) right after the API answered the submission and before the engine relies on
  it; a resumed run polls these instead of submitting them again;
- `intents` and `bulk_intents`: each write about to be sent (a contact's, or a bulk
  activity's contacts in one row, before its POST), so that a run killed before its
  outcome is journaled leaves the next run the truth of what was sent;
- `runs` and `meta`: when each run started and ended, and the key.

Outcomes are written in batches (every `batch` outcomes or `interval` seconds), so the
journal costs little throughput. A crash loses at most the outcomes of the last, unwritten
batch and of requests in flight; redoing those is safe: the union of lists is idempotent, and
a repeated POST gets 409 and goes through the merge. WAL with `synchronous=NORMAL` survives
a killed process (only a power cut can lose the last transactions).

SQLite work runs one call at a time (a capacity limiter of 1), in a worker thread, except
the commit of intents: a write waits for it, and a hop to a thread and back cost several
times the commit itself (a small transaction appended to the WAL, never an fsync: the WAL
is checkpointed from the worker thread, not by the commit that fills it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from engine import fastjson
from engine.errors import ConfigError, OutputError, SourceError
from engine.limiter import Held
from engine.pipeline.models import BulkAdded, Contact, Outcome

__all__ = ["Intent", "Journal", "PendingActivity", "journal_identity"]

SCHEMA_VERSION = "5"
#: Earlier formats this one opens and upgrades in place (5 added `bulk_intents`).
_READS = frozenset({"4", SCHEMA_VERSION})
#: Marks a journal of this engine (meta `engine`): no other file is adopted or deleted.
ENGINE_MARK = "ctct-migration-engine"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (
    key TEXT PRIMARY KEY,       -- the email, or 'row:N' for a rejected row
    email TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    lists_added TEXT NOT NULL,  -- JSON list of list keys
    rows TEXT NOT NULL,         -- JSON list of source line numbers
    path TEXT NOT NULL,
    first_row INTEGER NOT NULL,
    run INTEGER NOT NULL,
    targets TEXT NOT NULL,      -- JSON list of the list keys the contact had to end up on
    lists_before TEXT,          -- JSON list of the list keys read before the write; NULL: unread
    note TEXT NOT NULL,         -- e.g. why a bulk contact went contact by contact
    retry INTEGER NOT NULL      -- 1: failed for a cause that may pass; a rerun retries it
);
CREATE INDEX IF NOT EXISTS outcomes_by_row ON outcomes (first_row);
CREATE TABLE IF NOT EXISTS activities (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,           -- the API's activity id (a server that lost its state may
                                -- give one again: never overwritten, told apart by insert_time)
    insert_time TEXT NOT NULL,  -- the server's InsertTime of the activity submitted
    targets TEXT NOT NULL,      -- JSON list of the target list ids (no dialect's form)
    contacts TEXT NOT NULL,     -- JSON [[email, [rows], {fields}], ...], in data order
    submitted REAL NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    run INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    email TEXT PRIMARY KEY,     -- a contact a write is about to be sent for
    kind TEXT NOT NULL,         -- 'created' (POST) or 'updated' (PUT)
    lists_before TEXT NOT NULL, -- JSON list of the list keys it was on before the write
    lists_added TEXT NOT NULL,  -- JSON list of the list keys the write adds
    run INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bulk_intents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    targets TEXT NOT NULL,      -- JSON list of the list keys the activity adds
    emails TEXT NOT NULL,       -- JSON list of the emails of an activity about to be posted
    run INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
    email TEXT NOT NULL,        -- a member, before the first run
    list TEXT NOT NULL,         -- the list's name
    PRIMARY KEY (email, list)
);
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL DEFAULT 'running',
    pid INTEGER                 -- the process of the run (named to a second run, refused)
);
"""


def journal_identity(
    source_digest: str, lists: Iterable[str], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """What makes a migration this one: its source's bytes, its target lists, how it reads
    (and the account, among `settings`). Kept in the journal, so that a refusal can say
    exactly what differs."""
    return {"source": source_digest, "lists": sorted(set(lists)), "settings": dict(settings)}


def _key_of(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _differences(was: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What differs between two identities, in words."""
    parts: list[str] = []
    if was.get("source") != now.get("source"):
        parts.append("the source file's bytes (another file, or this one changed)")
    if was.get("lists") != now.get("lists"):
        parts.append(f"the lists ({was.get('lists')} then, {now.get('lists')} now)")
    old, new = dict(was.get("settings") or {}), dict(now.get("settings") or {})
    if old.get("account") != new.get("account"):
        parts.append(f"the account ({old.get('account')} then, {new.get('account')} now)")
    changed = [
        f"{name}: {old.get(name)!r} then, {new.get(name)!r} now"
        for name in sorted(old.keys() | new.keys())
        if name != "account" and old.get(name) != new.get(name)
    ]
    if changed:
        parts.append("the settings (" + "; ".join(changed) + ")")
    return "; ".join(parts) or "its key"


@dataclass(frozen=True, slots=True)
class PendingActivity:
    """An activity submitted by an earlier run that did not reach its outcome.

    Attributes:
        id: the activity id.
        targets: the ids of its target lists.
        contacts: the contacts it carries, in the order of its data lines.
        insert_time: the server's `InsertTime` when it was submitted ("" when it gave none).
    """

    id: str
    targets: tuple[str, ...]
    contacts: tuple[Contact, ...]
    insert_time: str = ""


#: Journals this process holds locked, by resolved path (a second `Journal.open` of the same
#: file in this process is told apart from another process).
_LOCKED_HERE: set[str] = set()


def _lock_holder(path: Path) -> str:
    """Who holds the lock of `path`, in words: "pid N" when known."""
    if str(path.resolve()) in _LOCKED_HERE:
        return f"pid {os.getpid()}, this process"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            row = db.execute(
                "SELECT pid FROM runs WHERE status = 'running' ORDER BY run DESC LIMIT 1"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        row = None
    return f"pid {row[0]}" if row and row[0] else "pid unknown"


@dataclass(frozen=True, slots=True)
class Intent:
    """A write an earlier run was about to send (journaled before it was sent).

    Attributes:
        kind: "created" (a create), "updated" (an update) or "bulk_added" (a bulk activity,
            posted before its id could be journaled).
        lists_before: the list keys the contact was on before that write.
        lists_added: the list keys the write added.
    """

    kind: str
    lists_before: tuple[str, ...]
    lists_added: tuple[str, ...]


@functools.lru_cache(maxsize=4096)
def _json_ids(ids: tuple[str, ...]) -> str:
    """The JSON array of a tuple of ids, kept: contacts share their target tuples, so a
    million outcomes encode a handful of them."""
    return json.dumps(list(ids))


def _json_rows(rows: Sequence[int]) -> str:
    """The JSON array of source line numbers (ints: nothing to escape)."""
    return "[" + ",".join(map(str, rows)) + "]"


@dataclass(frozen=True, slots=True)
class _Added:
    """The `bulk_added` outcomes of one `BulkAdded` of run `run`, buffered as they came:
    written by one statement (`_ADDED_SQL`), not a row each."""

    added: BulkAdded
    run: int

    def payload(self) -> str:
        """`[[email, [rows], first row], …]` as JSON text (a blob would not be read as JSON
        by SQLite before 3.45), for `_ADDED_SQL`."""
        pairs = zip(self.added.emails, self.added.rows, strict=True)
        return fastjson.dumps([[e, rows, min(rows)] for e, rows in pairs]).decode()

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The rows `_ADDED_SQL` writes, made in Python as `record` makes each one's (an
        SQLite without JSON functions)."""
        return (_outcome_row(outcome, self.run) for outcome in self.added.outcomes())


_OUTCOME_SQL = f"INSERT OR REPLACE INTO outcomes VALUES ({','.join('?' * 13)})"
#: The rows `_OUTCOME_SQL` would write for each contact of an `_Added`, made by SQLite from
#: its JSON payload in one statement. Row by row, `executemany` takes and releases the
#: interpreter's lock for every row (it binds in Python and steps in C): with the event loop
#: and the reader busy in other threads, each row waited for its turn, and a million bulk
#: outcomes took 19 s of the journal's thread, while the bulk path's next activity waited
#: for that thread to note its intent. `json_extract` (not `->>`) works on SQLite 3.9 and
#: later, where the JSON functions are built in (`_write_outcomes` falls back without them).
_ADDED_SQL = """
INSERT OR REPLACE INTO outcomes
SELECT json_extract(value, '$[0]'), json_extract(value, '$[0]'), 'bulk_added', '', :targets,
       json_extract(value, '$[1]'), 'bulk', json_extract(value, '$[2]'), :run, :targets, NULL,
       '', 0
FROM json_each(:contacts)
"""


def _outcome_row(outcome: Outcome, run: int) -> tuple[Any, ...]:
    """The outcomes table's row of `outcome`, recorded by run `run`."""
    return (
        _outcome_key(outcome),
        outcome.email,
        outcome.kind,
        outcome.reason,
        _json_ids(tuple(outcome.lists_added)),
        _json_rows(outcome.rows),
        outcome.path,
        min(outcome.rows) if outcome.rows else 0,
        run,
        # Kept so that a resumed run's report (written from here) still lets the audit check
        # targets and lists before for rows done by an earlier run.
        _json_ids(tuple(outcome.targets)),
        None if outcome.lists_before is None else _json_ids(tuple(outcome.lists_before)),
        outcome.note,
        int(outcome.retryable),
    )


def _outcome_key(outcome: Outcome) -> str:
    if outcome.kind == "rejected" or not outcome.email:
        return f"row:{outcome.rows[0] if outcome.rows else 0}"
    return outcome.email


class Journal:
    """A migration's journal. Open it with `Journal.open`; close it with `aclose`.

    Args:
        path: the SQLite file.
        batch: outcomes per write.
        interval: seconds between writes of a partial batch.
        bulk_batch: `bulk_added` outcomes per write, when no other outcome waits.
        bulk_interval: seconds `bulk_added` outcomes wait at most, when no other does.

    A contact's outcome is written within `interval`: a crash loses no more. `bulk_added`
    outcomes may wait longer, in larger writes: their activity and its contacts are in the
    journal from its submission on, and a resumed run settles again every activity whose
    contacts have no outcome. Each write costs the journal's thread a turn of the
    interpreter's lock for every step (with the event loop and the reader busy, up to 5 ms
    each), and its intent commits wait meanwhile: in writes of 2,000, a million bulk
    outcomes kept that thread 12 s. Those writes are made by `flush_periodically`, woken
    when they are due, not by the caller of `record_added` (the record stage, which every
    activity's slot waits for): 50 writes of 20,000 were 7 s of a million-row run's 22 s
    there. The caller waits only when the writes fall behind by another `bulk_batch`.
    """

    def __init__(
        self,
        path: Path,
        *,
        batch: int = 2000,
        interval: float = 0.25,
        bulk_batch: int = 20_000,
        bulk_interval: float = 2.0,
    ) -> None:
        self.path = path
        self._batch = batch
        self._interval = interval
        self._bulk_batch = bulk_batch
        self._bulk_interval = bulk_interval
        self._buffer: list[tuple[Any, ...] | _Added] = []  # outcome rows, bulk groups
        self._rows_buffered = 0  # outcomes of `record` in `_buffer`
        self._added_buffered = 0  # outcomes of `record_added` in `_buffer`
        self._added_since = 0.0  # when the first of them was buffered
        self._json_each = True  # SQLite has its JSON functions (`_ADDED_SQL`)
        self._last_write = time.monotonic()
        self._limiter = anyio.CapacityLimiter(1)
        self._wake = anyio.Event()  # bulk outcomes are due: `flush_periodically` writes them
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._intents: list[tuple[Any, ...]] = []
        self._bulk_intents: list[tuple[Any, ...]] = []
        self._intent_lock = anyio.Lock()
        self._intent_error: OutputError | None = None
        self._wal_pages = 0  # pages appended to the WAL since its last checkpoint (estimated)
        self.run = 0
        self.resumed = False

    def __repr__(self) -> str:
        buffered = self._rows_buffered + self._added_buffered
        return f"<Journal {self.path} run {self.run}, {buffered} outcomes buffered>"

    # --- lifecycle --------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        identity: Mapping[str, Any],
        restart: bool = False,
        **buffering: Any,
    ) -> Journal:
        """Open (or create) the journal of the migration `identity` (see `journal_identity`);
        `buffering` sets the constructor's `batch`, `interval`, `bulk_batch` and
        `bulk_interval`.

        Raises:
            ConfigError: the file is the journal of another migration (another source or
                other lists) and `restart` is off, or it is not a journal at all.
        """
        journal = cls(Path(path), **buffering)
        try:
            await journal._call(journal._open_sync, dict(identity), restart)
        except OutputError as exc:
            raise ConfigError(
                f"cannot open the journal {path}: {exc.__cause__}; pass another --journal "
                "path (or make its folder writable)"
            ) from exc
        return journal

    @classmethod
    async def open_for_reading(cls, path: str | Path) -> Journal:
        """Open an existing journal to read it (the audit); starts no run.

        Raises:
            SourceError: there is no such file, or it is not a journal.
        """
        journal = cls(Path(path))
        await journal._call(journal._open_reading_sync)
        return journal

    def _open_reading_sync(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"there is no journal at {self.path}")
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("SELECT name FROM meta").fetchall()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise SourceError(f"{self.path} is not a journal of this engine ({exc})") from exc
        self._db = db

    def _lock_sync(self) -> None:
        """Hold an exclusive lock on the journal file for the run (flock: it does not meet
        SQLite's own fcntl locks), so that two runs of one migration never run at once.

        Raises:
            ConfigError: another process holds it (its pid is in the message).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _lock_holder(self.path)
            raise ConfigError(
                f"another run of this migration is running ({holder}) with the journal "
                f"{self.path}: wait for it to end or stop it (Ctrl-C, or kill its pid), then "
                "run the command again"
            ) from None
        self._lock_fd = fd
        _LOCKED_HERE.add(str(self.path.resolve()))

    def _unlock_sync(self) -> None:
        if self._lock_fd is not None:
            _LOCKED_HERE.discard(str(self.path.resolve()))
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _check_ours_sync(self) -> None:
        """Refuse a file that exists and is not a journal of this engine: it is never given
        tables, adopted, or deleted (by `restart`).

        Raises:
            ConfigError: it is another SQLite database, or not SQLite at all.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        refusal = (
            f"{self.path} is not a journal of this engine, and is left as it is: pass "
            "another --journal path"
        )
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                meta = (
                    dict(db.execute("SELECT name, value FROM meta").fetchall())
                    if "meta" in tables
                    else {}
                )
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise ConfigError(f"{refusal} ({exc})") from exc
        if not tables:
            return  # an empty database: a journal that never got its tables
        # Journals of earlier versions had no mark, but their key, version and tables.
        earlier = {"key", "version"} <= meta.keys() and {"outcomes", "runs"} <= tables
        if meta.get("engine") != ENGINE_MARK and not earlier:
            raise ConfigError(refusal)

    def _open_sync(self, identity: dict[str, Any], restart: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_ours_sync()
        if restart and self.path.exists():
            self._lock_sync()  # never delete the journal of a run in progress
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._unlock_sync()
        self._lock_sync()
        try:
            self._open_locked_sync(identity)
        except BaseException:
            self._unlock_sync()
            raise

    def _open_locked_sync(self, identity: dict[str, Any]) -> None:
        key = _key_of(identity)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (which fsync) run in the worker thread (`_checkpoint_sync`), never
            # in an intent's commit on the event loop.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.executescript(_SCHEMA)
            found = dict(db.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.OperationalError:  # a full or read-only disk: told as such by `open`
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError(
                f"{self.path} is not a journal of this engine ({exc}); pass another --journal "
                "path or delete the file"
            ) from exc
        if found and found.get("version") not in _READS:
            db.close()
            raise ConfigError(
                f"the journal {self.path} was written by another version of the engine "
                f"(journal format {found.get('version')}, this one reads {SCHEMA_VERSION}): "
                "pass --restart to start over, or another --journal path."
            )
        if found and found.get("key") != key:
            db.close()
            try:
                differs = _differences(json.loads(found.get("identity") or "{}"), identity)
            except ValueError:
                differs = "its source file, lists, account or settings"
            raise ConfigError(
                f"the journal {self.path} belongs to another migration; what differs: "
                f"{differs}. Run the original command to resume it, pass --restart to start "
                "over (the journal is then deleted), or pass another --journal path."
            )
        if not found:
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [
                    ("engine", ENGINE_MARK),
                    ("key", key),
                    ("identity", json.dumps(identity, sort_keys=True)),
                    ("version", SCHEMA_VERSION),
                    ("created", str(time.time())),
                ],
            )
        elif found.get("version") != SCHEMA_VERSION:  # its new tables were just created
            db.execute("UPDATE meta SET value = ? WHERE name = 'version'", (SCHEMA_VERSION,))
        self.resumed = bool(found)
        cursor = db.execute(
            "INSERT INTO runs (started, pid) VALUES (?, ?)", (time.time(), os.getpid())
        )
        self.run = int(cursor.lastrowid or 0)
        self._db = db

    async def aclose(self, status: str = "ended") -> None:
        """Write what is buffered, mark the run, close. Shielded from cancellation; the file
        is closed (and its lock released) even when the write fails (a full disk)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            except BaseException:
                if self._db is not None:  # closed quietly: the first error is the one told
                    with contextlib.suppress(OutputError):
                        await self._call(self._close_sync, "failed")
                raise
            if self._db is not None:
                await self._call(self._close_sync, status)

    def _close_sync(self, status: str) -> None:
        db = self._conn()
        try:
            if self.run:
                db.execute(
                    "UPDATE runs SET ended = ?, status = ? WHERE run = ?",
                    (time.time(), status, self.run),
                )
        finally:
            db.close()
            self._db = None
            self._unlock_sync()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the journal is not open")
        return self._db

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise self._output_error(exc) from exc

    async def _call_here(self, fn: Any, *args: Any) -> Any:
        """`_call` on the event loop's thread: for a short transaction that never fsyncs."""
        async with Held(self._limiter):  # no worker thread uses the connection meanwhile
            try:
                return fn(*args)
            except (sqlite3.Error, OSError) as exc:
                raise self._output_error(exc) from exc

    def _output_error(self, exc: BaseException) -> OutputError:
        return OutputError(
            f"cannot write the journal {self.path}: {exc}. Nothing is lost (the account "
            "holds every write made): make room or make the folder writable, then run "
            "the same command again to resume"
        )

    def _checkpoint_sync(self, pages: int) -> None:
        """Count `pages` written to the WAL; past SQLite's usual 1,000, checkpoint it (in
        the worker thread: a checkpoint fsyncs)."""
        self._wal_pages += pages
        if self._wal_pages >= 1000:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._wal_pages = 0

    # --- outcomes ---------------------------------------------------------------------

    async def record(self, outcome: Outcome) -> None:
        """Buffer an outcome; written with the next batch."""
        self._rows_buffered += 1
        self._buffer.append(_outcome_row(outcome, self.run))
        await self._flush_when_due()

    async def record_added(self, added: BulkAdded) -> None:
        """Buffer the outcomes of the contacts an activity added: the rows `record` would
        make of each one's `Outcome`, written together (`_ADDED_SQL`)."""
        if not self._added_buffered:
            self._added_since = time.monotonic()
        self._buffer.append(_Added(added, self.run))
        self._added_buffered += len(added.emails)
        if self._added_buffered >= 2 * self._bulk_batch:
            await self.flush()  # the writes fall behind: wait for them (memory)
        elif self._due():
            self._wake.set()

    def _due(self) -> bool:
        """Whether the buffer is to be written now: a batch of outcomes, or `interval`
        since the last write (bulk outcomes alone: `bulk_batch`, `bulk_interval`)."""
        now = time.monotonic()
        rows = self._rows_buffered
        added = self._added_buffered
        return bool(
            (rows and (rows >= self._batch or now - self._last_write >= self._interval))
            or (
                added
                and (added >= self._bulk_batch or now - self._added_since >= self._bulk_interval)
            )
        )

    async def _flush_when_due(self) -> None:
        if self._due():
            await self.flush()

    async def flush(self) -> None:
        """Write the buffered outcomes in one transaction."""
        if not self._buffer or self._db is None:
            return
        rows, self._buffer = self._buffer, []
        self._rows_buffered = self._added_buffered = 0
        self._last_write = time.monotonic()
        # Shielded: the rows are out of the buffer, so a cancellation while waiting for the
        # worker thread would lose them, and the report (written from the journal) with them.
        with anyio.CancelScope(shield=True):
            await self._call(self._write_outcomes, rows)

    async def flush_periodically(self) -> None:
        """Flush every `interval` seconds, and when `record_added` says bulk outcomes are
        due, until cancelled.

        `record` only flushes when an outcome arrives; while none does (a long activity is
        polled, the rate limit holds every request back) buffered outcomes would otherwise
        wait in memory, and a crash would lose outcomes of requests that finished long ago.
        """
        while True:
            with anyio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush_when_due()

    def _write_outcomes(self, items: list[tuple[Any, ...] | _Added]) -> None:
        """Write buffered outcomes in one transaction, in the order they came (a later
        outcome of an email replaces an earlier one)."""
        db = self._conn()
        count = 0
        with db:
            db.execute("BEGIN")
            rows: list[tuple[Any, ...]] = []
            for item in items:
                if not isinstance(item, _Added):
                    rows.append(item)
                    continue
                if rows:
                    db.executemany(_OUTCOME_SQL, rows)
                    count += len(rows)
                    rows = []
                count += len(item.added.emails)
                if self._json_each:
                    try:
                        targets = _json_ids(item.added.targets)
                        contacts = item.payload()
                        db.execute(
                            _ADDED_SQL, {"targets": targets, "run": item.run, "contacts": contacts}
                        )
                        continue
                    except sqlite3.OperationalError as exc:  # an SQLite without json_each
                        if "json" not in str(exc):
                            raise
                        self._json_each = False
                db.executemany(_OUTCOME_SQL, item.rows())
            db.executemany(_OUTCOME_SQL, rows)
            count += len(rows)
        # About 20 outcomes a page, in the table and each of its two indexes.
        self._checkpoint_sync(3 + count // 7)

    async def outcomes_of(self, emails: Sequence[str]) -> tuple[set[str], set[str]]:
        """Of `emails`: those with an outcome that holds, and those that failed earlier for a
        cause that may have passed (a rerun retries them)."""
        if not emails:
            return set(), set()
        result: tuple[set[str], set[str]] = await self._call(self._outcomes_sync, list(emails))
        return result

    def _finished_sync(self, emails: list[str]) -> set[str]:
        return self._outcomes_sync(emails)[0]

    def _outcomes_sync(self, emails: list[str]) -> tuple[set[str], set[str]]:
        db = self._conn()
        done: set[str] = set()
        retry: set[str] = set()
        for start in range(0, len(emails), 900):  # SQLite's bound-parameter limit
            chunk = emails[start : start + 900]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, retry FROM outcomes WHERE key IN ({marks})"
            for key, again in db.execute(query, chunk):
                (retry if again else done).add(key)
        return done, retry

    async def counts(self) -> tuple[dict[str, int], int]:
        """(outcome kind -> rows, records) over every run."""
        result: tuple[dict[str, int], int] = await self._call(self._counts_sync)
        return result

    def _counts_sync(self) -> tuple[dict[str, int], int]:
        kinds: dict[str, int] = {}
        records = 0
        db = self._conn()
        try:  # counted by SQLite (its JSON functions, built in since 3.38)
            query = (
                "SELECT kind, SUM(json_array_length(rows)), COUNT(*) FROM outcomes GROUP BY kind"
            )
            for kind, rows, count in db.execute(query):
                kinds[kind] = int(rows)
                records += int(count)
            return kinds, records
        except sqlite3.OperationalError:  # an SQLite without them: one row at a time
            kinds.clear()
            records = 0
        for kind, rows in db.execute("SELECT kind, rows FROM outcomes"):
            kinds[kind] = kinds.get(kind, 0) + len(json.loads(rows))
            records += 1
        return kinds, records

    def iter_outcomes(self) -> Iterator[Outcome]:
        """Every outcome, in source order (call from a worker thread)."""
        query = (
            "SELECT email, kind, reason, lists_added, rows, path, targets, lists_before, note, "
            "retry FROM outcomes ORDER BY first_row"
        )
        rows_of = self._conn().execute(query)
        for email, kind, reason, added, rows, path, targets, before, note, retry in rows_of:
            yield Outcome(
                email,
                kind,
                tuple(json.loads(rows)),
                reason,
                tuple(json.loads(added)),
                path,
                tuple(json.loads(targets)),
                None if before is None else tuple(json.loads(before)),
                note,
                bool(retry),
            )

    async def write_report(self, path: Path, line: Any) -> int:
        """Write the report of every run to `path` (atomically); returns the lines written."""
        written: int = await self._call(self._write_report_sync, path, line)
        return written

    def _write_report_sync(self, path: Path, line: Any) -> int:
        tmp = path.with_name(path.name + ".tmp")
        count = 0
        with tmp.open("w", encoding="utf-8") as file:
            for outcome in self.iter_outcomes():
                file.write(line(outcome))
                count += 1
        tmp.replace(path)
        return count

    # --- intents: what a write is about to do ------------------------------------------

    async def intend(
        self, email: str, kind: str, lists_before: Iterable[str], lists_added: Iterable[str]
    ) -> None:
        """Record, durably, a write about to be sent; returns once it is committed.

        A run killed after the write but before its outcome is journaled would otherwise let
        the next run read the contact after that write and call it `unchanged`, with the
        lists it was on *after* the write as "before". Commits are grouped: writes waiting
        at the same moment share one transaction.
        """
        await self.intend_many([(email, kind, lists_before, lists_added)])

    async def intend_many(
        self, writes: Iterable[tuple[str, str, Iterable[str], Iterable[str]]]
    ) -> None:
        """`intend` for many contacts at once, in one commit: (email, kind, lists before,
        lists added) each."""
        self._intents += [
            (email, kind, _json_ids(tuple(sorted(before))), _json_ids(tuple(added)), self.run)
            for email, kind, before, added in writes
        ]
        await self._commit_intents()

    async def intend_bulk(self, emails: Sequence[str], targets: Sequence[str]) -> None:
        """`intend` for the contacts of a bulk activity about to be posted, in one row: they
        are `bulk_added` to `targets`, with no lists before (none were read)."""
        self._bulk_intents.append((_json_ids(tuple(targets)), json.dumps(list(emails)), self.run))
        await self._commit_intents()

    async def _commit_intents(self) -> None:
        """Commit every intent buffered so far; writes waiting at the same moment share one
        transaction (the first to take the lock commits the others' too)."""
        async with self._intent_lock:
            if self._intent_error is not None:
                # A commit failed (a full disk), ours perhaps with it: the write must not go.
                raise OutputError(str(self._intent_error)) from self._intent_error
            if not self._intents and not self._bulk_intents:
                return  # the holder before us committed ours with its own
            rows, self._intents = self._intents, []
            bulk, self._bulk_intents = self._bulk_intents, []
            with anyio.CancelScope(shield=True):
                try:
                    await self._call_here(self._write_intents, rows, bulk)
                except OutputError as exc:
                    self._intent_error = exc
                    raise

    def _write_intents(self, rows: list[tuple[Any, ...]], bulk: list[tuple[Any, ...]]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            if rows:
                db.executemany("INSERT OR REPLACE INTO intents VALUES (?,?,?,?,?)", rows)
            if bulk:
                db.executemany(
                    "INSERT INTO bulk_intents (targets, emails, run) VALUES (?,?,?)", bulk
                )
        # Counted only: on the event loop's thread, the checkpoint is left to the worker's.
        self._wal_pages += 2 + len(rows) // 20 + sum(len(b[1]) for b in bulk) // 4000

    async def earlier_intents(self) -> dict[str, Intent]:
        """Writes earlier runs were about to send whose outcome they never recorded."""
        result: dict[str, Intent] = await self._call(self._earlier_intents_sync)
        return result

    def _earlier_intents_sync(self) -> dict[str, Intent]:
        db = self._conn()
        found: dict[str, tuple[int, Intent]] = {}
        query = "SELECT targets, emails, run FROM bulk_intents WHERE run < ? ORDER BY seq"
        for targets, emails, run in db.execute(query, (self.run,)):
            added = tuple(json.loads(targets))
            for email in json.loads(emails):
                found[email] = (run, Intent("bulk_added", (), added))
        if found:
            done, retry = self._outcomes_sync(list(found))
            for email in done | retry:
                del found[email]
        query = (
            "SELECT i.email, i.kind, i.lists_before, i.lists_added, i.run FROM intents i "
            "LEFT JOIN outcomes o ON o.key = i.email WHERE o.key IS NULL AND i.run < ?"
        )
        for email, kind, before, added, run in db.execute(query, (self.run,)):
            # The latest intent stands: within a run, a contact's own write comes after its
            # activity's (a contact of a failed activity is then sent alone).
            if email not in found or found[email][0] <= run:
                found[email] = (
                    run,
                    Intent(kind, tuple(json.loads(before)), tuple(json.loads(added))),
                )
        return {email: intent for email, (_, intent) in found.items()}

    # --- the pre-run snapshot ---------------------------------------------------------

    async def has_snapshot(self) -> bool:
        """True once a snapshot was taken (by this run or the first one)."""
        value = await self._call(self._meta_sync, "snapshot")
        return value is not None

    def _meta_sync(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    async def record_snapshot(self, members: Iterable[tuple[str, str]]) -> None:
        """Store (email, list name) pairs taken before the first run, and mark it done."""
        await self._call(self._snapshot_sync, list(members))

    def _snapshot_sync(self, members: list[tuple[str, str]]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            db.execute("DELETE FROM snapshot")
            db.executemany("INSERT OR IGNORE INTO snapshot VALUES (?, ?)", members)
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('snapshot', ?)",
                (str(time.time()),),
            )

    async def snapshot(self) -> dict[str, list[str]]:
        """email -> list names it was on before the first run (empty without a snapshot)."""
        result: dict[str, list[str]] = await self._call(self._read_snapshot_sync)
        return result

    def _read_snapshot_sync(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for email, name in self._conn().execute("SELECT email, list FROM snapshot"):
            result.setdefault(email, []).append(name)
        return result

    # --- activities -------------------------------------------------------------------

    async def activity_submitted(
        self, activity_id: str, targets: Sequence[str], contacts: str, insert_time: str = ""
    ) -> None:
        """Record a submitted activity and its contacts; committed before this returns.

        `contacts` is their JSON, `[[email, [rows], {fields}], ...]` in data order (a
        `Batch`'s `text`). Never replaces an earlier record with the same id: each keeps its
        own contacts.
        """
        await self._call(
            self._exec,
            "INSERT INTO activities (id, insert_time, targets, contacts, submitted, run) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (activity_id, insert_time, json.dumps(list(targets)), contacts, time.time(), self.run),
        )

    def _exec(self, sql: str, args: tuple[Any, ...]) -> None:
        self._conn().execute(sql, args)
        self._checkpoint_sync(2 + sum(len(a) for a in args if isinstance(a, str)) // 4000)

    async def pending_activities(self) -> list[PendingActivity]:
        """Activities submitted earlier whose contacts have no outcome yet."""
        result: list[PendingActivity] = await self._call(self._pending_sync)
        return result

    def _pending_sync(self) -> list[PendingActivity]:
        db = self._conn()
        pending = []
        query = (
            "SELECT seq, id, insert_time, targets, contacts FROM activities "
            "WHERE finished = 0 ORDER BY seq"
        )
        for seq, activity_id, insert_time, targets, contacts in db.execute(query).fetchall():
            target_ids = tuple(json.loads(targets))
            carried = json.loads(contacts)
            done = self._finished_sync([email for email, _, _ in carried])
            if len(done) == len(carried):  # settled before the stop: nothing to poll
                db.execute("UPDATE activities SET finished = 1 WHERE seq = ?", (seq,))
                continue
            pending.append(
                PendingActivity(
                    activity_id,
                    target_ids,
                    tuple(
                        Contact(email, target_ids, dict(fields), list(rows))
                        for email, rows, fields in carried
                    ),
                    insert_time,
                )
            )
        return pending
