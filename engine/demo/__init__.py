"""`python -m engine demo`: a whole migration on a simulator, with zero configuration.

`--api v3` (the default) runs `v3.run_v3_demo`: the V3 REST API, with its OAuth2 device
login; `--api v1` runs `v1.run_v1_demo`: the legacy v1 XML API. Each seeds an account,
migrates a CSV that takes both the bulk and the per-contact path, and proves from the account
that no membership was lost, every valid row reached its lists, and every row has exactly one
outcome; it returns 0 when every check passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["run_demo"]


async def run_demo(
    *, api: Literal["v3", "v1"] = "v3", contacts: int | None = None, keep: Path | None = None
) -> int:
    """Run the demo of `api` on `contacts` existing contacts (default 5,000; v1 seeds at
    least 4,100, v3 at least 300), keeping its files in `keep` if given; returns the exit
    status (0: every check passed)."""
    if api == "v1":
        from engine.demo.v1 import run_v1_demo

        print("v1 demo: the legacy v1 XML API, on its simulator")
        return await run_v1_demo(contacts=5000 if contacts is None else contacts, keep=keep)
    from engine.demo.v3 import run_v3_demo

    return await run_v3_demo(contacts=5000 if contacts is None else contacts, keep=keep)
