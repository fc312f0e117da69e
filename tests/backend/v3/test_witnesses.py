"""The bulk probe's witness search on V3, where a lookup takes one email: after the first
window of lookups, the members of the other lists are read instead (500 a request) when that
is cheaper than looking up the rest of the batch one by one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio

from engine.backend.protocol import ContactRef, ContactState
from engine.backend.v3 import V3Backend
from engine.pipeline.config import MigrationConfig, StageLimits
from engine.pipeline.dryrun import plan_migration
from engine.pipeline.run import migrate
from engine.simulator.v3 import RunningSimulator

from ..bursts import watch_bursts
from .conftest import BackendOpener

CONFIG = MigrationConfig(
    probe_size=1,
    poll_initial=0.02,
    poll_max=0.05,
    bulk_threshold=25,
    limits=StageLimits(fetch=4, put=8),  # a lookup window of 8
)
WINDOW = 8


def _count_lookups(backend: V3Backend) -> list[str]:
    """Record every email the backend looks up (the batch's witness search, and any
    per-contact lookup)."""
    looked_up: list[str] = []
    find = backend.find

    async def counting(
        emails: Sequence[str], *, strict: bool = False
    ) -> dict[str, ContactRef | ContactState]:
        looked_up.extend(emails)
        return await find(emails, strict=strict)

    backend.find = counting  # type: ignore[method-assign]
    return looked_up


def _imports(sim: RunningSimulator) -> int:
    return len(sim.store.calls("activities.contacts_json_import"))


async def test_a_batch_of_new_contacts_costs_a_window_of_lookups_not_one_each(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """400 new contacts in bulk: 8 lookups, then the other list's members read, 500 a
    request, show none of them can lose a list, and the batch goes in one import."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    for n in range(5):
        sim.store.add_contact(f"old{n}@example.com", lists=[old])
    source = [{"email": f"new{n:03d}@example.com", "first_name": f"N{n}"} for n in range(400)]
    async with open_backend(sim) as backend:
        looked_up = _count_lookups(backend)
        with anyio.fail_after(40):
            report = await migrate(backend, source, lists=["News"], config=CONFIG)
    assert report.outcomes["bulk_added"] == 400
    assert len(looked_up) == WINDOW  # 400 before the scan
    assert _imports(sim) == 1  # no witness: nothing to lose, no probe activity
    for n in range(400):
        stored = sim.store.contact_by_email(f"new{n:03d}@example.com")
        assert stored is not None
        assert stored.lists == [news]
    kept = sim.store.contact_by_email("old0@example.com")
    assert kept is not None
    assert kept.lists == [old]


async def test_a_witness_beyond_the_first_window_is_found_among_the_other_lists(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """An existing contact on another list, 300th in the batch, is found by the scan and
    probed in an activity of its own before the rest: it keeps its list."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    sim.store.add_contact("old0@example.com", lists=[old], first_name="Olga")
    source = [{"email": f"new{n:03d}@example.com"} for n in range(400)]
    source.insert(300, {"email": "old0@example.com"})
    async with open_backend(sim) as backend:
        looked_up = _count_lookups(backend)
        with anyio.fail_after(40):
            report = await migrate(backend, source, lists=["News"], config=CONFIG)
    assert report.outcomes["bulk_added"] == 401
    assert "old0@example.com" not in looked_up[:WINDOW]
    assert len([e for e in looked_up if e != "old0@example.com"]) == WINDOW
    assert _imports(sim) == 2  # the probe (the witness alone), then the rest
    witness = sim.store.contact_by_email("old0@example.com")
    assert witness is not None
    assert witness.lists == [old, news]


async def test_the_batch_is_looked_up_one_by_one_when_reading_the_lists_costs_more(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """40 contacts and 40 other lists (a request each, even empty): the 32 left after the
    first window are cheaper to look up, and are."""
    sim.store.add_list("News")
    for n in range(40):
        sim.store.add_list(f"Other {n}")
    source = [{"email": f"new{n:02d}@example.com"} for n in range(40)]
    async with open_backend(sim) as backend:
        looked_up = _count_lookups(backend)
        with anyio.fail_after(40):
            report = await migrate(backend, source, lists=["News"], config=CONFIG)
    assert report.outcomes["bulk_added"] == 40
    assert sorted(looked_up) == sorted(row["email"] for row in source)


async def test_the_dry_run_counts_the_scan_the_run_sends(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """With lookups, the dry run of 400 new contacts in bulk counts the run's scan (a window
    of lookups, the lists, the other list's members) instead of a lookup each."""
    old, _ = sim.store.add_list("Old"), sim.store.add_list("News")
    for n in range(5):
        sim.store.add_contact(f"old{n}@example.com", lists=[old])
    source = [{"email": f"new{n:03d}@example.com"} for n in range(400)]
    async with open_backend(sim) as backend:
        with anyio.fail_after(40):
            config = dataclasses.replace(CONFIG, activity_seconds=0.05)  # the simulator's pace
            plan = await plan_migration(backend, source, lists=["News"], config=config, lookup=True)
            before = backend.stats().requests
            await migrate(backend, source, lists=["News"], config=CONFIG)
            sent = backend.stats().requests - before
    assert abs(plan.requests - sent) <= 0.1 * sent, (plan.describe(), sent)


async def test_the_probe_sends_over_a_pool_of_its_own_closed_when_it_ends(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """The probe's lookups, activity and read-back go over a burst pool closed when the probe
    ends; the rest of the batch is submitted over the client's own pool."""
    old, news = sim.store.add_list("Old"), sim.store.add_list("News")
    for n in range(10):
        sim.store.add_contact(f"c{n:03d}@example.com", lists=[old])
    source = [{"email": f"c{n:03d}@example.com"} for n in range(100)]
    async with open_backend(sim) as backend:
        watch = watch_bursts(backend, backend.client)
        with anyio.fail_after(40):
            report = await migrate(
                backend, source, lists=["News"], config=dataclasses.replace(CONFIG, probe_size=3)
            )
    assert report.outcomes["bulk_added"] == 100
    watch.check_one_probe()
    for n in range(10):
        kept = sim.store.contact_by_email(f"c{n:03d}@example.com")
        assert kept is not None
        assert kept.lists == [old, news]


async def test_the_probed_contacts_are_read_again_while_the_probe_is_read_back(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """After the probe's activity, the reads of its witnesses and the read-back of its
    contacts go at once: here each read waits until the read-back has begun (one after the
    other, the probe would never finish), and the verdict and outcomes are as before."""
    old = sim.store.add_list("Old")
    sim.store.add_list("News")
    for n in range(10):
        sim.store.add_contact(f"c{n:03d}@example.com", lists=[old])
    source = [{"email": f"c{n:03d}@example.com"} for n in range(60)]
    async with open_backend(sim) as backend:
        reading_back = anyio.Event()
        read, settle = backend.read, backend.settle

        async def read_when_settling(ref: ContactRef) -> ContactState:
            await reading_back.wait()
            return await read(ref)

        async def settling(*args: Any, **kwargs: Any) -> Any:
            reading_back.set()
            return await settle(*args, **kwargs)

        backend.read = read_when_settling  # type: ignore[method-assign]
        backend.settle = settling  # type: ignore[method-assign]
        with anyio.fail_after(20):
            report = await migrate(
                backend, source, lists=["News"], config=dataclasses.replace(CONFIG, probe_size=3)
            )
    assert report.outcomes["bulk_added"] == 60
    assert (report.bulk_enabled, report.activities, report.warnings) == (True, 2, ())
    for n in range(10):
        kept = sim.store.contact_by_email(f"c{n:03d}@example.com")
        assert kept is not None
        assert old in kept.lists
