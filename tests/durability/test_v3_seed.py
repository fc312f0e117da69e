"""The seed thread's failure on a V3 account, on both paths: a list of 2,600 contacts, 1,000
of its members imported into a new list; afterwards the first list still has 2,600 members
and the new one 1,000 ("List A had 2600 contacts, after importing 1000 into List B it has
1600" must never happen). The engine is the command line, as a real subprocess.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.simulator import v3

from .conftest import Scenario, check_migration, run_engine
from .v3_support import v3_env, v3_simulator

MEMBERS, IMPORTED = 2600, 1000


@pytest.fixture(scope="module")
def seed_thread(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """List A with 2,600 members (every third also on Other, some unsubscribed), and a
    source of 1,000 of them for the new List B."""
    folder = tmp_path_factory.mktemp("v3-seed-thread")
    store = v3.AccountStore(v3.SimulatorConfig(seed=5))
    list_a, other = store.add_list("List A"), store.add_list("Other")
    emails = [f"member{i}@example.com" for i in range(MEMBERS)]
    unsubscribed = {e for i, e in enumerate(emails) if i % 250 == 7}
    for i, email in enumerate(emails):
        store.add_contact(
            email,
            lists=[list_a, other] if i % 3 == 0 else [list_a],
            permission="unsubscribed" if email in unsubscribed else "implicit",
        )
    imported = emails[1::2][:IMPORTED]
    source = folder / "list-b.csv"
    source.write_text("Email Address\n" + "".join(f"{e}\n" for e in imported), encoding="utf-8")
    seed = folder / "seed.json"
    store.save(seed)
    return Scenario(
        seed=seed,
        source=source,
        rows=tuple(range(2, IMPORTED + 2)),
        targets={e: frozenset({"List B"}) for e in imported},
        rejected_rows=(),
        opted_out=frozenset(unsubscribed.intersection(imported)),
        backend="v3",
    )


@pytest.mark.parametrize("no_bulk", [False, True], ids=["bulk", "no-bulk"])
def test_v3_importing_1000_members_into_a_new_list_keeps_the_2600(
    no_bulk: bool, seed_thread: Scenario, tmp_path: Path
) -> None:
    """1,000 of List A's 2,600 members imported into List B: A keeps 2,600, B has the 1,000."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    with v3_simulator(tmp_path / "sim", seed_thread.seed) as sim:
        args = [
            "migrate",
            str(seed_thread.source),
            "--list",
            "List B",
            "--create-lists",
            "--report",
            str(report),
            *sim.account_args(),
            "--rate-limit",
            "10000",
            "--concurrency",
            "16",
            "--poll-initial",
            "0.05",
            "--poll-max",
            "0.2",
            "--quiet",
            *(["--no-bulk"] if no_bulk else []),
        ]
        result = run_engine(args, env=v3_env())
        account = sim.stop()
    assert "Traceback" not in result.stderr
    check_migration(
        seed_thread,
        account,
        report,
        writes=sim.writes(),
        secrets=sim.all_secrets(),
        outputs=[result.output, report.parent],
    )
    list_a = account.list_by_name("List A")
    list_b = account.list_by_name("List B")
    assert list_a is not None
    assert list_b is not None
    assert account.member_count(list_a.id) == MEMBERS
    assert account.member_count(list_b.id) == IMPORTED - len(seed_thread.opted_out)
    assert result.returncode == 0, result.output
