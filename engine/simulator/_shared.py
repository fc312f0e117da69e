"""What both simulators share besides listening: request counters and state-file writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Stats", "save_json"]


class Stats:
    """Request counters by route pattern and by status (served at `/_sim/stats`)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_route_status: Counter[str] = Counter()

    def record(self, route: str, status: str) -> None:
        """Count one answer."""
        self.total += 1
        self.by_route[route] += 1
        self.by_status[status] += 1
        self.by_route_status[f"{route} {status}"] += 1

    def reset(self) -> None:
        """Forget every count."""
        self.total = 0
        self.by_route.clear()
        self.by_status.clear()
        self.by_route_status.clear()

    def as_json(self) -> dict[str, object]:
        """`{"total": n, "by_route": {...}, "by_status": {...}, "by_route_status": {...}}`
        (`by_route_status` keys are "ROUTE STATUS", e.g. "POST activities reset")."""
        return {
            "total": self.total,
            "by_route": dict(sorted(self.by_route.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "by_route_status": dict(sorted(self.by_route_status.items())),
        }


def save_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write `to_json` output atomically and durably (fsync, then rename); callable from
    a worker thread with a snapshot taken in the event loop."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
