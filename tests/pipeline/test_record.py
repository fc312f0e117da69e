"""The report's lines: exactly `json.dumps` of each outcome's record, list names and all; an
activity's added contacts (`BulkAdded`) recorded together as each one's outcome would be."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from engine.journal import Journal, journal_identity
from engine.pipeline.models import BulkAdded, Outcome, Recorded
from engine.pipeline.record import SUCCESSES, ReportWriter, record_outcomes
from engine.pipeline.stats import RunStats


def _dumped(writer: ReportWriter, outcome: Outcome, names: dict[str, str]) -> str:
    """The line as `json.dumps` writes the record (what `ReportWriter.line` must give)."""
    record: dict[str, object] = {"email": outcome.email, "outcome": outcome.kind}
    if outcome.kind not in SUCCESSES or outcome.reason:
        record["reason"] = outcome.reason
    record["lists_added"] = [names.get(k, k) for k in outcome.lists_added]
    if outcome.targets:
        record["targets"] = [names.get(k, k) for k in outcome.targets]
    if outcome.lists_before is not None:
        record["lists_before"] = [names.get(k, k) for k in outcome.lists_before]
    record["rows"] = list(outcome.rows)
    if outcome.path:
        record["path"] = outcome.path
    if outcome.note:
        record["note"] = outcome.note
    return json.dumps(record, ensure_ascii=False) + "\n"


def test_each_line_is_the_json_of_its_record_byte_for_byte() -> None:
    """Names with quotes and accents, notes with newlines, rejected rows without an email,
    retryable failures, lists before or none: each line is json.dumps's, twice over (the
    arrays of names are kept per set of lists)."""
    names = {"a": 'Alpha "x"', "b": "Bé", "c": "Ç\\"}
    writer = ReportWriter(None, names)
    outcomes = [
        Outcome("x@e.com", "created", (3,), "", ("a",), "contact", ("a", "b"), (), note='n"\n'),
        Outcome("y@e.com", "failed", (4, 5), "boom \\ é", (), "bulk", (), None, retryable=True),
        Outcome("", "rejected", (7,), "bad email", (), "", (), None),
        Outcome("z@e.com", "unchanged", (9,), "", (), "contact", ("a",), ("a", "zz", "c")),
        Outcome("w@e.com", "skipped", (10,), "opted-out", (), "bulk", ("b",), None),
    ]
    for outcome in outcomes * 2:
        line = writer.line(outcome)
        assert line == _dumped(writer, outcome, names)
        assert json.loads(line)["email"] == outcome.email


def _added() -> BulkAdded:
    """Three contacts one activity added, one of them from two source rows."""
    return BulkAdded(["a@e.com", "bé@e.com", 'q"@e.com'], [[2], [3, 9], [4]], ("a", "b"))


async def test_an_activitys_added_contacts_are_written_as_their_outcomes_would_be(
    tmp_path: Path,
) -> None:
    """The lines of a `BulkAdded` are byte for byte `line` of each contact's outcome."""
    names = {"a": 'Alpha "x"', "b": "Bé"}
    writer = ReportWriter(tmp_path / "report.jsonl", names)
    await writer.open()
    added = _added()
    await writer.write_added(added)
    await writer.aclose()
    expected = "".join(writer.line(outcome) for outcome in added.outcomes())
    assert (tmp_path / "report.jsonl").read_text(encoding="utf-8") == expected
    assert [o.rows for o in added.outcomes()] == [(2,), (3, 9), (4,)]


async def _journaled(tmp_path: Path, name: str, items: list[Recorded]) -> list[tuple[object, ...]]:
    """The outcome table's rows after recording `items` in a new journal."""
    journal = await Journal.open(tmp_path / name, identity=journal_identity("d", ["A"], {}))
    try:
        for item in items:
            if isinstance(item, BulkAdded):
                await journal.record_added(item)
            else:
                await journal.record(item)
        await journal.flush()
        with sqlite3.connect(tmp_path / name) as db:
            return db.execute("SELECT * FROM outcomes ORDER BY key").fetchall()
    finally:
        await journal.aclose()


async def test_an_activitys_added_contacts_are_journaled_as_their_outcomes_would_be(
    tmp_path: Path,
) -> None:
    """`Journal.record_added` writes the rows `record` writes for each contact's outcome."""
    added = _added()
    together = await _journaled(tmp_path, "together.sqlite", [added])
    one_by_one = await _journaled(tmp_path, "alone.sqlite", list(added.outcomes()))
    assert together == one_by_one
    assert len(together) == 3


async def test_the_record_stage_takes_an_activitys_added_contacts_together(
    tmp_path: Path,
) -> None:
    """A `BulkAdded` is counted, journaled, reported and released as its outcomes one by one
    would be, then marked recorded; the one contact with a note (sent by an earlier
    activity) gets it."""
    added = dataclasses.replace(_added(), recorded=anyio.Event())
    single = Outcome("z@e.com", "created", (5,), "", ("a",), "contact", ("a",), ())
    stats, done, seen = RunStats(), [], []
    writer = ReportWriter(tmp_path / "report.jsonl", {})
    await writer.open()
    journal = await Journal.open(tmp_path / "j.sqlite", identity=journal_identity("d", ["A"], {}))
    notes = {"bé@e.com": "sent again"}
    send, receive = anyio.create_memory_object_stream[Recorded](10)
    async with send:
        await send.send(single)
        await send.send(added)
    with anyio.fail_after(10):
        await record_outcomes(
            receive,
            writer=writer,
            stats=stats,
            on_done=done.append,
            on_outcome=seen.append,
            journal=journal,
            notes=notes,
        )
    await writer.aclose()
    await journal.flush()
    journaled = {o.email: o for o in journal.iter_outcomes()}
    await journal.aclose()
    expected = [single, *added.outcomes()]
    noted = dataclasses.replace(expected[2], note="sent again")
    expected[2] = noted
    assert sorted(done) == sorted(o.email for o in expected)
    assert sorted(seen, key=lambda o: o.email) == sorted(expected, key=lambda o: o.email)
    assert journaled == {o.email: o for o in expected}
    assert notes == {}  # taken off
    assert added.recorded is not None
    assert added.recorded.is_set()
    lines = (tmp_path / "report.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert sorted(lines) == sorted(writer.line(o) for o in expected)
    assert stats.outcomes == {"created": 1, "bulk_added": 4}  # rows: b's two count
    assert stats.path_rows == {"contact": 1, "bulk": 4}
    assert stats.emails == stats.stages["record"].done == 4


def test_a_bulk_added_needs_one_row_list_per_email() -> None:
    """Emails and row lists of different lengths are refused, not zipped short."""
    with pytest.raises(ValueError, match="2 emails and 1 rows"):
        BulkAdded(["a@e.com", "b@e.com"], [[2]], ("a",))
