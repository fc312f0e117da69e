"""The report's lines: exactly `json.dumps` of each outcome's record, list names and all."""

from __future__ import annotations

import json

from engine.pipeline.models import Outcome
from engine.pipeline.record import SUCCESSES, ReportWriter


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
