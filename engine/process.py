"""Settings of the whole process that the command line makes for a run (a program calling
`migrate` itself may make them too; the library never changes process-wide state)."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]

#: Allocations between two collections of the youngest generation (CPython's default: 700),
#: and how many of those between collections of the older ones (default: 10 and 10).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect garbage less often: a large run keeps a million small objects alive (rows,
    contacts, outcomes waiting in batches), and the default thresholds have the collector
    scan them over and over: a third of the bulk path's CPU at 100,000 contacts. Nearly
    everything the engine drops is freed by reference counting at once, so collecting
    cycles less often costs little memory. What is alive now (imported modules, the
    configuration) is frozen out of every collection."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
