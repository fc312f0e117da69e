"""A concurrent writer on a V3 account: while the engine migrates, another client adds lists
to contacts (append-only `add_list_memberships` activities, run through the simulator's
store), some of them just after the engine looked the contact up (inside its read->write
window), others long before the engine reaches them; and a stale writer puts back its old
view of a contact just after the engine's PUT. None of the other writer's lists is lost,
and the targets the stale writer removed are restored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.backend.protocol import ContactRef, ContactState, ListWrite
from engine.pipeline.run import migrate
from engine.simulator import v3

from .conftest import Scenario, build_scenario, check_migration, memberships
from .test_v3_faults import CONFIG, RETRY
from .v3_support import saved_account, token_secrets, v3_backend, v3_served

#: The other writer's lists (created before the run).
ZETA, ETA, EARLY = "Zeta", "Eta", "Early bird"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A V3 account and a source of about 230 rows, both paths."""
    return build_scenario(
        tmp_path_factory.mktemp("v3-scenario"), bulk=(60, 40, 30), per_set=8, backend="v3"
    )


def add_list(store: v3.AccountStore, emails: Sequence[str], name: str) -> None:
    """The other writer: an `add_list_memberships` activity for `emails`, run at once."""
    stored = store.list_by_name(name)
    assert stored is not None
    ids = []
    for email in emails:
        contact = store.contact_by_email(email)
        assert contact is not None
        ids.append(contact.id)
    body = {"source": {"contact_ids": ids}, "list_ids": [stored.id]}
    store.run_activity(store.submit_list_memberships(body, remove=False).id)


def put_back(store: v3.AccountStore, email: str, names: set[str]) -> None:
    """A stale writer's whole-contact PUT of `email` with the lists `names`."""
    contact = store.contact_by_email(email)
    assert contact is not None
    ids = [item.id for item in store.lists() if item.name in names]
    body: dict[str, Any] = {
        "email_address": {"address": email},
        "update_source": "Account",
        "list_memberships": ids,
        **contact.core,
    }
    store.update_contact(contact.id, body)


# On V3 no write names a list the engine read: an existing contact's fields go by a PUT that
# names no list (the API keeps them) and its lists by append, so a list added inside the
# lookup->write window survives at the default (`stale`) as with `all`; a stale writer that
# puts an old view back after the fields PUT is followed by the append, which restores the
# targets.
@pytest.mark.parametrize("verify", ["stale", "all"])
async def test_v3_concurrent_writer_keeps_its_lists_and_targets_are_restored(
    verify: str, scenario: Scenario, tmp_path: Path
) -> None:
    """Another writer's lists (some added in the read->write window) survive; targets restored."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    token_file = tmp_path / "tokens" / "v3.json"
    read = dataclasses.replace(CONFIG.read, lists_column="Lists")
    config = dataclasses.replace(CONFIG, read=read, verify_writes=verify)
    async with v3_served(scenario.seed) as sim:
        store = sim.store
        for name in (ZETA, ETA, EARLY):
            store.add_list(name)
        was = memberships(store)
        existing = sorted(
            e
            for e in scenario.targets
            if e in was and was[e][0] == "active" and e not in scenario.opted_out
        )
        per_contact = [e for e in existing if e.startswith("s")]
        bulk = [e for e in existing if e.startswith("g")]
        in_window = set(per_contact[0::3])
        stale_after_put = set(per_contact[1::3])
        early = set(per_contact[2::3] + bulk[3::7])
        seen_find: set[str] = set()
        seen_update: set[str] = set()
        added: dict[str, str] = {}  # email -> the writer's list it got

        async with v3_backend(sim, token_file, retry=RETRY) as backend:
            find: Callable[..., Awaitable[dict[str, ContactRef | ContactState]]] = backend.find
            update: Callable[..., Awaitable[None]] = backend.update

            async def racing_find(
                emails: Sequence[str], **options: Any
            ) -> dict[str, ContactRef | ContactState]:
                found = await find(emails, **options)
                if not seen_find:  # the first lookup: some contacts long before the engine
                    add_list(store, sorted(early), EARLY)
                    added.update(dict.fromkeys(early, EARLY))
                now_in_window = [e for e in found if e in in_window and e not in seen_find]
                seen_find.update(found)
                if now_in_window:  # looked up just now: the other writer adds Zeta
                    add_list(store, now_in_window, ZETA)
                    added.update(dict.fromkeys(now_in_window, ZETA))
                return found

            async def racing_update(write: ListWrite, **options: Any) -> None:
                await update(write, **options)
                email = write.state.ref.email
                if email in stale_after_put and email not in seen_update:
                    seen_update.add(email)
                    # A writer that read before the engine's PUT writes its view back, plus
                    # Eta: the engine's targets are gone again.
                    put_back(store, email, set(was[email][1]) | {ETA})

            # Instance attributes shadow the methods the pipeline calls.
            backend.find = racing_find  # type: ignore[method-assign]
            backend.update = racing_update  # type: ignore[method-assign]
            result = await migrate(
                backend,
                scenario.source,
                config=config,
                report=report,
                journal=report.with_name("report.journal.sqlite"),
            )
        account = saved_account(store, tmp_path / "sim")
        writes = list(store.writes)

    assert in_window <= seen_find, "the race inside the read->write window never ran"
    assert seen_update, "the race after the PUT never ran"
    assert result.pending == result.outcomes["failed"] == 0
    check_migration(
        scenario,
        account,
        report,
        writes=writes,
        secrets=token_secrets(token_file),
        outputs=[report.parent],
    )
    now = memberships(account)
    lost = sorted(e for e, name in added.items() if name not in now[e][1])
    assert not lost, f"the engine removed the other writer's list from {lost}"
    for email in seen_update:
        assert ETA in now[email][1]
        missing = scenario.targets[email] - now[email][1]
        assert not missing, f"{email} lost its targets {sorted(missing)} to the stale writer"
