"""Deterministic holdout buckets.

A member's bucket depends only on the audience's salt and the member key, never on who else is in the
audience or on the run, so the same person stays in (or out of) the holdout as the audience grows and
shrinks. The bucket is stored; whether a bucket is "held out" is decided at diff time from the configured
percent, so changing the percent needs no recomputation.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000  # basis points: percent settings down to 0.01 % are exact


def bucket_for(salt: str, member_key: str) -> int:
    """Bucket in ``[0, BUCKETS)`` from SHA-256 of ``salt:member_key`` (first 8 bytes, big-endian)."""
    digest = hashlib.sha256(f"{salt}:{member_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def holdout_threshold(percent: float) -> int:
    """Buckets strictly below this number are held out."""
    return round(percent * BUCKETS / 100)


def is_held_out(salt: str, member_key: str, percent: float) -> bool:
    return bucket_for(salt, member_key) < holdout_threshold(percent)
