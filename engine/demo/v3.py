"""`python -m engine demo` (`--api v3`, the default): a whole V3 migration on the V3 simulator.

It starts the V3 simulator over https on 127.0.0.1, seeds an account (lists, thousands of
contacts with first names, some unsubscribed and a few deleted), logs in with the engine's
own OAuth2 device flow (the person's part, approving the code on the verification page, is
scripted and says so; the tokens go to a token file in the demo's folder and are never
shown), migrates a CSV of existing, new, duplicate and invalid rows, unsubscribed and deleted
contacts, on both the bulk and the per-contact path, and then proves from the account: no
membership lost, every valid row on its lists with its new field values, unsubscribed and
deleted contacts untouched, one outcome per row, and no destructive request in the
simulator's write log.
"""

from __future__ import annotations

import csv
import json
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from engine.backend.governor import RateGovernor
from engine.backend.retry import RetryPolicy
from engine.backend.v3 import (
    DeviceCode,
    FileTokenStore,
    OAuthEndpoints,
    V3Auth,
    V3Backend,
    V3Client,
    default_token_path,
    device_login,
)
from engine.pipeline.config import MigrationConfig
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import MigrationReport, migrate
from engine.progress import ProgressDisplay
from engine.simulator.v3 import (
    DESTRUCTIVE_ENDPOINTS,
    AccountStore,
    RunningSimulator,
    SimulatorConfig,
    serve,
)

from ._shared import demo_folder, print_check

__all__ = ["CLIENT_ID", "LISTS", "run_v3_demo", "seed_v3_account", "write_v3_source"]

LISTS = ("Customers", "Newsletter", "Prospects", "VIP", "Spring Promo")
#: The simulator's application: the client id `login --client-id` names.
CLIENT_ID = "demo-client"
#: The fewest existing contacts the demo seeds: enough for a bulk batch of each list set
#: and for the unsubscribed and deleted contacts the source names.
MIN_CONTACTS = 300
#: No rate limit or daily quota (the real API's 4/s and 10,000 a day would make a demo of
#: minutes), activities of about half a second, a device code polled every second.
SIM_CONFIG = SimulatorConfig(
    host="127.0.0.1",
    port=0,
    rps=None,
    daily_quota=None,
    token_rps=None,
    activity_delay=0.5,
    activity_jitter=0.5,
    activity_rows_per_second=20_000.0,
    device_interval=1,
    device_expires_in=120,
    client_id=CLIENT_ID,
    seed=7,
)


#: The kinds of source rows, in the order the summary names them.
KINDS = (
    "existing",
    "new",
    "duplicate",
    "gaining lists only",
    "renamed",
    "new on a small list set",
    "unsubscribed",
    "deleted",
    "invalid",
)


def _status(i: int) -> str:
    """The seeded status of `member{i}`: every 100th is unsubscribed, the next deleted."""
    return {1: "unsubscribed", 2: "deleted"}.get(i % 100, "active")


def seed_v3_account(store: AccountStore, contacts: int) -> dict[str, str]:
    """The lists and `contacts` existing contacts `member{i}@example.com` (first name
    `Member{i}`), on one to three lists; returns list name -> id."""
    ids = {name: store.add_list(name) for name in LISTS}
    for i in range(contacts):
        lists = [ids["Customers"]] if i % 2 == 0 else []
        lists += [ids["Newsletter"]] if i % 3 == 0 else []
        lists += [ids["Prospects"]] if i % 5 == 0 or not lists else []
        status = _status(i)
        store.add_contact(
            f"member{i}@example.com",
            lists=lists,
            permission="unsubscribed" if status == "unsubscribed" else "implicit",
            first_name=f"Member{i}",
            deleted=status == "deleted",
        )
    return ids


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row the demo wrote: what it should do to the account.

    Attributes:
        line: its line in the CSV (the header is line 1).
        email: as written (mixed case, or invalid).
        lists: its target list names.
        kind: what the row is (`existing`, `new`, `duplicate`, `invalid`…).
        fields: the non-empty field values it gives, by V3 core property name.
    """

    line: int
    email: str
    lists: tuple[str, ...]
    kind: str
    fields: Mapping[str, str]


def write_v3_source(path: Path, contacts: int) -> list[SourceRow]:
    """The demo's CSV (`Email Address`, `First Name`, `Last Name`, `Lists`); returns its rows.

    - every 3rd existing contact, mixed case, gains Spring Promo and a last name: the bulk
      path (a `contacts_json_import`), with the unsubscribed and deleted ones among them;
    - new contacts for Spring Promo: the same bulk batch;
    - the first 50 of those existing contacts again, adding VIP: coalesced with their first
      row (a bulk batch of Spring Promo + VIP);
    - 12 existing contacts gaining VIP and Customers and nothing else, with an unsubscribed
      and a deleted one: too few for bulk, so contact by contact, appended by id
      (`add_list_memberships`);
    - 8 existing contacts with a new first name, gaining Newsletter, with an unsubscribed and
      a deleted one: contact by contact, a whole-contact PUT built from a fresh read;
    - 5 new contacts for Prospects and VIP: contact by contact, a POST;
    - 5 invalid rows.
    """
    rows: list[SourceRow] = []

    def add(email: str, lists: str, kind: str, first: str = "", last: str = "") -> None:
        fields = {k: v for k, v in (("first_name", first), ("last_name", last)) if v}
        line = len(rows) + 2
        rows.append(SourceRow(line, email, tuple(n for n in lists.split(";") if n), kind, fields))

    for i in range(0, contacts, 3):
        add(f"Member{i}@Example.com", "Spring Promo", _kind(i, "existing"), last="Existing")
    for i in range(max(contacts // 3, 50)):
        add(f"new{i}@example.org", "Spring Promo", "new", f"New{i}", "Person")
    for i in range(0, min(contacts, 150), 3):
        add(f"member{i}@example.com", "VIP", "duplicate")
    for i in (1, 2, *range(4, 76, 6)):  # i ≡ 1 (mod 3), and the unsubscribed 1, deleted 2
        add(f"member{i}@example.com", "VIP;Customers", _kind(i, "gaining lists only"))
    for i in (101, 202, *range(5, 53, 6)):  # i ≡ 2 (mod 3), and unsubscribed 101, deleted 202
        add(f"member{i}@example.com", "Newsletter", _kind(i, "renamed"), f"Renamed{i}")
    for i in range(5):
        add(f"fresh{i}@example.net", "Prospects;VIP", "new on a small list set", f"Fresh{i}")
    for bad in ("not-an-email", "two@@example.com", "", "trailing.dot@example.", "a b@x.com"):
        add(bad, "Spring Promo", "invalid", "Bad", "Row")
    with path.open("w", newline="", encoding="utf-8") as file:
        out = csv.writer(file)
        out.writerow(["Email Address", "First Name", "Last Name", "Lists"])
        for row in rows:
            out.writerow(
                [
                    row.email,
                    row.fields.get("first_name", ""),
                    row.fields.get("last_name", ""),
                    ";".join(row.lists),
                ]
            )
    return rows


def _kind(i: int, kind: str) -> str:
    status = _status(i)
    return status if status != "active" else kind


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the checks compare of one contact: lists (ids), permission, deleted, fields."""

    lists: frozenset[str]
    permission: str
    deleted: bool
    core: Mapping[str, Any]


def _snapshot(store: AccountStore) -> dict[str, Snapshot]:
    """Every contact of the account (deleted ones included), by lower-cased email."""
    return {
        c.email.lower(): Snapshot(
            frozenset(c.lists), c.permission, c.deleted_at is not None, dict(c.core)
        )
        for c in store.contacts()
        if c.email is not None
    }


async def _device_login(sim: RunningSimulator, token_file: Path) -> None:
    """The engine's OAuth2 device login (what `python -m engine login` runs), with the
    person's part, approving the code on the verification page, scripted."""
    ca_path = sim.ca_path
    assert ca_path is not None  # served over https
    endpoints = OAuthEndpoints(CLIENT_ID, auth_url=sim.auth_url, ca_file=ca_path)
    store = FileTokenStore(token_file)
    async with anyio.create_task_group() as people:

        def show(code: DeviceCode) -> None:
            url = code.verification_uri_complete or code.verification_uri
            print(f"  To log in, open {url}")
            print(
                f"  check that the page shows the code {code.user_code} and approve it "
                f"(the code expires in {round(code.expires_in / 60)} minutes)."
            )
            print(
                "  [scripted: this is the person's part] opening the page, checking the code, "
                "clicking Allow, as a person does in the browser…",
                flush=True,
            )
            people.start_soon(_approve_in_browser, code, ca_path)

        tokens = await device_login(endpoints, store=store, show=show)
    refresh = "with" if tokens.refresh_token else "without"
    print(
        f"  logged in ({refresh} a refresh token): the tokens are saved in {token_file} "
        "(readable by you only; never shown)"
    )


async def _approve_in_browser(code: DeviceCode, ca_path: Path) -> None:
    """What the person does: open the verification page, see the code, submit `Allow`."""
    context = ssl.create_default_context(cafile=str(ca_path))
    url = code.verification_uri_complete or code.verification_uri
    async with aiohttp.ClientSession() as browser:
        async with browser.get(url, ssl=context) as page:
            page.raise_for_status()
            if code.user_code not in await page.text():
                raise RuntimeError("the verification page does not show the code")
        form = {"user_code": code.user_code, "decision": "approve"}
        async with browser.post(code.verification_uri, data=form, ssl=context) as answer:
            answer.raise_for_status()


def _report_rows(path: Path) -> tuple[Counter[int], dict[str, dict[str, Any]]]:
    """How many report records name each source line, and the record of each email."""
    lines: Counter[int] = Counter()
    by_email: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as file:
        for text in file:
            record = json.loads(text)
            lines.update(record["rows"])
            by_email[str(record["email"]).strip().lower()] = record
    return lines, by_email


def _difference(email: str, old: Snapshot, new: Snapshot | None) -> str:
    """`email: what changed`, for a contact that should not have."""
    if new is None:
        return f"{email}: gone"
    changes = [
        f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in ("permission", "deleted")
        if getattr(old, name) != getattr(new, name)
    ]
    if old.lists != new.lists:
        changes.append(f"lists {len(old.lists)} -> {len(new.lists)}")
    changes += [
        f"{key} {old.core.get(key)!r} -> {new.core.get(key)!r}"
        for key in sorted(old.core.keys() | new.core.keys())
        if old.core.get(key) != new.core.get(key)
    ]
    return f"{email}: {'; '.join(changes)}"


def _problem(count: int, what: str, examples: list[str]) -> str | None:
    if not count:
        return None
    return f"{count} {what} (e.g. {', '.join(examples[:3])})"


def _checks(
    rows: list[SourceRow],
    before: Mapping[str, Snapshot],
    after: Mapping[str, Snapshot],
    ids: Mapping[str, str],
    report: MigrationReport,
    store: AccountStore,
) -> bool:
    """Print the checks; returns whether all passed."""
    lost = [e for e, old in before.items() if e not in after or not old.lists <= after[e].lists]
    untouchable = {
        e for e, old in before.items() if old.deleted or old.permission == "unsubscribed"
    }
    targets: dict[str, set[str]] = {}
    values: dict[str, dict[str, str]] = {}
    for row in rows:
        email = row.email.strip().lower()
        if row.kind == "invalid" or email in untouchable:
            continue
        targets.setdefault(email, set()).update(ids[name] for name in row.lists)
        values.setdefault(email, {}).update(row.fields)
    missing = [e for e, want in targets.items() if e not in after or not want <= after[e].lists]
    wrong = [
        e
        for e, want in values.items()
        if e in after and any(after[e].core.get(k) != v for k, v in want.items())
    ]
    assert report.report_path is not None
    lines, records = _report_rows(report.report_path)
    named = {row.email.strip().lower() for row in rows}
    changed = [
        _difference(e, before[e], after.get(e))
        for e in sorted(untouchable & named)
        if after.get(e) != before[e]
    ]
    misreported = [
        e
        for e in sorted(untouchable & named)
        if (records.get(e, {}).get("outcome"), records.get(e, {}).get("reason"))
        != ("skipped", "deleted" if before[e].deleted else "opted-out")
    ]
    expected_lines = {row.line for row in rows}
    off = sorted(n for n in expected_lines | set(lines) if lines[n] != 1 or n not in expected_lines)
    one_each = _problem(len(off), "source lines without exactly one outcome", [str(n) for n in off])
    if one_each is None and not sum(report.outcomes.values()) == report.rows == len(rows):
        one_each = f"{sum(report.outcomes.values())} outcomes, {report.rows} rows read"
    writes = Counter(f"{w.method} {w.path.split('?')[0]}" for w in store.writes)
    destructive = [
        f"{w.method} {w.path}"
        for w in store.writes
        if w.endpoint in DESTRUCTIVE_ENDPOINTS or w.method == "DELETE"
    ]
    print(f"writes:    {_tally(writes)}")
    untouched_count = len(untouchable & named)
    passed = [
        print_check(
            1,
            f"every contact still has every list it had ({len(before)} contacts)",
            _problem(len(lost), "contacts lost lists", lost),
        ),
        print_check(
            2,
            f"every valid, mailable row is on its target lists ({len(targets)} contacts)",
            _problem(len(missing), "contacts missing lists", missing),
        ),
        print_check(
            3,
            "the rows' new field values were written (last and first names)",
            _problem(len(wrong), "contacts with other values", wrong),
        ),
        print_check(
            4,
            f"the {untouched_count} unsubscribed and deleted contacts of the source are "
            "untouched and reported skipped (opted-out, deleted)",
            _problem(len(changed), "contacts changed", changed)
            or _problem(len(misreported), "contacts reported otherwise", misreported),
        ),
        print_check(
            5,
            f"every row has exactly one outcome ({report.rows} rows, "
            f"{len(records)} report records)",
            one_each,
        ),
        print_check(
            6,
            "no sign_up_form, remove_list_memberships, contact_delete, list_delete or DELETE "
            f"was sent ({sum(writes.values())} writes)",
            _problem(len(destructive), "destructive requests", destructive),
        ),
    ]
    return all(passed)


def _tally(writes: Counter[str]) -> str:
    """`4 POST /v3/activities/contacts_json_import, …`, by method and path (PUTs of
    contacts counted together)."""
    grouped: Counter[str] = Counter()
    for key, count in writes.items():
        method, path = key.split(" ", 1)
        parts = path.strip("/").split("/")
        if parts[1:2] == ["contacts"] and len(parts) > 2 and method == "PUT":
            path = "/v3/contacts/{id}"
        grouped[f"{method} {path}"] += count
    return ", ".join(f"{n} {key}" for key, n in grouped.most_common()) or "none"


async def run_v3_demo(*, contacts: int = 5000, keep: Path | None = None) -> int:
    """Run the V3 demo (at least `MIN_CONTACTS` contacts); returns 0 when every check passed."""
    contacts = max(contacts, MIN_CONTACTS)
    started = time.monotonic()
    print("V3 demo: the V3 REST API (JSON, OAuth2), on its simulator")
    with demo_folder(keep) as folder:
        store = AccountStore(SIM_CONFIG)
        ids = seed_v3_account(store, contacts)
        before = _snapshot(store)
        source = folder / "contacts.csv"
        rows = write_v3_source(source, contacts)
        token_file = default_token_path(CLIENT_ID, folder / "config")
        async with serve(SIM_CONFIG, store) as sim:
            statuses = Counter(_status(i) for i in range(contacts))
            print(
                f"simulator: {sim.base_url} (authorization server {sim.auth_url}, CA {sim.ca_path})"
            )
            print(
                f"account:   {contacts} contacts ({statuses['unsubscribed']} unsubscribed, "
                f"{statuses['deleted']} deleted) on {', '.join(LISTS)}"
            )
            print("login:     the engine's OAuth2 device flow, as `python -m engine login` runs it")
            await _device_login(sim, token_file)
            kinds = Counter(row.kind for row in rows)
            print(
                f"source:    {source} ({len(rows)} rows: "
                + ", ".join(f"{kinds[k]} {k}" for k in KINDS if kinds[k])
                + ")"
            )
            auth = V3Auth(
                OAuthEndpoints(CLIENT_ID, auth_url=sim.auth_url, ca_file=sim.ca_path),
                store=FileTokenStore(token_file),
            )
            client = V3Client(
                auth,
                base_url=sim.base_url,
                ca_file=sim.ca_path,
                # The simulator has no rate limit here; the real API allows 4 requests/s.
                governor=RateGovernor(rate=None, concurrency=32),
                retry=RetryPolicy(attempts=5, wait_initial=0.1, wait_max=2.0),
            )
            async with client:
                with ProgressDisplay(every=2.0) as display:
                    report = await migrate(
                        V3Backend(client),
                        source,
                        config=MigrationConfig(
                            read=ReadOptions(lists_column="Lists"),
                            poll_initial=0.2,
                            poll_max=1.0,
                            linger=0.2,
                            append_linger=0.5,
                            progress_interval=0.5,
                            # The simulator's activities take about half a second (the real
                            # API's, minutes): the ETA's guess until one has finished.
                            activity_seconds=SIM_CONFIG.activity_delay,
                        ),
                        report=folder / "report.jsonl",
                        on_progress=display,
                    )
            print()
            print(report.summary())
            ok = _checks(rows, before, _snapshot(store), ids, report, store)
        if keep is not None:
            print(f"files kept in {folder}")
    print(
        f"V3 demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s "
        "(seeding, login, migration and checks)"
    )
    return 0 if ok else 1
