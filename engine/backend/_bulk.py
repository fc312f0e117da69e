"""What both dialects' bulk encoders share: contacts read a slice at a time, so that an
activity of tens of thousands is encoded without being held as row objects."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

__all__ = ["SLICE", "slices"]

T = TypeVar("T")

#: Contacts encoded at a time.
SLICE = 1000


def slices(items: Iterable[T], size: int = SLICE) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter), read once, in order
    (`itertools.batched` from Python 3.12, which the project does not require)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
