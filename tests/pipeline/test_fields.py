"""One row, one result: the bulk and per-contact paths leave a contact's fields and lists the
same, on a server whose empty activity cells clear fields and on one whose do not, with and
without `lists_only`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import migrate
from engine.simulator import AccountStore, SimulatorConfig, serve

from .conftest import new_account, read_report, write_csv

HEADER = ["Email Address", "First Name", "Last Name", "City"]


def seed(store: AccountStore) -> None:
    """30 existing contacts on Customers with names and a city; list Spring Promo."""
    customers = store.create_list("Customers")
    store.create_list("Spring Promo")
    for i in range(30):
        store.add_contact(
            f"old{i}@example.com",
            lists=[customers],
            fields={"FirstName": f"Old{i}", "LastName": "Kept", "City": "Paris"},
        )


def rows() -> list[list[str]]:
    """Existing contacts with a new first name, some with an empty last name and city; new
    contacts with names; one value a spreadsheet would run as a formula."""
    out = [
        [f"old{i}@example.com", f"New{i}", "" if i % 2 else "Renamed", "" if i % 3 else "Rome"]
        for i in range(30)
    ]
    out += [[f"new{i}@example.org", f"Fresh{i}", "" if i % 4 else "Last", ""] for i in range(30)]
    out[5][1] = "=HYPERLINK(1)"
    return out


def account_state(store: AccountStore) -> dict[str, tuple[dict[str, str], frozenset[str]]]:
    """Each contact's fields and list names."""
    names = {lst.id: lst.name for lst in store.lists()}
    return {
        c.email: (dict(c.fields), frozenset(names[i] for i in c.memberships))
        for c in store.contacts()
    }


async def migrate_on_fresh_account(
    tmp_path: Path, path: str, *, empty_cells_clear: bool, lists_only: bool
) -> tuple[dict[str, tuple[dict[str, str], frozenset[str]]], list[dict[str, Any]]]:
    """Run the same source on a fresh simulator through one path; the account after, and
    the report."""
    sim_config = SimulatorConfig(
        host="127.0.0.1", port=0, activity_delay=0.02, seed=7,
        bulk_empty_cells_clear=empty_cells_clear,
    )  # fmt: skip
    config = MigrationConfig(
        poll_initial=0.02,
        poll_max=0.1,
        linger=0.05,
        progress_interval=0.05,
        bulk_threshold=25 if path == "bulk" else None,
        lists_only=lists_only,
    )
    folder = tmp_path / path
    folder.mkdir()
    source = write_csv(folder / "in.csv", HEADER, rows())
    async with serve(sim_config) as sim:
        seed(sim.store)
        async with new_account(sim) as account:
            await migrate(
                account,
                source,
                config=dataclasses.replace(config, lists=("Spring Promo",)),
                report=folder / "report.jsonl",
            )
        return account_state(sim.store), read_report(folder / "report.jsonl")


@pytest.mark.parametrize("lists_only", [False, True], ids=["fields", "lists-only"])
@pytest.mark.parametrize("empty_cells_clear", [False, True], ids=["blanks-kept", "blanks-clear"])
async def test_the_same_row_gives_the_same_contact_on_both_paths(
    tmp_path: Path, empty_cells_clear: bool, lists_only: bool
) -> None:
    """Bulk and per-contact runs of one source leave identical fields and lists."""
    bulk, bulk_report = await migrate_on_fresh_account(
        tmp_path, "bulk", empty_cells_clear=empty_cells_clear, lists_only=lists_only
    )
    single, single_report = await migrate_on_fresh_account(
        tmp_path, "per-contact", empty_cells_clear=empty_cells_clear, lists_only=lists_only
    )

    assert {line["path"] for line in bulk_report if "path" in line} == {"bulk"}
    assert {line["path"] for line in single_report if "path" in line} == {"contact"}
    assert bulk == single
    # The rule itself: non-empty cells written (unless lists only), empty ones kept.
    fields, lists = single["old1@example.com"]
    assert lists == {"Customers", "Spring Promo"}
    assert fields == (
        {"FirstName": "Old1", "LastName": "Kept", "City": "Paris"}
        if lists_only
        else {"FirstName": "New1", "LastName": "Kept", "City": "Paris"}
    )
    assert single["old0@example.com"][0]["City"] == ("Paris" if lists_only else "Rome")
    assert single["old5@example.com"][0]["FirstName"] == (
        "Old5" if lists_only else "'=HYPERLINK(1)"
    )
    assert single["new1@example.org"] == ({"FirstName": "Fresh1"}, frozenset({"Spring Promo"}))
    assert single["new0@example.org"][0] == {"FirstName": "Fresh0", "LastName": "Last"}
