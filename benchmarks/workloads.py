"""The inputs of the benchmarks: a simulator state file and a CSV source per workload.

A workload is a kind and a row count. Its files are written once per harness run (in the
parent process, so the engine's child process never pays for them) and shared by every
repetition and scenario that uses them.

Kinds (contacts are `c{i}@example.com` when they exist, `n{i}@example.com` when new):

- `existing`: every contact exists on `Other`; the source puts it on `Target`.
- `new`: none exists; the source creates them on `Target`.
- `unchanged`: every contact is already on `Other` and `Target`, with the row's fields.
- `mix70`: 70% exist on `Other` (rows with i % 10 < 7), 30% are new; target `Target`.
- `seed`: the support thread's case: `List A` has max(2,600, rows) members; the source
  imports `rows` of them into `List B`.
- `mixed`: a realistic source with a lists column (see `_write_mixed`).
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.simulator import AccountStore, SimulatorConfig

__all__ = [
    "MIXED_LISTS",
    "Kind",
    "Prepared",
    "Workload",
    "list_sets",
    "prepare",
    "report_summary",
]

Kind = Literal["existing", "new", "unchanged", "mix70", "seed", "mixed"]

#: The target lists of the `mixed` workload.
MIXED_LISTS = tuple(f"L{n:02d}" for n in range(1, 13))
LISTS_COLUMN = "Lists"


@dataclass(frozen=True, slots=True)
class Workload:
    """What to migrate.

    Attributes:
        kind: the make-up of the source and the account (see the module docstring).
        rows: data rows in the source.
    """

    kind: Kind
    rows: int

    @property
    def name(self) -> str:
        """`kind-rows`, e.g. `existing-10000`."""
        return f"{self.kind}-{self.rows}"

    @property
    def lists(self) -> tuple[str, ...]:
        """List names every row goes to (empty when the source has a lists column)."""
        if self.kind == "mixed":
            return ()
        return ("List B",) if self.kind == "seed" else ("Target",)

    @property
    def lists_column(self) -> str | None:
        """The source's lists column, if it has one."""
        return LISTS_COLUMN if self.kind == "mixed" else None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A workload's files.

    Attributes:
        workload: what they hold.
        state: the simulator state file.
        source: the CSV source.
    """

    workload: Workload
    state: Path
    source: Path


def prepare(workload: Workload, folder: Path) -> Prepared:
    """Write the workload's state file and source under `folder` (once; reused after)."""
    base = folder / workload.name
    state, source = base / "state.json", base / "source.csv"
    if not (state.exists() and source.exists()):
        base.mkdir(parents=True, exist_ok=True)
        if workload.kind == "mixed":
            _write_mixed(workload.rows, state, source)
        else:
            _write_simple(workload, state, source)
    return Prepared(workload, state, source)


def _write_simple(workload: Workload, state: Path, source: Path) -> None:
    store = AccountStore(SimulatorConfig())
    kind, n = workload.kind, workload.rows
    if kind == "seed":
        members = store.create_list("List A")
        store.create_list("List B")
        emails = [f"c{i}@example.com" for i in range(max(2600, n))]
        for email in emails:
            store.add_contact(email, lists=[members])
        emails = emails[:n]
    else:
        other = store.create_list("Other")
        target = store.create_list("Target")
        emails = []
        for i in range(n):
            exists = kind in ("existing", "unchanged") or (kind == "mix70" and i % 10 < 7)
            if exists:
                email = f"c{i}@example.com"
                on = [other, target] if kind == "unchanged" else [other]
                # An unchanged contact has the row's fields already (a differing field is
                # written, on both paths): nothing to send but its read.
                fields = (
                    {"FirstName": "Bench", "LastName": f"Contact{i}"}
                    if kind == "unchanged"
                    else {"FirstName": "Old"}
                )
                store.add_contact(email, lists=on, fields=fields)
            else:
                email = f"n{i}@example.com"
            emails.append(email)
    store.save(state)
    with source.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["Email Address", "First Name", "Last Name"])
        out.writerows((email, "Bench", f"Contact{i}") for i, email in enumerate(emails))


def _list_set_weights(rng: random.Random) -> list[tuple[tuple[str, ...], float]]:
    """About 150 distinct target sets of 1 to 3 lists, with Zipf-like weights.

    A few sets hold most contacts (they reach the bulk threshold), a long tail holds a
    handful each (they go contact by contact), as in a real export.
    """
    seen: dict[tuple[str, ...], None] = {}
    while len(seen) < 150:
        size = rng.choices((1, 2, 3), weights=(5, 3, 1))[0]
        seen[tuple(sorted(rng.sample(MIXED_LISTS, size)))] = None
    return [(s, 1.0 / (rank + 1) ** 1.1) for rank, s in enumerate(seen)]


def _write_mixed(rows: int, state: Path, source: Path) -> None:
    """The realistic source of scenario 6, by share of rows.

    60% existing contacts that gain a list, 10% existing contacts already on all their
    targets, 1% Do Not Mail contacts, 23% new contacts, 5% duplicate rows (an earlier email
    again, with its own target set, so the targets are unioned) and 1% invalid emails.
    Existing contacts are also on `Other` and on one list outside their targets.
    """
    rng = random.Random(6)
    store = AccountStore(SimulatorConfig())
    ids = {name: store.create_list(name) for name in ("Other", *MIXED_LISTS)}
    weighted = _list_set_weights(rng)
    sets, weights = [s for s, _ in weighted], [w for _, w in weighted]
    written: list[tuple[str, tuple[str, ...]]] = []
    out_rows: list[tuple[str, str, str, str]] = []
    for i in range(rows):
        draw = rng.random()
        targets = rng.choices(sets, weights)[0]
        if draw < 0.01:
            out_rows.append((f"not-an-email-{i}", "Bad", "Row", ";".join(targets)))
            continue
        if draw < 0.06 and written:
            email = rng.choice(written)[0]
            out_rows.append((email, "Dup", "Row", ";".join(targets)))
            continue
        if draw < 0.66:
            email = f"c{i}@example.com"
            outside = [name for name in MIXED_LISTS if name not in targets]
            on = [ids["Other"], ids[rng.choice(outside)]]
            store.add_contact(email, lists=on, fields={"FirstName": "Old"})
        elif draw < 0.76:
            email = f"c{i}@example.com"
            on = [ids["Other"], *(ids[name] for name in targets)]
            store.add_contact(email, lists=on, fields={"FirstName": "Old"})
        elif draw < 0.77:
            email = f"c{i}@example.com"
            store.add_contact(email, status="Do Not Mail")
        else:
            email = f"n{i}@example.com"
        written.append((email, targets))
        out_rows.append((email, "Bench", f"Contact{i}", ";".join(targets)))
    store.save(state)
    with source.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["Email Address", "First Name", "Last Name", LISTS_COLUMN])
        out.writerows(out_rows)


def _source_rows(source: Path) -> Iterator[list[str]]:
    with source.open(newline="") as file:
        reader = csv.reader(file)
        next(reader)
        yield from reader


def list_sets(prepared: Prepared) -> dict[str, frozenset[str]]:
    """Email -> its target list names, duplicates unioned (what the planner batches by)."""
    column = prepared.workload.lists_column
    by_email: dict[str, frozenset[str]] = {}
    for row in _source_rows(prepared.source):
        email = row[0].strip().lower()
        names = frozenset(row[3].split(";")) if column else frozenset(prepared.workload.lists)
        by_email[email] = by_email.get(email, frozenset()) | names
    return by_email


def report_summary(prepared: Prepared, report: Path) -> dict[str, Any]:
    """What the mixed scenario needs from an engine report, small enough for results.json.

    Returns:
        `emails` and `rows`: counts by `path|outcome`; `list_sets`: for each target list
        set of the source, how many of its emails took each path.
    """
    emails: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    taken: dict[str, str] = {}
    with report.open(encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            key = f"{record.get('path', '')}|{record['outcome']}"
            emails[key] += 1
            rows[key] += len(record["rows"])
            taken[record["email"]] = record.get("path", "")
    by_set: dict[frozenset[str], Counter[str]] = {}
    for email, names in list_sets(prepared).items():
        path = taken.get(email, "")
        if path:
            by_set.setdefault(names, Counter())[path] += 1
    return {
        "emails": dict(emails),
        "rows": dict(rows),
        "list_sets": [dict(c) for c in by_set.values()],
    }
