"""Consecutive slices of a list: how writes and ``IN (...)`` lists stay under a database's limits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size`` (the last may be shorter), in order; nothing for no items."""
    if size < 1:
        raise ValueError(f"a chunk size must be at least 1, not {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]
