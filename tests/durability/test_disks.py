"""Read-only and full output folders: a clear error, the first one, nothing lost.

A read-only folder for the report or journal stops the run before any write to the account
(exit 2). A disk that fills up mid-run stops it with exit 1, the first error and the resume
hint, no traceback; the account keeps every membership, and once there is room the same
command resumes and completes. The folders are small tmpfs mounts when the suite runs as
root (as CI does), else a folder made read-only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.simulator import AccountStore

from .conftest import Scenario, build_scenario, check_migration, memberships, simulator_in_thread
from .test_faults import cli_args, sim_config
from .test_reruns import _main_with_credentials

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A seeded account and a source of about 230 rows, both paths."""
    return build_scenario(tmp_path_factory.mktemp("scenario"), bulk=(60, 40, 30), per_set=8)


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on `folder` with `options` (unmounted at the end)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder nobody can write to: a read-only tmpfs as root, else mode 0555."""
    if ROOT:
        with tmpfs(folder, "ro,size=64k") as mounted:
            yield mounted
        return
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("which", ["report", "journal"])
def test_a_read_only_output_folder_stops_before_any_write(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """A read-only folder for the report or journal: exit 2 naming it, no list created, no
    contact written, no traceback."""
    store = AccountStore.load(scenario.seed, sim_config())
    before = store.to_json()
    with (
        read_only_folder(tmp_path / "ro") as folder,
        simulator_in_thread(sim_config(), store) as sim,
    ):
        args = cli_args(sim, scenario, tmp_path / "report.jsonl")
        args += [f"--{which}", str(folder / f"{which}.out"), "--list", "Brand New"]
        args += ["--create-lists"]
        status = _main_with_credentials(args)
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"cannot write the {which}" in err
    assert "Traceback" not in err
    assert store.to_json() == before


@pytest.mark.skipif(not ROOT, reason="a full disk is a small tmpfs, which only root can mount")
def test_a_disk_that_fills_up_mid_run_stops_cleanly_and_the_run_resumes(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output disk fills up mid-run: exit 1 with the first error and the resume hint, no
    traceback, no membership lost; with room made, the same command completes."""
    store = AccountStore.load(scenario.seed, sim_config())
    was = memberships(scenario.before())
    with tmpfs(tmp_path / "small", "size=192k") as folder:
        report = folder / "report.jsonl"
        with simulator_in_thread(sim_config(), store) as sim:
            args = cli_args(sim, scenario, report)
            status = _main_with_credentials(args)
            out, err = capsys.readouterr()
            assert status == 1, out + err
            assert "Traceback" not in err
            assert "cannot write the" in err
            assert "disk is full" in err or "No space left on device" in err
            assert "run the same command again" in err
            now = memberships(store)
            assert all(now[e][1] >= lists for e, (_, lists) in was.items()), "I1 at the stop"

            subprocess.run(["mount", "-o", "remount,size=8m", str(folder)], check=True)
            status = _main_with_credentials(args)
            out, err = capsys.readouterr()
            assert status == 1, out + err  # 1: the five invalid rows
            assert "not done yet" not in out
        check_migration(scenario, store, report)
