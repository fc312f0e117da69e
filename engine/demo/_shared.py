"""What both demos share: the folder their files go in, and how a check is printed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["demo_folder", "print_check"]


@contextmanager
def demo_folder(keep: Path | None) -> Iterator[Path]:
    """`keep` (created if needed, left in place), else a temporary folder removed on exit."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
    else:
        with tempfile.TemporaryDirectory(prefix="ctct-demo-") as tmp:
            yield Path(tmp)


def print_check(number: int, claim: str, problem: str | None) -> bool:
    """Print `check N: claim: yes` (or `NO, problem`); returns whether the check passed."""
    print(f"check {number}: {claim}: {'yes' if problem is None else f'NO, {problem}'}")
    return problem is None
