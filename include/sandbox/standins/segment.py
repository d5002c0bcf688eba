"""Segment HTTP Tracking API stand-in (``/v1/batch``).

Enforces Basic auth with the write key, at most 500 KB a request and 32 KB an event (Segment's HTTP API
docs: "a maximum of 500KB per batch request and 32KB per call", answered with 400 Bad Request), read
as decimal kilobytes, the stricter reading, so whatever passes here passes either reading; an event is
measured as Segment's own library measures it (``len(json.dumps(message).encode())``). Also the
``type`` of each message, a ``userId`` or ``anonymousId`` on every message, an ``event`` name on every
track, and de-duplication by ``messageId`` as Segment does. It ignores ``Idempotency-Key``, as Segment
does. Keeps each user's traits and counts track events by name.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from typing import Any

from sandbox.standins.base import HttpError, Request, Response, StandIn

MAX_REQUEST = 500_000
MAX_EVENT = 32_000
TYPES = {"identify", "track", "page", "screen", "group", "alias"}


class SegmentStandIn(StandIn):
    name = "segment"
    rate_per_second = 200.0
    burst = 50
    persistent = ("traits", "message_ids")

    def __init__(self, write_key: str = "segment-write-key") -> None:
        self.write_key = write_key
        self.traits: dict[str, dict[str, Any]] = {}
        self.events: Counter[str] = Counter()
        self.tracks: list[dict[str, Any]] = []
        self.message_ids: set[str] = set()
        self.request_sizes: list[int] = []  # bytes of every accepted request body, for limit tests
        super().__init__()

    def setup_routes(self) -> None:
        self.route("POST", "/v1/batch", self.batch)

    def check_auth(self, req: Request) -> None:
        expected = "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()
        if req.headers.get("authorization") != expected:
            raise HttpError(401, {"success": False, "message": "invalid write key"})

    def batch(self, req: Request, m: re.Match[str]) -> Response:
        if len(req.body) > MAX_REQUEST:
            raise HttpError(
                400, {"success": False, "message": f"batch of {len(req.body)} bytes exceeds {MAX_REQUEST} bytes"}
            )
        self.request_sizes.append(len(req.body))
        body = req.json()
        messages = body.get("batch")
        if not isinstance(messages, list) or not messages:
            raise HttpError(400, {"success": False, "message": "batch must be a non-empty list"})
        for msg in messages:
            if len(json.dumps(msg).encode()) > MAX_EVENT:
                raise HttpError(400, {"success": False, "message": f"an event exceeds {MAX_EVENT} bytes"})
            if msg.get("type") not in TYPES or not (msg.get("userId") or msg.get("anonymousId")):
                raise HttpError(400, {"success": False, "message": "each message needs a type and a userId"})
            if msg["type"] == "track" and not msg.get("event"):
                raise HttpError(400, {"success": False, "message": "a track call needs an event name"})
        for msg in messages:
            mid = msg.get("messageId")
            if mid and mid in self.message_ids:
                continue  # Segment drops duplicates by messageId
            if mid:
                self.message_ids.add(mid)
            user = msg.get("userId") or msg.get("anonymousId")
            if msg["type"] == "identify":
                self.traits.setdefault(user, {}).update(msg.get("traits", {}))
            elif msg["type"] == "track":
                self.events[msg["event"]] += 1
                self.tracks.append(msg)
        return Response(200, {"success": True})

    def state(self) -> Any:
        return {"traits": self.traits, "events": dict(self.events)}

    def reset_state(self) -> None:
        self.traits.clear()
        self.events.clear()
        self.tracks.clear()
        self.message_ids.clear()
        self.request_sizes.clear()
