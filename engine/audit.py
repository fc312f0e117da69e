"""`audit`: re-read every contact a migration touched and prove invariant I1 for it.

For every email the report (or the journal) says was created, updated, unchanged or
bulk-added, the audit reads the contact's full entry again and checks:

- every target list is present;
- no list the engine saw before its write is missing: the per-contact path records the
  lists it read before writing (`lists_before` in the report); for the bulk path, a
  snapshot of the lists' members taken before the run (`migrate --snapshot`) gives them.

It reports each violation and returns a non-zero status if there is any. It only reads:
on v1, 50 emails a search, then one GET per contact found.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread

from engine.backend import as_backend
from engine.backend.protocol import Backend, ContactRef, ContactState, ListInfo, ListReader
from engine.backend.v1.client import Account
from engine.errors import SourceError

__all__ = ["AuditFinding", "AuditReport", "audit"]

TOUCHED = frozenset({"created", "updated", "unchanged", "bulk_added"})


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One contact that breaks I1.

    Attributes:
        email: the contact.
        missing_targets: target list names it is not on.
        lost_lists: list names it was on before the run and is not on now.
        status: its status now, in the engine's words (`active`, `opted out`, `removed`,
            …; "" when it no longer exists).
    """

    email: str
    missing_targets: tuple[str, ...]
    lost_lists: tuple[str, ...]
    status: str


@dataclass(slots=True)
class AuditReport:
    """What the audit found.

    Attributes:
        checked: contacts re-read.
        with_before: of those, contacts whose lists before the run were known.
        findings: the violations.
        requests: requests sent.
    """

    checked: int = 0
    with_before: int = 0
    findings: list[AuditFinding] = field(default_factory=list)
    requests: int = 0

    @property
    def ok(self) -> bool:
        """True when no contact breaks I1."""
        return not self.findings


@dataclass(frozen=True, slots=True)
class _Claim:
    email: str
    targets: tuple[str, ...]
    before: tuple[str, ...] | None


def _read_claims(report: Path) -> list[_Claim]:
    claims = []
    try:
        lines = report.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SourceError(f"cannot read the report {report}: {exc.strerror}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{report} line {number} is not JSON: {exc.msg}") from exc
        if record.get("outcome") not in TOUCHED:
            continue
        before = record.get("lists_before")
        claims.append(
            _Claim(
                email=str(record["email"]),
                targets=tuple(record.get("targets") or record.get("lists_added") or ()),
                before=tuple(before) if before is not None else None,
            )
        )
    return claims


async def audit(
    account: Account | Backend,
    report: str | Path,
    *,
    snapshot: Mapping[str, Iterable[str]] | None = None,
) -> AuditReport:
    """Audit the contacts of a migration report.

    Args:
        account: an opened `Account` (v1), or a `Backend` over an opened client.
        report: the migration's JSON Lines report.
        snapshot: email -> list names before the run (from `migrate --snapshot`), used
            where the report has no `lists_before` (the bulk path).

    Returns:
        the findings; `ok` is False when any contact lost a list or misses a target.
    """
    backend = as_backend(account)
    claims = await anyio.to_thread.run_sync(_read_claims, Path(report))
    lists = await backend.lists()
    names = {item.id: item.name for item in lists}
    result = AuditReport()
    sent = backend.stats().requests
    paged = await _paged_states(backend, claims, lists)
    step = backend.capabilities.lookup_batch
    for start in range(0, len(claims), step):
        chunk = claims[start : start + step]
        unread = [c.email for c in chunk if c.email not in paged]
        found: dict[str, ContactRef | ContactState] = dict(
            await backend.find(unread) if unread else {}
        )
        found.update((c.email, paged[c.email]) for c in chunk if c.email in paged)
        for claim in chunk:
            hit = found.get(claim.email)
            before = claim.before
            if before is None and snapshot is not None:
                before = tuple(snapshot.get(claim.email, ()))
            if hit is None:
                result.findings.append(
                    AuditFinding(claim.email, claim.targets, tuple(before or ()), "")
                )
                result.checked += 1
                continue
            state = hit if isinstance(hit, ContactState) else await backend.read(hit)
            now = {names.get(key, key) for key in state.list_ids}
            result.checked += 1
            result.with_before += before is not None
            missing = tuple(t for t in claim.targets if t not in now)
            lost = tuple(b for b in (before or ()) if b not in now)
            if missing or lost:
                status = state.ref.status.replace("_", " ")  # "opted out", for people
                result.findings.append(AuditFinding(claim.email, missing, lost, status))
    result.requests = backend.stats().requests - sent
    return result


async def _paged_states(
    backend: Backend, claims: list[_Claim], lists: list[ListInfo]
) -> dict[str, ContactState]:
    """The claimed contacts found on their target lists, read a page of lists at a time
    (v3: 500 contacts a request), when that costs fewer requests than looking each claim
    up; {} otherwise. A claimed contact not found there (it misses its targets) is then
    looked up on its own."""
    if not isinstance(backend, ListReader) or not claims:
        return {}
    by_name = {item.name: item for item in lists}
    targets = {by_name[t] for claim in claims for t in claim.targets if t in by_name}
    pages = sum(math.ceil((item.members or 0) / 500) + 1 for item in targets)
    lookups = math.ceil(len(claims) / backend.capabilities.lookup_batch)
    if pages >= lookups:
        return {}
    wanted = {claim.email for claim in claims}
    states: dict[str, ContactState] = {}
    for item in targets:
        async for state in backend.list_contacts(item.id):
            if state.ref.email in wanted:
                states[state.ref.email] = state
    return states
