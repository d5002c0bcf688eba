"""Segment (HTTP Tracking API ``/v1/batch``): audience entry and exit as track events plus identify traits.

Connection (type ``data_out_segment``): ``host`` the API base URL (default https://api.segment.io),
``password`` the source's write key. Members are identified by ``userId`` = member key. Each add sends
``Audience Entered`` and an identify with ``{<audience>: true, <audience>_holdout: <bool>}``; each remove
sends ``Audience Exited`` and ``{<audience>: false}``; a refresh (a full resync of a member already
acknowledged) sends the identify alone. ``messageId`` is derived from the batch's
idempotency key, so Segment drops a replayed batch's events as duplicates. Requests stay under 500 KB
and events under 32 KB.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationSettings, MemberRow, Op
from data_out.destinations.http import HttpClient, part_key, split_by_size

MAX_REQUEST_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
ENVELOPE_BYTES = 256  # {"batch": [...], "sentAt": ...} around the events


class SegmentSettings(DestinationSettings):
    type: Literal["segment"]
    include: Literal["targeted", "holdout", "all"] = "all"
    entered_event: str = "Audience Entered"
    exited_event: str = "Audience Exited"


@register
class SegmentDestination(Destination):
    type_name = "segment"
    pool = "data_out_segment"  # see deploy/pools.json
    settings_model = SegmentSettings
    default_conn_id = "data_out_segment"
    distinguishes_refresh = True  # a refresh restores the trait without a second "Audience Entered"
    max_batch_rows = 2_000
    activation = False  # the CDP receives the holdout flag so downstream tools can honour it

    settings: SegmentSettings

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.client = HttpClient(
            "segment",
            self.connection,
            default_base_url="https://api.segment.io",
            auth=(self.connection.password or "", ""),
        )

    def _messages(self, op: Op, r: MemberRow, key: str, now: str) -> list[dict[str, Any]]:
        def mid(kind: str) -> str:
            return hashlib.sha256(f"{key}:{r.member_key}:{kind}".encode()).hexdigest()[:32]

        name = self.audience
        entered = op.adds
        props = {"audience": name, "destination": self.settings.label, "holdout": bool(r.in_holdout)}
        traits: dict[str, Any] = {name: entered}
        if entered:
            traits[f"{name}_holdout"] = bool(r.in_holdout)
        track = {
            "type": "track",
            "userId": r.member_key,
            "messageId": mid("track"),
            "timestamp": now,
            "event": self.settings.entered_event if entered else self.settings.exited_event,
            "properties": props,
        }
        return [
            *([track] if op is not Op.REFRESH else []),  # a refresh is no new entry
            {
                "type": "identify",
                "userId": r.member_key,
                "messageId": mid("identify"),
                "timestamp": now,
                "traits": traits,
            },
        ]

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        now = dt.datetime.now(dt.UTC).isoformat()
        rejected: dict[str, str] = {}
        sized: list[tuple[bytes, dict[str, Any]]] = []
        for r in rows:
            messages = self._messages(op, r, idempotency_key, now)
            encoded = [json.dumps(m).encode() for m in messages]
            if any(len(e) > MAX_EVENT_BYTES for e in encoded):
                rejected[r.member_key] = "event larger than Segment's 32 KB limit"
                continue
            sized.extend(zip(encoded, messages, strict=True))
        parts = split_by_size(sized, lambda pair: len(pair[0]) + 1, MAX_REQUEST_BYTES - ENVELOPE_BYTES)
        for i, part in enumerate(parts):
            self.client.request(
                "POST",
                "/v1/batch",
                json={"batch": [m for _, m in part], "sentAt": now},
                headers={"Idempotency-Key": part_key(idempotency_key, i, len(parts))},
            )
        return BatchResult(rejected=rejected, received=len(rows) - len(rejected))

    def close(self) -> None:
        self.client.close()
