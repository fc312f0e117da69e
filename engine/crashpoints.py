"""Named points where the durability tests kill the engine with SIGKILL (invariant I4).

`CTCT_ENGINE_CRASH_AT=NAME:N` makes the N-th passage through `crash_point(NAME)` kill the
process at once, as `kill -9` would, but at an exact place: for example between an
activity's submission and its journal write, an instant a timer would almost never hit.
Read once at import; without the variable a crash point costs one comparison.

Points: `read` (a chunk of rows read), `search` (a search answered), `put` (a write
answered, outcome not yet recorded), `journal` (a batch of outcomes written),
`activity-submitted` (the API accepted an activity, the journal does not know it yet),
`activity-journaled` (the journal knows it, not yet polled), `activity-complete` (polled
to COMPLETE, outcomes not yet recorded), `bulk-recorded` (an activity's contacts counted
and buffered for the journal, which writes them later, in larger writes).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "POINTS", "crash_point"]

ENV = "CTCT_ENGINE_CRASH_AT"
POINTS = (
    "read",
    "search",
    "put",
    "journal",
    "activity-submitted",
    "activity-journaled",
    "activity-complete",
    "bulk-recorded",
)

_name, _, _count = os.environ.get(ENV, "").partition(":")
_TARGET = _name or None
_AT = int(_count or 1) if _TARGET else 0
_passes = 0


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if `name` is the configured point and its turn came."""
    global _passes
    if name != _TARGET:
        return
    _passes += 1
    if _passes >= _AT:
        os.kill(os.getpid(), signal.SIGKILL)
