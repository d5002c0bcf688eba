"""Webhook signatures: HMAC-SHA256 over timestamp and body, fresh on every attempt."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from data_out.connections import ConnectionInfo
from data_out.destinations.base import (
    DestinationError,
)
from data_out.signing import unusable_secret

SIGNATURE_HEADER = "X-DataOut-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def signing_secret(conn: ConnectionInfo) -> str:
    """The connection's signing secret; an empty or placeholder one is refused before anything is sent."""
    problem = unusable_secret(conn.password)
    if problem:
        raise DestinationError(
            f"webhook: the password of connection {conn.conn_id!r} is the signing secret and {problem}; "
            "set the secret the receiver verifies with (see docs/webhooks.md)",
            retryable=False,
        )
    return (conn.password or "").strip()


def fresh_signature(secret: str, body: bytes) -> Callable[[], dict[str, str]]:
    """Headers for one attempt, signed at the moment it is sent (``HttpClient`` calls it per attempt)."""
    return lambda: {SIGNATURE_HEADER: sign(secret, body)}
