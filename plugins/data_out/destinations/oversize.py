"""A batch the vendor refused as too large (HTTP 413) is split and sent again, and reported as a bug.

Every destination sizes its requests under its vendor's published limits, so a 413 means Data Out
measured wrong (or the vendor lowered a limit). Failing the batch would fail it on every run, forever;
halving it until the halves fit delivers the members now, and the error log names the sizing bug so it
gets fixed. Each half has its own idempotency key (``split_key``), stable across retries, so a half
that was applied before a crash is sent under the same key again; a single member too large on its
own is rejected by row, with the reason recorded, instead of failing the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from data_out.destinations.base import BatchResult, Destination, MemberRow, Op, PayloadTooLarge, split_key

log = logging.getLogger(__name__)


def push_within_limits(dest: Destination, op: Op, rows: Sequence[MemberRow], key: str) -> BatchResult:
    """``dest.push``, halving the batch after each 413 until every part is accepted."""
    try:
        return dest.push(op, rows, key)
    except PayloadTooLarge as exc:
        if len(rows) == 1:
            log.error("sizing bug: %s refused one member's %s as too large on its own: %s", dest.type_name, op, exc)
            return BatchResult(rejected={rows[0].member_key: f"refused by {dest.type_name} as too large (HTTP 413)"})
        log.error(
            "sizing bug: %s refused a batch of %d rows as too large (HTTP 413) although Data Out sizes requests "
            "under its limits; report it. Sending the batch in two halves: %s",
            dest.type_name,
            len(rows),
            exc,
        )
    half = len(rows) // 2
    return merge(
        push_within_limits(dest, op, rows[:half], split_key(key, 0)),
        push_within_limits(dest, op, rows[half:], split_key(key, 1)),
    )


def merge(a: BatchResult, b: BatchResult) -> BatchResult:
    """One batch's result from its halves' results."""

    def total(x: int | None, y: int | None) -> int | None:
        return None if x is None and y is None else (x or 0) + (y or 0)

    return BatchResult(
        rejected={**a.rejected, **b.rejected},
        received=total(a.received, b.received),
        matched=total(a.matched, b.matched),
    )
