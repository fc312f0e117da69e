"""The records that flow between the stages, and the outcomes they end in."""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from engine import fastjson

__all__ = [
    "OUTCOMES",
    "REACTIVATED",
    "REVIVED",
    "Batch",
    "BulkAdded",
    "Contact",
    "Outcome",
    "OutcomeKind",
    "Recorded",
    "Rejected",
    "SourceRow",
    "Stage",
    "join_notes",
]

#: The stages, by the names used in config, stats, logs and errors.
Stage = Literal["read", "plan", "fetch", "merge", "put", "bulk", "record"]

#: What happened to an input email; invariant I3 says every row ends in exactly one.
OutcomeKind = Literal[
    "created", "updated", "unchanged", "bulk_added", "skipped", "rejected", "failed"
]
OUTCOMES: tuple[OutcomeKind, ...] = (
    "created",
    "updated",
    "unchanged",
    "bulk_added",
    "skipped",
    "rejected",
    "failed",
)


@dataclass(slots=True)  # not frozen: a frozen init costs 4 times as much, twice a row
class SourceRow:
    """A valid input row, normalised (read-only by convention: nothing changes one).

    Attributes:
        lines: the source line numbers (1-based; item numbers for iterables); more than
            one when the reader coalesced duplicate rows of this email.
        email: trimmed, lower-cased, validated.
        fields: v1 element name -> value, only the non-empty values the source gave.
        lists: the names of the row's own target lists (from the lists column).
        warnings: what was left out or changed of the row (a field over the API's limit,
            a nested JSON value); the contact still goes to its lists, and its outcome
            carries these.
    """

    lines: tuple[int, ...]
    email: str
    fields: dict[str, str]
    lists: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input row that cannot be migrated.

    Attributes:
        line: the row's line number.
        email: the email as given (possibly empty or invalid).
        reason: why, in words a user can act on.
    """

    line: int
    email: str
    reason: str


@dataclass(slots=True)
class Contact:
    """One email to migrate: duplicate rows coalesced into one.

    Attributes:
        email: the normalised email.
        targets: the ids of the lists it must end up on, in order (shared between contacts
            with the same target set: a tuple, never changed in place).
        fields: v1 element name -> value; later non-empty values win.
        rows: the source lines that named this email.
    """

    email: str
    targets: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)

    def absorb(self, other: Contact) -> None:
        """Coalesce a duplicate: union of targets, later non-empty fields win."""
        # A new tuple: contacts with the same target set share one (the planner interns
        # them, which keeps a million pending contacts small).
        self.targets = tuple(dict.fromkeys((*self.targets, *other.targets)))
        self.fields.update(other.fields)
        self.rows.extend(other.rows)

    @property
    def target_set(self) -> frozenset[str]:
        """The target list keys, as the batching key."""
        return frozenset(self.targets)


class Batch:
    """Contacts that share one target list set, flushed together by the planner, kept as
    JSON text while they wait (for a bulk slot, for their activity): about 100 bytes a
    contact instead of about a kilobyte of objects, so that the activities in flight do not
    set the engine's memory. `contacts` unpacks them all, as new objects each time: hold
    them only while they are used; `pairs` reads them a thousand at a time.

    Attributes:
        targets: the ids of the lists common to all of them.
        size: how many contacts.
        rows: how many source rows they cover.
        fields: the names of the fields every contact gives, sorted, when they all give
            the same ones (the usual case: one activity's columns, found without unpacking
            them); None when they differ.
    """

    __slots__ = ("_emails", "_lines", "_rows", "fields", "rows", "size", "targets")

    def __init__(self, contacts: Sequence[Contact], targets: tuple[str, ...]) -> None:
        self.targets = targets
        self.size = len(contacts)
        self.rows = sum(len(c.rows) for c in contacts)
        # One JSON array a line (JSON text holds no raw line break): read back in slices,
        # each one call of the decoder, where one document would be decoded whole. Encoded
        # in one call for them all (a call each was a tenth of the planner's time), then cut
        # where one contact's array ends and the next begins: a contact is `[email, [rows],
        # {fields}]`, and `}],["` occurs nowhere else (within a JSON string a quote is
        # always escaped).
        whole = fastjson.dumps([[c.email, c.rows, c.fields] for c in contacts]).decode()
        self._lines = whole[1:-1].replace('}],["', '}]\n["')
        # Emails and rows apart, for settling and the journal, which take them three times a
        # batch: a split of one string, where decoding the text took a call per contact.
        # A valid email holds no line break (`normalise_email`).
        self._emails = "\n".join(c.email for c in contacts)
        if self._emails.count("\n") != max(0, self.size - 1):
            raise ValueError("an email of the batch holds a line break")
        self._rows = fastjson.dumps([c.rows for c in contacts]).decode()
        names = {tuple(c.fields) for c in contacts}
        common = {tuple(sorted(n)) for n in names}
        self.fields = common.pop() if len(common) == 1 else None

    def __repr__(self) -> str:
        return f"<Batch of {self.size} contacts to {list(self.targets)}>"

    @property
    def text(self) -> str:
        """`[[email, [rows], {fields}], ...]` in JSON, the journal's form of an activity's
        contacts."""
        return f"[{self._lines.replace(chr(10), ',')}]"

    def keys(self) -> Iterator[tuple[str, list[int]]]:
        """Each contact's email and source rows, in order (what settling needs)."""
        return zip(self.emails(), fastjson.loads(self._rows), strict=True)

    def emails(self) -> list[str]:
        """The contacts' emails, in order."""
        return self._emails.split("\n") if self.size else []

    def _lines_list(self) -> list[str]:
        """The packed contacts, one JSON array `[email, [rows], {fields}]` a line."""
        return self._lines.split("\n") if self.size else []

    def _decoded(self, size: int) -> Iterator[list[list[Any]]]:
        """The packed contacts in order, `size` decoded at a time (one decoder call each)."""
        lines = self._lines_list()
        for start in range(0, len(lines), size):
            yield fastjson.loads(f"[{','.join(lines[start : start + size])}]")

    def pairs(self) -> Iterator[tuple[str, dict[str, str]]]:
        """Each contact's email and fields, in order (what an activity's body needs),
        decoded a thousand at a time."""
        for chunk in self._decoded(1000):
            yield from ((email, fields) for email, _, fields in chunk)

    def windows(self, size: int) -> Iterator[tuple[Contact, ...]]:
        """The contacts in order, `size` at a time, each window unpacked when it is come to."""
        targets = self.targets
        for chunk in self._decoded(size):
            yield tuple(Contact(email, targets, fields, rows) for email, rows, fields in chunk)

    def split(self, emails: Container[str]) -> tuple[Batch, Batch]:
        """The contacts whose email is in `emails` and the others, in order, as two batches
        made from the packed text (none of them unpacked)."""
        lines = self._lines_list()
        keys = self.emails()
        rows = fastjson.loads(self._rows)
        inside = [email in emails for email in keys]

        def part(wanted: bool) -> Batch:
            return self._part(
                [line for line, hit in zip(lines, inside, strict=True) if hit is wanted],
                [email for email, hit in zip(keys, inside, strict=True) if hit is wanted],
                [row for row, hit in zip(rows, inside, strict=True) if hit is wanted],
            )

        return part(True), part(False)

    def _part(self, lines: list[str], emails: list[str], rows: list[list[int]]) -> Batch:
        part = Batch.__new__(Batch)
        part.targets = self.targets
        part.size = len(lines)
        part.rows = sum(len(r) for r in rows)
        part._lines = "\n".join(lines)
        part._emails = "\n".join(emails)
        part._rows = fastjson.dumps(rows).decode()
        # Contacts that all give the same fields still do; of contacts that do not, a part
        # may (left unknown: the activity is then grouped by its contacts' fields).
        part.fields = self.fields
        return part

    @property
    def contacts(self) -> tuple[Contact, ...]:
        """The contacts, unpacked (each with the batch's targets)."""
        targets = self.targets
        return tuple(
            Contact(email, targets, fields, rows)
            for email, rows, fields in fastjson.loads(self.text)
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one email (or one rejected row).

    Attributes:
        email: the email.
        kind: the outcome.
        rows: the source lines it covers.
        reason: why, when not a success (`opted-out`, `removed`, an API message, …).
        lists_added: ids of the lists the engine added (or asked bulk to add).
        path: "contact", "bulk" or "" (rejected before planning).
        targets: ids of the lists the contact had to end up on.
        lists_before: ids of the lists the engine read before writing (per-contact path;
            None when it did not read them, as on the bulk path). The audit proves I1 with it.
        note: what the user should know about how it got there (e.g. that its bulk activity
            was stuck and it was sent contact by contact).
        retryable: a `failed` outcome whose cause may pass (5xx, throttling, a garbled
            answer, a search that failed): running the same command again retries it.
    """

    email: str
    kind: OutcomeKind
    rows: tuple[int, ...]
    reason: str = ""
    lists_added: tuple[str, ...] = ()
    path: str = ""
    targets: tuple[str, ...] = ()
    lists_before: tuple[str, ...] | None = None
    note: str = ""
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class BulkAdded:
    """Contacts of one activity that it added to their targets: the `bulk_added` outcome of
    each, as one item of the outcome stream. An activity settles tens of thousands of
    contacts, and the record stage counts, journals and reports these together, where an
    `Outcome` each would be made, passed on and taken apart one at a time (a fifth of the
    bulk path's CPU).

    Attributes:
        emails: the contacts' emails, in the activity's order.
        rows: each one's source lines.
        targets: the lists the activity added, every contact's targets.
        recorded: set by the record stage once they are journaled and reported. The
            outcome stream's buffer counts items, and one of these is a thousand contacts:
            the bulk path waits for it before it takes another batch, so that it does not
            run ahead of the record stage (memory).
    """

    emails: Sequence[str]
    rows: Sequence[Sequence[int]]
    targets: tuple[str, ...]
    recorded: anyio.Event | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.emails) != len(self.rows):
            raise ValueError(f"{len(self.emails)} emails and {len(self.rows)} rows")

    def __len__(self) -> int:
        return len(self.emails)

    def outcomes(self) -> Iterator[Outcome]:
        """The `Outcome` of each contact, made one at a time."""
        targets = self.targets
        for email, rows in zip(self.emails, self.rows, strict=True):
            yield Outcome(email, "bulk_added", tuple(rows), "", targets, "bulk", targets)


#: What the outcome stream carries: one outcome, or the contacts an activity added.
Recorded = Outcome | BulkAdded


#: The note of a Removed contact that a write made Active again (counted in the summary).
REACTIVATED = "was Removed: re-added, Active again (--skip-removed leaves such contacts alone)"
#: The note of a deleted contact brought back by `--revive-deleted`.
REVIVED = "was deleted: revived onto its lists (--revive-deleted)"


def join_notes(*notes: str) -> str:
    """Notes for one outcome, in order, the empty ones left out."""
    return "; ".join(note for note in notes if note)
