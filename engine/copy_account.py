"""Copy an account into a simulator state file, to rehearse a migration on the copy.

`python -m engine copy-account --to copy.json` reads the account through the API and writes
the state file that `python -m engine simulate --state copy.json` (`--api v3` for a V3
account) serves. Nothing is written to the account.

On V3 (`copy_v3_account`): the lists (500 a request), then every contact with its lists,
permission, deletion and core names, 500 a request (`GET /contacts?status=all&
include=list_memberships&limit=500`). List and contact ids are the simulator's own (the
engine finds lists by name); custom fields, phones and addresses are not copied.

On v1 (`copy_account`): its user lists, every contact with its status, and each list's
members: one request per 50 contacts and per 50 members of each list.

What is copied: list names, each contact's email, status (`Active`,
`Unconfirmed`, `Removed`, `Do Not Mail`) and list memberships. What is not: contact
details (names, addresses: the feeds do not carry them, and a migration keeps them as they
are), list and contact ids (the simulator gives its own; the engine finds lists by name),
activities and campaigns. The state format is `AccountStore.to_json` (JSON: `format`,
`version`, `lists`, `contacts`, `activities`, and the next ids).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.backend.v1.client import Account
from engine.backend.v3 import V3Backend
from engine.backend.v3._json import contact_permission
from engine.simulator import AccountStore, SimulatorConfig, v3 as sim_v3

__all__ = ["CopySummary", "copy_account", "copy_v3_account"]

log = logging.getLogger("engine.copy")

#: Statuses that carry no list memberships.
_NO_LISTS = frozenset({"removed", "do not mail"})


@dataclass(frozen=True, slots=True)
class CopySummary:
    """What `copy_account` wrote.

    Attributes:
        path: the state file.
        lists: user lists copied.
        contacts: contacts copied.
        memberships: list memberships copied.
        requests: requests it took.
    """

    path: Path
    lists: int
    contacts: int
    memberships: int
    requests: int

    def describe(self) -> str:
        """One line for people."""
        return (
            f"copied {self.lists} lists, {self.contacts} contacts and {self.memberships} "
            f"memberships to {self.path} in {self.requests} requests; rehearse with "
            f"`python -m engine simulate --state {self.path}`"
        )


async def copy_account(
    account: Account, path: str | Path, *, on_progress: Callable[[str], None] | None = None
) -> CopySummary:
    """Read the account and write it as a simulator state file at `path` (atomically).

    Args:
        account: an opened account.
        path: the state file to write.
        on_progress: called with a line of text after each list and every 5,000 contacts.
    """
    say = on_progress or (lambda _: None)
    started = account.requests_sent
    store = AccountStore(SimulatorConfig(username=account.credentials.username))
    lists = [item for item in await account.lists() if not item.is_system]
    ids = {item.key: store.create_list(item.name) for item in lists}
    members: dict[str, list[int]] = {}
    for item in lists:
        count = 0
        async for member in account.list_members(item.key):
            members.setdefault(member.email.lower(), []).append(ids[item.key])
            count += 1
        say(f"list {item.name!r}: {count} members")
    contacts = memberships = 0
    async for summary in account.all_contacts():
        email = summary.email.lower()
        status = summary.status.strip() or "Active"
        on = [] if status.lower() in _NO_LISTS else members.get(email, [])
        store.add_contact(email, lists=on, status=status)
        contacts += 1
        memberships += len(on)
        if contacts % 5000 == 0:
            say(f"{contacts} contacts read")
    target = Path(path)
    store.save(target)
    return CopySummary(target, len(lists), contacts, memberships, account.requests_sent - started)


async def copy_v3_account(
    backend: V3Backend, path: str | Path, *, on_progress: Callable[[str], None] | None = None
) -> CopySummary:
    """Read a V3 account and write it as a V3 simulator state file at `path` (atomically).

    Args:
        backend: an opened V3 backend.
        path: the state file to write.
        on_progress: called with a line of text after the lists and every 5,000 contacts.
    """
    say = on_progress or (lambda _: None)
    started = backend.stats().requests
    store = sim_v3.AccountStore(sim_v3.SimulatorConfig())
    lists = await backend.lists()
    ids = {item.id: store.add_list(item.name) for item in lists}
    say(f"{len(lists)} lists")
    contacts = memberships = 0
    async for state in backend.account_contacts():
        if not state.ref.email:
            continue
        document = state.document if isinstance(state.document, dict) else {}
        on = [ids[i] for i in state.lists if i in ids]
        permission = contact_permission(document) or "implicit"
        store.add_contact(
            state.ref.email,
            lists=on,
            permission=permission,
            first_name=state.fields.get("FirstName"),
            last_name=state.fields.get("LastName"),
            deleted=state.ref.status == "deleted",
        )
        contacts += 1
        memberships += len(on)
        if contacts % 5000 == 0:
            say(f"{contacts} contacts read")
    target = Path(path)
    store.save(target)
    requests = backend.stats().requests - started
    return CopySummary(target, len(lists), contacts, memberships, requests)
