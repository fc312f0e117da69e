"""Bad input on V3: every bad row becomes its own `rejected` outcome with a reason, a field
over V3's limit is left out with a note (or cut), a formula cell is neutralised, and the run
goes on for the good rows."""

from __future__ import annotations

import anyio

from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Outcome
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import migrate
from engine.simulator.v3 import RunningSimulator

from .conftest import BackendOpener


async def test_bad_rows_are_rejected_one_by_one_and_the_run_goes_on(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """Invalid emails and an email over 80 characters are `rejected` with their reason; an
    over-long first name is left out with a note; a formula gets a leading quote; the good
    rows are created."""
    sim.store.add_list("News")
    long_name = "N" * 60  # V3 takes 50
    source = [
        {"email": "good@example.com", "first_name": "Good"},
        {"email": "not-an-email", "first_name": "Bad"},
        {"email": "two@@example.com"},
        {"email": "x" * 90 + "@example.com"},
        {"email": "long@example.com", "first_name": long_name},
        {"email": "formula@example.com", "first_name": "=HYPERLINK(1)"},
        {"email": ""},
    ]
    outcomes: dict[str, Outcome] = {}
    config = MigrationConfig(bulk_threshold=None, read=ReadOptions())
    async with open_backend(sim) as backend:
        with anyio.fail_after(30):
            report = await migrate(
                backend,
                source,
                lists=["News"],
                config=config,
                on_outcome=lambda o: outcomes.__setitem__(o.email or str(o.rows), o),
            )

    assert report.outcomes["created"] == 3
    assert report.outcomes["rejected"] == 4
    rejected = [o for o in outcomes.values() if o.kind == "rejected"]
    assert all(o.reason for o in rejected)
    assert "first_name" in outcomes["long@example.com"].note.lower().replace(
        "firstname", "first_name"
    )
    long_contact = sim.store.contact_by_email("long@example.com")
    assert long_contact is not None
    assert long_contact.core.get("first_name") in (None, "")
    formula = sim.store.contact_by_email("formula@example.com")
    assert formula is not None
    assert formula.core["first_name"] == "'=HYPERLINK(1)"
