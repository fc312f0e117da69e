"""The rows a migration could not do, written back as a file the user can fix and rerun.

`python -m engine rows-to-fix --report REPORT --source SOURCE --to fix.csv` reads the
report's `rejected` and `failed` lines and writes those rows of the CSV source, with their
original columns (same header, same values) and three more: `reason` (what to fix),
`spreadsheet row` (the row number a spreadsheet shows: a cell with a line break makes it
differ from the file's line) and `line` (the line in the file, as the report gives it). The
extra columns are ignored when the fixed file is migrated again.
"""

from __future__ import annotations

import csv
import json
from itertools import chain, islice
from pathlib import Path

from engine.errors import SourceError
from engine.pipeline.read import ReadOptions, decoded_lines, sniff_dialect

__all__ = ["write_rows_to_fix"]

EXTRA = ("reason", "spreadsheet row", "line")


def write_rows_to_fix(
    report: Path, source: Path, target: Path, options: ReadOptions | None = None
) -> int:
    """Write the rejected and failed rows of `source` (as `report` names them) to `target`.

    Returns:
        how many rows were written.

    Raises:
        SourceError: the report or the source cannot be read, or the source is not CSV.
    """
    options = options or ReadOptions()
    reasons = _reasons(report)
    if source.suffix.lower() in (".json", ".jsonl", ".ndjson"):
        raise SourceError(
            "rows-to-fix writes CSV sources; a JSON source's items are named by number in "
            "the report"
        )
    if not source.is_file():
        raise SourceError(f"the source {source} does not exist or is not a file")
    lines = decoded_lines(source, options.encoding)
    head = [text for _, text, _ in islice(lines, 50)]
    reader = csv.reader(chain(head, (text for _, text, _ in lines)), sniff_dialect("".join(head)))
    header = next(reader, None)
    if header is None:
        raise SourceError(f"the source {source} has no header row")
    written = 0
    with target.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*header, *EXTRA])
        start = reader.line_num + 1
        for record_number, record in enumerate(reader, start=1):
            line, start = start, reader.line_num + 1
            if line in reasons:
                writer.writerow([*record, reasons[line], record_number + 1, line])
                written += 1
    return written


def _reasons(report: Path) -> dict[int, str]:
    """Source line -> reason, for every rejected or failed line of the report."""
    reasons: dict[int, str] = {}
    try:
        with report.open(encoding="utf-8") as file:
            for text in file:
                if not text.strip():
                    continue
                item = json.loads(text)
                if item.get("outcome") in ("rejected", "failed"):
                    for row in item.get("rows", ()):
                        reasons[int(row)] = str(item.get("reason", ""))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read the report {report}: {exc}") from exc
    return reasons
