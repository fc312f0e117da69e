"""The inputs of the benchmarks: a simulator state file per API and a CSV source per workload.

A workload is a kind and a row count. Its files are written once per harness run (in the
parent process, so the engine's child process never pays for them) and shared by every
repetition and scenario that uses them. The account is the same on both APIs (the same
lists, contacts, names and statuses): `prepare(workload, folder, api)` writes the source
once and the state file of each API the first time a run on that API needs it (v1: the v1
simulator's `AccountStore`; v3: the V3 one's, with its own list ids and contact ids).

Kinds (contacts are `c{i}@example.com` when they exist, `n{i}@example.com` when new):

- `existing`: every contact exists on `Other`, with the row's names; the source puts it on
  `Target` (only a list to add: V3 appends it by id).
- `new`: none exists; the source creates them on `Target`.
- `unchanged`: every contact is already on `Other` and `Target`, with the row's fields.
- `mix70`: 70% exist on `Other` with the row's names (rows with i % 10 < 7), 30% are new;
  target `Target`.
- `seed`: the support thread's case: `List A` has max(2,600, rows) members; the source
  imports `rows` of them into `List B`.
- `mixed`: a realistic source with a lists column (see `_plan_mixed`).
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.simulator import AccountStore, SimulatorConfig
from engine.simulator.v3 import AccountStore as V3Store, SimulatorConfig as V3Config

__all__ = [
    "MIXED_LISTS",
    "Api",
    "Kind",
    "Prepared",
    "Workload",
    "list_sets",
    "prepare",
    "report_summary",
]

Kind = Literal["existing", "new", "unchanged", "mix70", "seed", "mixed"]
Api = Literal["v1", "v3"]

#: The target lists of the `mixed` workload.
MIXED_LISTS = tuple(f"L{n:02d}" for n in range(1, 13))
LISTS_COLUMN = "Lists"
HEADER = ["Email Address", "First Name", "Last Name"]


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
    """A workload's files for one API.

    Attributes:
        workload: what they hold.
        state: the simulator state file (of the API asked for).
        source: the CSV source (the same for both APIs).
    """

    workload: Workload
    state: Path
    source: Path


@dataclass(frozen=True, slots=True)
class Seeded:
    """A contact the account holds before the run.

    Attributes:
        email: its address.
        lists: the names of the lists it is on.
        first: its first name (None: none).
        last: its last name (None: none).
        do_not_mail: unsubscribed (v1: Do Not Mail; V3: permission `unsubscribed`).
    """

    email: str
    lists: tuple[str, ...] = ()
    first: str | None = None
    last: str | None = None
    do_not_mail: bool = False


@dataclass(slots=True)
class _Plan:
    """What a workload's files hold: the account's lists and contacts, the source rows."""

    lists: tuple[str, ...]
    contacts: Iterable[Seeded]
    header: list[str]
    rows: Iterable[list[str] | tuple[str, ...]]


def prepare(workload: Workload, folder: Path, api: Api = "v1") -> Prepared:
    """Write the workload's source and `api`'s state file under `folder` (once; reused)."""
    base = folder / workload.name
    state, source = base / f"state-{api}.json", base / "source.csv"
    if not (state.exists() and source.exists()):
        base.mkdir(parents=True, exist_ok=True)
        plan = _plan(workload)
        if not source.exists():
            with source.open("w", newline="") as file:
                out = csv.writer(file)
                out.writerow(plan.header)
                out.writerows(plan.rows)
            plan = _plan(workload)  # the generators are spent; a mixed plan is a list
        (_save_v3 if api == "v3" else _save_v1)(plan, state)
    return Prepared(workload, state, source)


def _save_v1(plan: _Plan, state: Path) -> None:
    store = AccountStore(SimulatorConfig())
    ids = {name: store.create_list(name) for name in plan.lists}
    for c in plan.contacts:
        fields = {"FirstName": c.first, "LastName": c.last}
        store.add_contact(
            c.email,
            lists=[ids[name] for name in c.lists],
            fields={k: v for k, v in fields.items() if v is not None},
            **({"status": "Do Not Mail"} if c.do_not_mail else {}),
        )
    store.save(state)


def _save_v3(plan: _Plan, state: Path) -> None:
    store = V3Store(V3Config())
    ids = {name: store.add_list(name) for name in plan.lists}
    for c in plan.contacts:
        store.add_contact(
            c.email,
            lists=[ids[name] for name in c.lists],
            first_name=c.first,
            last_name=c.last,
            permission="unsubscribed" if c.do_not_mail else "implicit",
        )
    store.save(state)


def _plan(workload: Workload) -> _Plan:
    if workload.kind == "mixed":
        return _plan_mixed(workload.rows)
    return _Plan(
        ("List A", "List B") if workload.kind == "seed" else ("Other", "Target"),
        _simple_contacts(workload),
        HEADER,
        _simple_rows(workload),
    )


def _email(kind: Kind, i: int) -> str:
    """The email of row `i`: `c{i}` when the contact exists, `n{i}` when it is new."""
    exists = kind in ("existing", "unchanged", "seed") or (kind == "mix70" and i % 10 < 7)
    return f"c{i}@example.com" if exists else f"n{i}@example.com"


def _simple_rows(workload: Workload) -> Iterator[tuple[str, str, str]]:
    for i in range(workload.rows):
        yield _email(workload.kind, i), "Bench", f"Contact{i}"


def _simple_contacts(workload: Workload) -> Iterator[Seeded]:
    kind, n = workload.kind, workload.rows
    if kind == "seed":
        # The members of List A, with the names the source gives them (an export of them).
        for i in range(max(2600, n)):
            yield Seeded(f"c{i}@example.com", ("List A",), "Bench", f"Contact{i}")
        return
    on = ("Other", "Target") if kind == "unchanged" else ("Other",)
    for i in range(n):
        email = _email(kind, i)
        if email.startswith("c"):
            # The row's own names: the contact only gains a list (on V3 an append by id;
            # on v1 its PUT either way). Unchanged: nothing to send but its read.
            yield Seeded(email, on, "Bench", f"Contact{i}")


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


def _plan_mixed(rows: int) -> _Plan:
    """The realistic source of scenario 6, by share of rows.

    60% existing contacts that gain a list, 10% existing contacts already on all their
    targets, 1% Do Not Mail contacts, 23% new contacts, 5% duplicate rows (an earlier email
    again, with its own target set, so the targets are unioned) and 1% invalid emails.
    Existing contacts are also on `Other` and on one list outside their targets; a quarter
    of them (i % 4 == 0) have another first name than their row's (a field to write: on V3
    a PUT), the others the row's names (only lists to add: on V3 an append by id alone).
    """
    rng = random.Random(6)
    weighted = _list_set_weights(rng)
    sets, weights = [s for s, _ in weighted], [w for _, w in weighted]
    written: list[tuple[str, tuple[str, ...]]] = []
    out_rows: list[tuple[str, str, str, str]] = []
    contacts: list[Seeded] = []
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
        first = "Old" if i % 4 == 0 else "Bench"
        if draw < 0.66:
            email = f"c{i}@example.com"
            outside = [name for name in MIXED_LISTS if name not in targets]
            on = ("Other", rng.choice(outside))
            contacts.append(Seeded(email, on, first, f"Contact{i}"))
        elif draw < 0.76:
            email = f"c{i}@example.com"
            contacts.append(Seeded(email, ("Other", *targets), first, f"Contact{i}"))
        elif draw < 0.77:
            email = f"c{i}@example.com"
            contacts.append(Seeded(email, do_not_mail=True))
        else:
            email = f"n{i}@example.com"
        written.append((email, targets))
        out_rows.append((email, "Bench", f"Contact{i}", ";".join(targets)))
    return _Plan(("Other", *MIXED_LISTS), contacts, [*HEADER, LISTS_COLUMN], out_rows)


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
        `emails` and `rows`: counts by `path|outcome`; `appended`: of those emails, the
        ones appended by id (V3's `add_list_memberships`); `list_sets`: for each target
        list set of the source, how many of its emails took each path.
    """
    emails: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    appended: Counter[str] = Counter()
    taken: dict[str, str] = {}
    with report.open(encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            key = f"{record.get('path', '')}|{record['outcome']}"
            emails[key] += 1
            rows[key] += len(record["rows"])
            if "appended by id" in record.get("note", ""):
                appended[key] += 1
            taken[record["email"]] = record.get("path", "")
    by_set: dict[frozenset[str], Counter[str]] = {}
    for email, names in list_sets(prepared).items():
        path = taken.get(email, "")
        if path:
            by_set.setdefault(names, Counter())[path] += 1
    return {
        "emails": dict(emails),
        "rows": dict(rows),
        "appended": dict(appended),
        "list_sets": [dict(c) for c in by_set.values()],
    }
