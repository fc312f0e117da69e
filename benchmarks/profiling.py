"""py-spy's raw output, reduced to own and inclusive samples per function."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["IDLE", "collapsed", "package"]

#: Leaf frames of a thread that waits (the worker threads of `anyio.to_thread`): not CPU.
IDLE = frozenset(
    f"{name} ({where})"
    for name in ("Condition.wait", "Event.wait", "Thread._wait_for_tstate_lock")
    for where in ("threading.py", "stdlib/threading.py")
)


def collapsed(path: Path, keep: int = 200) -> dict[str, Any]:
    """`{"own": {function: samples}, "inclusive": {…}, "total": n}` of a raw py-spy file.

    Frames read `function (file)` (py-spy shortens the file to its import path). The first
    frame of each stack names the process and is dropped; stacks whose leaf is an idle
    wait are left out. Only the `keep` largest functions of each kind are kept.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")[1:]
        if not frames or frames[-1] in IDLE:
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "own": dict(own.most_common(keep)),
        "inclusive": dict(inclusive.most_common(keep)),
        "total": total,
    }


def package(frame: str) -> str:
    """`engine/api`, `aiohttp`, `asyncio`, … of a `function (file)` frame."""
    parts = frame.rsplit("(", 1)[-1].rstrip(")").split("/")
    if parts[0] == "engine" and len(parts) > 2:
        return f"engine/{parts[1]}"
    return parts[0].removesuffix(".py")
