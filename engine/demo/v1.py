"""`python -m engine demo --api v1`: a whole migration on the legacy v1 simulator.

It starts the v1 simulator over https, seeds an account (several lists, thousands of contacts,
some Do Not Mail and some Removed), writes a CSV with new, existing, duplicate and invalid
rows that takes both the bulk and the per-contact path, migrates it, and then proves
through the API, from the lists' members feeds, that no membership was lost and every
valid row reached its lists.
"""

from __future__ import annotations

import csv
from pathlib import Path

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.pipeline.config import MigrationConfig
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import migrate
from engine.progress import ProgressDisplay
from engine.simulator import AccountStore, SimulatorConfig, serve

from ._shared import demo_folder, print_check

__all__ = ["run_v1_demo", "seed_demo_account", "write_demo_source"]

LISTS = ("Customers", "Newsletter", "Prospects", "VIP", "Spring Promo")


def seed_demo_account(store: AccountStore, contacts: int) -> None:
    """Lists and `contacts` existing contacts; every 100th is Removed, the next Do Not Mail."""
    ids = {name: store.create_list(name) for name in LISTS}
    for i in range(contacts):
        email = f"member{i}@example.com"
        if i % 100 == 1:
            store.add_contact(email, status="Removed")
        elif i % 100 == 2:
            store.add_contact(email, status="Do Not Mail")
        else:
            lists = [ids["Customers"]] if i % 2 == 0 else []
            lists += [ids["Newsletter"]] if i % 3 == 0 else []
            lists += [ids["Prospects"]] if i % 5 == 0 or not lists else []
            store.add_contact(email, lists=lists, fields={"FirstName": f"Member{i}"})


def write_demo_source(path: Path, contacts: int) -> dict[str, int]:
    """The demo's CSV; returns how many rows of each kind it holds."""
    kinds = {"existing": 0, "new": 0, "duplicate": 0, "invalid": 0, "small list set": 0}
    with path.open("w", newline="", encoding="utf-8") as file:
        out = csv.writer(file)
        out.writerow(["Email Address", "First Name", "Last Name", "Lists"])
        for i in range(0, min(contacts, 4000), 2):  # existing contacts, mixed case
            out.writerow([f"Member{i}@Example.com", f"Member{i}", "Existing", "Spring Promo"])
            kinds["existing"] += 1
        for i in range(1500):
            out.writerow([f"new{i}@example.org", f"New{i}", "Person", "Spring Promo"])
            kinds["new"] += 1
        for i in range(20):  # a list set too small for bulk: contact by contact
            out.writerow([f"member{4001 + 2 * i}@example.com", "", "", "VIP;Customers"])
            kinds["small list set"] += 1
        for i in range(0, 200, 2):  # the same emails again, adding VIP: coalesced
            out.writerow([f"member{i}@example.com", "", "Again", "VIP"])
            kinds["duplicate"] += 1
        for bad in ("not-an-email", "two@@example.com", "", "trailing.dot@example.", "a b@x.com"):
            out.writerow([bad, "Bad", "Row", "Spring Promo"])
            kinds["invalid"] += 1
    return kinds


async def _memberships(account: Account) -> dict[str, set[str]]:
    """email -> names of the user lists it is on, read from the members feeds."""
    result: dict[str, set[str]] = {}
    for item in await account.lists():
        if item.is_system:
            continue
        async for member in account.list_members(item.key):
            result.setdefault(member.email.lower(), set()).add(item.name)
    return result


async def run_v1_demo(*, contacts: int = 5000, keep: Path | None = None) -> int:
    """Run the v1 demo (at least 4,100 contacts); returns 0 when every check passed."""
    contacts = max(contacts, 4100)
    with demo_folder(keep) as folder:
        store = AccountStore(SimulatorConfig(seed=7))
        seed_demo_account(store, contacts)
        source = folder / "contacts.csv"
        kinds = write_demo_source(source, contacts)
        config = SimulatorConfig(seed=7, activity_delay=1.0, activity_jitter=0.5)
        async with serve(config, store) as sim:
            print(f"simulator: {sim.base_url} (CA {sim.ca_path})")
            print(f"account:   {contacts} contacts on {', '.join(LISTS)}")
            print(f"source:    {source} ({', '.join(f'{v} {k}' for k, v in kinds.items())})")
            account = Account(
                Credentials(config.username, config.api_key, config.password),
                base_url=sim.base_url,
                ca_file=sim.ca_path,
                # The simulator has no rate limit; the real API wants --rate-limit 4.
                governor=RateGovernor(rate=None, concurrency=32),
                retry=RetryPolicy(attempts=5, wait_initial=0.1, wait_max=2.0),
            )
            async with account:
                before = await _memberships(account)
                with ProgressDisplay(every=2.0) as display:
                    report = await migrate(
                        account,
                        source,
                        config=MigrationConfig(
                            read=ReadOptions(lists_column="Lists"),
                            poll_initial=0.5,
                            poll_max=2.0,
                            linger=0.2,
                            progress_interval=0.5,
                            # The simulator's activities take about a second (the real
                            # API's, minutes): the ETA's guess until one has finished.
                            activity_seconds=config.activity_delay,
                        ),
                        report=folder / "report.jsonl",
                        on_progress=display,
                    )
                after = await _memberships(account)
            print()
            print(report.summary())
            lost = {
                email: lists - after.get(email, set())
                for email, lists in before.items()
                if lists - after.get(email, set())
            }
            wanted = _targets_of_valid_rows(source, store)
            missing = {
                email: lists - after.get(email, set())
                for email, lists in wanted.items()
                if lists - after.get(email, set())
            }
            rows_accounted = sum(report.outcomes.values()) == report.rows
            passed = [
                print_check(
                    1,
                    "memberships before the run still present",
                    f"{len(lost)} contacts lost lists" if lost else None,
                ),
                print_check(
                    2,
                    "every valid, mailable row is on its target lists",
                    f"{len(missing)} contacts missing lists" if missing else None,
                ),
                print_check(
                    3,
                    "every row has exactly one outcome",
                    None if rows_accounted else "outcomes and rows differ",
                ),
            ]
            if keep is not None:
                print(f"files kept in {folder}")
            return 0 if all(passed) else 1


def _targets_of_valid_rows(source: Path, store: AccountStore) -> dict[str, set[str]]:
    """email -> target lists, for rows with a valid email of a contact that may be mailed."""
    wanted: dict[str, set[str]] = {}
    with source.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            email = row["Email Address"].strip().lower()
            contact = store.contact_by_email(email)
            if contact is None or contact.status == "Do Not Mail":
                continue
            wanted.setdefault(email, set()).update(n for n in row["Lists"].split(";") if n)
    return wanted
