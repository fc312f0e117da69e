"""Invariant I6, bounded memory: the reader's peak memory does not grow with the input, and
every queue of a migration is bounded."""

from __future__ import annotations

import csv
import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.backend.v1 import Account
from engine.pipeline.config import MigrationConfig
from engine.pipeline.read import SourceReader
from engine.pipeline.run import migrate
from engine.simulator import RunningSimulator


def _write_source(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["Email Address", "First Name", "Company"])
        # Every 50th email repeats an earlier one, so duplicate coalescing is exercised.
        out.writerows(
            [f"user{i if i % 50 else i // 2}@example.com", f"Name {i}", "Acme, Inc."]
            for i in range(rows)
        )
    return path


async def _peak_reading(path: Path) -> tuple[int, int]:
    """(rows yielded, peak traced bytes) of a full read: scan, then every row."""
    reader = SourceReader(path)
    tracemalloc.start()
    try:
        await reader.scan()
        count = 0
        async for _ in reader.rows():
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


async def test_reader_peak_memory_is_flat_in_the_input_size(tmp_path: Path) -> None:
    """Reading 100,000 rows peaks at most 1.5x what 10,000 rows do (about 8 bytes a row)."""
    small = _write_source(tmp_path / "small.csv", 10_000)
    large = _write_source(tmp_path / "large.csv", 100_000)
    small_rows, small_peak = await _peak_reading(small)
    large_rows, large_peak = await _peak_reading(large)
    assert small_rows < 10_000 < large_rows  # duplicates were coalesced
    assert large_peak <= 1.5 * small_peak + 1_000_000, (small_peak, large_peak)


def _write_json_array(path: Path, rows: int) -> Path:
    with path.open("w", encoding="utf-8") as file:
        file.write("[\n")
        file.write(
            ",\n".join(
                json.dumps({"email": f"user{i}@example.com", "first_name": f"Name {i}"})
                for i in range(rows)
            )
        )
        file.write("\n]\n")
    return path


async def test_a_json_array_is_read_in_flat_memory(tmp_path: Path) -> None:
    """Reading a JSON array of 50,000 items peaks at most 1.5x what 5,000 items do."""
    small = _write_json_array(tmp_path / "small.json", 5_000)
    large = _write_json_array(tmp_path / "large.json", 50_000)
    small_rows, small_peak = await _peak_reading(small)
    large_rows, large_peak = await _peak_reading(large)
    assert (small_rows, large_rows) == (5_000, 50_000)
    assert large_peak <= 1.5 * small_peak + 1_000_000, (small_peak, large_peak)


async def test_every_queue_of_a_migration_is_bounded(
    simulator: RunningSimulator,
    account: Account,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each memory stream a migration creates has a finite buffer, except the planner's
    release channel, which only ever holds emails the planner itself put in flight."""
    store = simulator.store
    store.create_list("B")
    source = _write_source(tmp_path / "in.csv", 300)
    sizes: list[tuple[float, str]] = []
    original = anyio.create_memory_object_stream

    class Recording:
        def __class_getitem__(cls, item: Any) -> Any:
            def create(max_buffer_size: float = 0) -> Any:
                import inspect

                caller = inspect.stack()[1]
                sizes.append((max_buffer_size, f"{Path(caller.filename).name}:{caller.lineno}"))
                return original[item](max_buffer_size)

            return create

    monkeypatch.setattr(anyio, "create_memory_object_stream", Recording)
    config = MigrationConfig(poll_initial=0.02, poll_max=0.05, bulk_threshold=None)
    report = await migrate(account, source, lists=["B"], config=config)

    assert sum(report.outcomes.values()) == report.rows
    unbounded = [where for size, where in sizes if math.isinf(size)]
    assert len(sizes) >= 6
    assert all(where.startswith("plan.py") for where in unbounded), unbounded
    assert len(unbounded) == 1
