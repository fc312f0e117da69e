"""The journal's intents: a write is sent only once its intent is committed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from engine.errors import ConfigError, OutputError
from engine.journal import Journal, journal_identity


async def test_every_write_whose_intent_commit_failed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the grouped commit of intents fails (a full disk), every write waiting on it is
    refused, not only the one that ran the commit; later ones too."""
    journal = await Journal.open(
        tmp_path / "j.sqlite", identity=journal_identity("digest", ["A"], {})
    )

    def full_disk(rows: object) -> None:
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
    assert "journal format 3, this one reads 4" in message
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
