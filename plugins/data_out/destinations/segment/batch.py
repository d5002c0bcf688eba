"""Segment ``/v1/batch`` bodies, sized exactly as they are sent.

Segment accepts at most 500 KB a request and 32 KB an event, and answers 400 past either. Each body is
built here byte for byte (``json.dumps`` of every message, joined the way ``json.dumps`` joins a list),
so its size is known before it is sent rather than estimated: a part is closed before it would pass
``BATCH_BYTES``, the 475,000 bytes at which Segment's own library (segment-analytics-python,
``consumer.BATCH_SIZE_LIMIT``) closes a batch, leaving margin under the limit for whatever a proxy adds.
An event is measured as that library measures it (``len(json.dumps(msg).encode())``) and kept under the
stricter, decimal reading of 32 KB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

#: Segment's published limit per request ("500 KB"), read as decimal: the stricter of the two readings
MAX_REQUEST_BYTES = 500_000
#: where segment-analytics-python closes a batch: the margin it keeps under MAX_REQUEST_BYTES
BATCH_BYTES = 475_000
#: Segment's published limit per event ("32 KB"), read as decimal (the library uses 32 << 10)
MAX_EVENT_BYTES = 32_000

_SEP = b", "  # what json.dumps writes between list items
JSON_HEADERS = {"Content-Type": "application/json"}


def encode_message(message: dict[str, Any]) -> bytes:
    """One message as it appears in the body, and as Segment's library measures it."""
    return json.dumps(message).encode()


def _envelope(sent_at: str) -> tuple[bytes, bytes]:
    return b'{"batch": [', b'], "sentAt": ' + json.dumps(sent_at).encode() + b"}"


def batch_bodies(encoded: Sequence[bytes], sent_at: str, max_bytes: int = BATCH_BYTES) -> Iterator[tuple[int, bytes]]:
    """Split already-encoded messages, in order, into request bodies of at most ``max_bytes`` each;
    yields each body with the number of messages it holds.

    The body is exactly ``json.dumps({"batch": [...], "sentAt": sent_at}).encode()``. Deterministic: a
    retried batch splits the same way (``sentAt`` has a fixed length). A message that cannot fit even
    alone raises ``ValueError``: callers refuse events over ``MAX_EVENT_BYTES``, far below ``max_bytes``.
    """
    head, tail = _envelope(sent_at)
    part: list[bytes] = []
    size = len(head) + len(tail)
    for msg in encoded:
        extra = len(msg) + (len(_SEP) if part else 0)
        if part and size + extra > max_bytes:
            yield len(part), head + _SEP.join(part) + tail
            part, size = [], len(head) + len(tail)
            extra = len(msg)
        if size + extra > max_bytes:
            raise ValueError(f"a Segment message of {len(msg)} bytes cannot fit a request of {max_bytes} bytes")
        part.append(msg)
        size += extra
    if part:
        yield len(part), head + _SEP.join(part) + tail
