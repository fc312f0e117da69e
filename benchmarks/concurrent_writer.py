"""How many memberships does another writer lose to the migration? A measurement.

`python -m benchmarks.concurrent_writer [--contacts N] [--rate R] [--latency-ms L]`

The v1 API has no ETags: a PUT built from a GET overwrites whatever another client changed
in between. The engine narrows that window (the PUT's rate turn is taken before the
staleness check, so the window is one round trip at any rate) and, with `--verify-writes
all`, reads each contact back after its PUT. This script measures what is left: it migrates
N existing contacts onto a new list contact by contact, at the engine's default rate (4
requests/s) against the simulator with a round-trip latency, while another writer adds a
list of its own to one of those contacts every `1/writer_rate` seconds (each add applied at
once on the server, as a signup form would). At the end it counts the writer's lists that
are gone, for each `--verify-writes` setting, and prints the loss rates.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from engine.backend.v1 import Account, Credentials, RateGovernor
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import migrate
from engine.simulator import AccountStore, SimulatorConfig, serve
from engine.simulator.v1.store import ContactInput

__all__ = ["measure"]


async def measure(
    verify: str, *, contacts: int, rate: float, latency_ms: float, writer_rate: float, seed: int
) -> tuple[int, int, int]:
    """One migration with a concurrent writer; (writer's adds, adds lost, engine PUTs)."""
    config = SimulatorConfig(latency_ms=latency_ms, seed=seed)
    store = AccountStore(config)
    old = store.create_list("Old")
    store.create_list("New")
    emails = [f"c{i}@example.com" for i in range(contacts)]
    for email in emails:
        store.add_contact(email, lists=[old])
    rng = random.Random(seed)
    added: list[tuple[str, int]] = []

    async def writer() -> None:
        while True:
            await asyncio.sleep(1.0 / writer_rate)
            email = rng.choice(emails)
            contact = store.contact_by_email(email)
            assert contact is not None
            name = f"W{len(added)}"
            list_id = store.create_list(name)
            uri = f"http://{config.id_host}/ws/customers/{config.username}/lists/{{}}"
            store.update_contact(
                contact.id,
                ContactInput(
                    email,
                    fields=dict(contact.fields),
                    lists=[uri.format(i) for i in (*contact.lists, list_id)],
                    opt_in_source="ACTION_BY_CUSTOMER",
                ),
            )
            added.append((email, list_id))

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "contacts.csv"
        source.write_text("email\n" + "".join(f"{e}\n" for e in emails), encoding="utf-8")
        async with serve(config, store) as sim:
            account = Account(
                Credentials(config.username, config.api_key, config.password),
                base_url=sim.base_url,
                ca_file=sim.ca_path,
                governor=RateGovernor(rate=rate),
            )
            async with account:
                task = asyncio.create_task(writer())
                try:
                    report = await migrate(
                        account,
                        source,
                        lists=["New"],
                        config=MigrationConfig(bulk_threshold=None, verify_writes=verify),  # type: ignore[arg-type]
                    )
                finally:
                    task.cancel()
    lost = 0
    for email, list_id in added:
        contact = store.contact_by_email(email)
        assert contact is not None
        lost += list_id not in contact.lists
    return len(added), lost, report.outcomes["updated"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrent_writer")
    parser.add_argument("--contacts", type=int, default=120)
    parser.add_argument("--rate", type=float, default=4.0, help="the engine's rate limit")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--writer-rate", type=float, default=2.0, help="adds per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for verify in ("stale", "all"):
        adds, lost, updated = asyncio.run(
            measure(
                verify,
                contacts=args.contacts,
                rate=args.rate,
                latency_ms=args.latency_ms,
                writer_rate=args.writer_rate,
                seed=args.seed,
            )
        )
        share = 100.0 * lost / adds if adds else 0.0
        print(
            f"--verify-writes {verify}: the writer added {adds} lists, {lost} lost "
            f"({share:.1f}%); {updated} contacts updated at {args.rate:g} requests/s, "
            f"{args.latency_ms:g} ms latency"
        )


if __name__ == "__main__":
    main()
