"""Settings of the whole process that the command line makes for a run (a program calling
`migrate` itself may make them too; the library never changes process-wide state)."""

from __future__ import annotations

import ctypes
import gc
import platform
import sys

__all__ = ["tune_allocator", "tune_gc", "tune_process"]

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


#: glibc's `mallopt` parameter: the size from which a block is its own memory map.
M_MMAP_THRESHOLD = -3
#: glibc's default threshold, kept fixed.
MMAP_THRESHOLD = 128 * 1024


def tune_allocator() -> bool:
    """Have glibc give every large block back to the system when it is freed.

    glibc serves a block of 128 KiB or more from a memory map of its own, unmapped when
    freed, but after such a block is freed it raises that threshold to the block's size
    (up to 32 MiB). So once the first activity body (megabytes) is freed, every later one
    is carved from the heap, where small objects freed and allocated around it keep the
    pages resident, and the engine's resident size creeps up with the length of the run
    (20 MB over a million-row bulk run, measured; see benchmarks/README.md). A fixed
    threshold is `mallopt(M_MMAP_THRESHOLD, 128 KiB)`; Python has no binding for it, hence
    ctypes. Returns whether it was set: False on a C library other than glibc.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the process's own symbols: the C library it runs on


def tune_process() -> None:
    """What the command line sets up for a long run: `tune_gc` and `tune_allocator`."""
    tune_gc()
    tune_allocator()
