"""The journal: a write is sent only once its intent is committed; outcomes are stored as
written, in the order they came, and written within their bounds of count and time."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import anyio
import pytest

from engine.errors import ConfigError, OutputError
from engine.journal import Intent, Journal, journal_identity


async def test_every_write_whose_intent_commit_failed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the grouped commit of intents fails (a full disk), every write waiting on it is
    refused, not only the one that ran the commit; later ones too."""
    journal = await Journal.open(
        tmp_path / "j.sqlite", identity=journal_identity("digest", ["A"], {})
    )

    def full_disk(rows: object, bulk: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(journal, "_write_intents", full_disk)
    outcomes: dict[str, str] = {}

    async def write(email: str) -> None:
        try:
            await journal.intend(email, "updated", ["A"], ["B"])
            outcomes[email] = "sent"
        except OutputError:
            outcomes[email] = "refused"

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(write, f"c{i}@example.com")
    await write("late@example.com")
    assert set(outcomes.values()) == {"refused"}, outcomes
    assert len(outcomes) == 6
    await journal.aclose()


async def test_a_journal_of_the_previous_format_is_refused_saying_how_to_go_on(
    tmp_path: Path,
) -> None:
    """A format-3 journal (list URIs in its activities, no backend in its key) is refused with
    a message naming both formats and the way on (`--restart`, or another journal)."""
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path, identity=journal_identity("digest", ["A"], {}))
    await journal.aclose()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '3' WHERE name = 'version'")
    db.close()

    with pytest.raises(ConfigError) as refused:
        await Journal.open(path, identity=journal_identity("digest", ["A"], {}))

    message = str(refused.value)
    assert "journal format 3, this one reads 5" in message
    assert "--restart" in message
    assert "another --journal" in message


async def test_outcomes_round_trip_and_are_counted_with_or_without_sqlite_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes read back as written (lists, rows, lists before); the counts by kind are the
    same from SQLite's JSON functions as from reading each row."""
    from engine.pipeline.models import Outcome

    journal = await Journal.open(
        tmp_path / "j.sqlite", identity=journal_identity("digest", ["A"], {})
    )
    written = [
        Outcome("a@example.com", "created", (2,), "", ("A",), "contact", ("A",), ()),
        Outcome("b@example.com", "updated", (3, 7), "", ("A",), "contact", ("A",), ("B", "C")),
        Outcome("c@example.com", "bulk_added", (4,), "", ("A", 'q"x'), "bulk", ("A",), None),
        Outcome("", "rejected", (5,), "no email", (), "", (), None),
    ]
    for outcome in written:
        await journal.record(outcome)
    await journal.flush()
    read = await anyio.to_thread.run_sync(lambda: list(journal.iter_outcomes()))
    assert read == written
    counted = await journal.counts()
    assert counted == ({"created": 1, "updated": 2, "bulk_added": 1, "rejected": 1}, 4)
    real_conn = journal._conn

    class NoJson:
        """A connection whose SQLite lacks the JSON functions."""

        def __init__(self) -> None:
            self.db = real_conn()

        def execute(self, sql: str, *args: object) -> object:
            if "json_array_length" in sql:
                raise sqlite3.OperationalError("no such function: json_array_length")
            return self.db.execute(sql, *args)

    monkeypatch.setattr(journal, "_conn", NoJson)
    assert await journal.counts() == counted
    monkeypatch.undo()
    await journal.aclose()


async def test_a_bulk_activitys_intent_is_one_row_and_a_later_write_of_its_own_wins(
    tmp_path: Path,
) -> None:
    """An activity's contacts are journaled as one row; the next run finds each of them
    `bulk_added` with no lists before, except a contact with an outcome, and a contact sent
    alone after its activity, whose own intent (the later one) stands."""
    from engine.pipeline.models import Outcome

    path = tmp_path / "j.sqlite"
    identity = journal_identity("digest", ["A"], {})
    journal = await Journal.open(path, identity=identity)
    emails = [f"c{i}@example.com" for i in range(30)]
    await journal.intend_bulk(emails, ["A", "B"])
    await journal.intend("c1@example.com", "updated", ["C"], ["A", "B"])
    await journal.record(Outcome("c2@example.com", "bulk_added", (4,), "", ("A", "B"), "bulk"))
    await journal.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM bulk_intents").fetchone() == (1,)
    db.close()

    later = await Journal.open(path, identity=identity)
    found = await later.earlier_intents()
    await later.aclose()

    assert set(found) == set(emails) - {"c2@example.com"}
    assert found["c0@example.com"] == Intent("bulk_added", (), ("A", "B"))
    assert found["c1@example.com"] == Intent("updated", ("C",), ("A", "B"))


async def test_a_journal_of_format_4_is_resumed_and_upgraded(tmp_path: Path) -> None:
    """A format-4 journal (before bulk intents had their table) opens, keeps its intents, and
    is marked format 5."""
    path = tmp_path / "j.sqlite"
    identity = journal_identity("digest", ["A"], {})
    journal = await Journal.open(path, identity=identity)
    await journal.intend("a@example.com", "created", [], ["A"])
    await journal.aclose()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE bulk_intents")
        db.execute("UPDATE meta SET value = '4' WHERE name = 'version'")
    db.close()

    again = await Journal.open(path, identity=identity)
    assert again.resumed
    assert await again.earlier_intents() == {"a@example.com": Intent("created", (), ("A",))}
    await again.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone() == ("5",)
    db.close()


async def test_the_wal_is_checkpointed_while_intents_commit_on_the_event_loop(
    tmp_path: Path,
) -> None:
    """Intents commit without checkpointing (no fsync on the event loop), yet the WAL does
    not grow without bound: the worker thread checkpoints it as outcomes are written."""
    from engine.pipeline.models import Outcome

    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path, identity=journal_identity("digest", ["A"], {}))
    for i in range(6000):
        email = f"c{i}@example.com"
        await journal.intend(email, "updated", ["B"], ["A"])
        await journal.record(Outcome(email, "updated", (i + 2,), "", ("A",), "contact"))
        if i % 100 == 99:
            await journal.flush()
    wal = os.path.getsize(f"{path}-wal")  # noqa: ASYNC240 (a test: one stat)
    await journal.aclose()

    # 6,000 commits of two or three pages each would make a WAL of 50 MB or more.
    assert wal < 10 * 1024 * 1024, wal
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM intents").fetchone() == (6000,)
        assert db.execute("SELECT COUNT(*) FROM outcomes").fetchone() == (6000,)
    db.close()


def _outcome_rows(path: Path) -> list[tuple[object, ...]]:
    """The outcomes table as stored, in key order (read by a connection of its own)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM outcomes ORDER BY key").fetchall()
    db.close()
    return rows


async def _buffered(path: Path, **buffering: float) -> Journal:
    """A new journal that buffers its outcomes as told (`interval`, `bulk_batch`, …)."""
    return await Journal.open(path, identity=journal_identity("digest", ["A"], {}), **buffering)


async def _written(path: Path) -> list[tuple[object, ...]]:
    """The outcomes table once something is in it (5 s at most)."""
    for _ in range(250):
        if rows := _outcome_rows(path):
            return rows
        await anyio.sleep(0.02)
    return []


@pytest.mark.parametrize("json_each", [True, False], ids=["sqlite-json", "no-sqlite-json"])
async def test_an_activitys_outcomes_are_stored_as_record_stores_each_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_each: bool
) -> None:
    """The contacts of a `BulkAdded`, written in one statement (or row by row where SQLite
    has no JSON functions), are stored exactly as `record` stores each one's `Outcome`:
    emails with quotes, backslashes and accents, several rows, odd list ids."""
    from engine.pipeline.models import BulkAdded

    if not json_each:  # the statement fails as it would without json_each
        monkeypatch.setattr("engine.journal._ADDED_SQL", "SELECT * FROM json_each_missing(?)")
    added = BulkAdded(
        ['o"brien@example.com', "back\\slash@example.com", "zoë@example.com", "d@example.com"],
        [(2,), (3, 9, 11), (4,), (12,)],
        ("A", 'q"x'),
    )
    identity = journal_identity("digest", ["A"], {})
    together = await Journal.open(tmp_path / "together.sqlite", identity=identity)
    await together.record_added(added)
    await together.aclose()
    each = await Journal.open(tmp_path / "each.sqlite", identity=identity)
    for outcome in added.outcomes():
        await each.record(outcome)
    await each.aclose()
    stored = _outcome_rows(tmp_path / "together.sqlite")
    assert len(stored) == 4
    assert stored == _outcome_rows(tmp_path / "each.sqlite")


async def test_a_later_outcome_of_an_email_replaces_an_earlier_one_in_the_same_write(
    tmp_path: Path,
) -> None:
    """Outcomes buffered together are written in the order they came: an activity's, then a
    contact's own, then another activity's; the last of each email stands."""
    from engine.pipeline.models import BulkAdded, Outcome

    journal = await Journal.open(
        tmp_path / "j.sqlite", identity=journal_identity("digest", ["A"], {})
    )
    await journal.record_added(BulkAdded(["a@example.com", "b@example.com"], [(2,), (3,)], ("A",)))
    await journal.record(
        Outcome("a@example.com", "updated", (2, 5), "", ("A",), "contact", ("A",), ("B",))
    )
    await journal.record_added(BulkAdded(["b@example.com"], [(3, 6)], ("A",)))
    await journal.flush()
    read = await anyio.to_thread.run_sync(lambda: list(journal.iter_outcomes()))
    await journal.aclose()
    assert [(o.email, o.kind, o.rows) for o in read] == [
        ("a@example.com", "updated", (2, 5)),
        ("b@example.com", "bulk_added", (3, 6)),
    ]


async def test_bulk_outcomes_alone_wait_for_a_large_write_and_a_contacts_own_does_not(
    tmp_path: Path,
) -> None:
    """`bulk_added` outcomes wait until `bulk_batch` of them do; a contact's own outcome is
    written within `interval` (here at once), with the bulk ones before it."""
    from engine.pipeline.models import BulkAdded, Outcome

    path = tmp_path / "j.sqlite"
    journal = await _buffered(path, interval=0.0, bulk_batch=5, bulk_interval=3600.0)
    emails = [f"c{i}@example.com" for i in range(3)]
    await journal.record_added(BulkAdded(emails, [(2,), (3,), (4,)], ("A",)))
    assert _outcome_rows(path) == []  # 3 of 5: waiting
    await journal.record(Outcome("own@example.com", "created", (8,), "", ("A",), "contact"))
    assert len(_outcome_rows(path)) == 4  # `interval` is 0 here: written at once
    await journal.aclose()


async def test_due_bulk_outcomes_are_written_by_the_periodic_flush_not_their_caller(
    tmp_path: Path,
) -> None:
    """Once `bulk_batch` outcomes wait, `record_added` returns before they are written and
    wakes the periodic flush, which writes them at once (its `interval` is an hour here);
    fewer wait on."""
    from engine.pipeline.models import BulkAdded

    path = tmp_path / "j.sqlite"
    journal = await _buffered(path, interval=3600.0, bulk_batch=5, bulk_interval=3600.0)
    emails = [f"c{i}@example.com" for i in range(6)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.flush_periodically)
        await journal.record_added(BulkAdded(emails[:3], [(2,), (3,), (4,)], ("A",)))
        await journal.record_added(BulkAdded(emails[3:5], [(5,), (6,)], ("A",)))
        assert _outcome_rows(path) == []  # due, but not written by the caller
        assert len(await _written(path)) == 5
        await journal.record_added(BulkAdded(emails[5:], [(7,)], ("A",)))
        await anyio.sleep(0.1)
        assert len(_outcome_rows(path)) == 5  # 1 of 5: waiting
        tg.cancel_scope.cancel()
    await journal.aclose()
    assert len(_outcome_rows(path)) == 6


async def test_bulk_outcomes_are_written_by_their_caller_when_the_writes_fall_behind(
    tmp_path: Path,
) -> None:
    """With twice `bulk_batch` outcomes waiting (the periodic flush is behind, here not
    running at all), `record_added` writes them itself before it returns (memory)."""
    from engine.pipeline.models import BulkAdded

    path = tmp_path / "j.sqlite"
    journal = await _buffered(path, interval=3600.0, bulk_batch=3, bulk_interval=3600.0)
    emails = [f"c{i}@example.com" for i in range(6)]
    await journal.record_added(BulkAdded(emails[:5], [(n,) for n in range(2, 7)], ("A",)))
    assert _outcome_rows(path) == []
    await journal.record_added(BulkAdded(emails[5:], [(7,)], ("A",)))
    assert len(_outcome_rows(path)) == 6
    await journal.aclose()


async def test_bulk_outcomes_alone_are_written_once_bulk_interval_has_passed(
    tmp_path: Path,
) -> None:
    """With fewer than `bulk_batch` waiting and nothing else arriving, the periodic flush
    writes them once the oldest has waited `bulk_interval`, not before."""
    from engine.pipeline.models import BulkAdded

    path = tmp_path / "j.sqlite"
    journal = await _buffered(path, interval=0.01, bulk_batch=1000, bulk_interval=0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.flush_periodically)
        started = anyio.current_time()
        await journal.record_added(BulkAdded(["a@example.com"], [(2,)], ("A",)))
        await anyio.sleep(0.1)
        assert _outcome_rows(path) == []  # the periodic flush ran, and left it waiting
        assert len(await _written(path)) == 1
        assert anyio.current_time() - started >= 0.3
        tg.cancel_scope.cancel()
    await journal.aclose()
