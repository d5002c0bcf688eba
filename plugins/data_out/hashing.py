"""SHA-256 of text, the one way Data Out hashes member keys, identifiers, SQL and idempotency keys."""

from __future__ import annotations

import hashlib


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of ``value`` encoded as UTF-8 (what vendors expect for hashed identifiers)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
