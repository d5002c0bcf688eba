"""Segment (HTTP Tracking API ``/v1/batch``): audience entry and exit as Segment's audience events.

Connection (type ``data_out_segment``): ``host`` the API base URL (default https://api.segment.io),
``password`` the source's write key. Members are identified by ``userId`` = member key.

Events follow the shape Segment's own audiences (Engage) send: an add sends ``Audience Entered`` with
properties ``{audience_key: <audience>, <audience>: true}`` and an identify with the trait
``{<audience>: true}``; a remove sends ``Audience Exited`` with ``{audience_key, <audience>: false}`` and
the trait ``false``. Data Out adds its own properties beside the spec's, never instead of them:
``destination`` (this destination's label) and ``holdout`` on the track, ``<audience>_holdout`` on the
identify. A refresh (a full resync of a member already acknowledged) sends the identify alone.

``messageId`` is derived from the planned batch's idempotency key, the member and the call, so a batch
sent again (a lost answer, a crash before the commit, a split after a 413) carries the same ids and
Segment drops the repeats. Requests are sized exactly as encoded (``segment/batch.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationSettings, MemberRow, Op, planned_key
from data_out.destinations.http import HttpClient, part_key
from data_out.destinations.segment.batch import JSON_HEADERS, MAX_EVENT_BYTES, batch_bodies, encode_message
from data_out.destinations.segment.settings import SegmentSettings
from data_out.hashing import sha256_hex


@register
class SegmentDestination(Destination):
    type_name = "segment"
    pool = kind("segment").pool  # sized in deploy/pools.json
    settings_model = SegmentSettings
    default_conn_id = kind("segment").conn_type
    distinguishes_refresh = True  # a refresh restores the trait without a second "Audience Entered"
    max_batch_rows = 2_000
    activation = False  # the CDP receives the holdout flag so downstream tools can honour it

    settings: SegmentSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        from data_out.destinations.segment.hook import SegmentHook  # the write key as Basic auth

        self.client: HttpClient = SegmentHook(connection=self.connection).client()

    def _messages(self, op: Op, r: MemberRow, key: str, now: str) -> list[dict[str, Any]]:
        def mid(kind: str) -> str:
            return sha256_hex(f"{key}:{r.member_key}:{kind}")[:32]

        name = self.audience
        entered = op.adds
        # Segment's audience spec first; Data Out's own properties beside them
        props = {
            "audience_key": name,
            name: entered,
            "destination": self.settings.label,
            "holdout": bool(r.in_holdout),
        }
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
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        ids_from = planned_key(idempotency_key)  # the same messageIds however the batch was split
        rejected: dict[str, str] = {}
        encoded: list[bytes] = []
        for r in rows:
            messages = [encode_message(m) for m in self._messages(op, r, ids_from, now)]
            if any(len(m) > MAX_EVENT_BYTES for m in messages):
                rejected[r.member_key] = f"event larger than Segment's limit of {MAX_EVENT_BYTES} bytes"
                continue
            encoded.extend(messages)
        bodies = list(batch_bodies(encoded, now))
        keys = [r.member_key for r in rows]
        for i, (_, body) in enumerate(bodies):
            self.client.request(
                "POST",
                "/v1/batch",
                data=body,
                members=keys,  # masked if Segment's error quotes a userId
                # Segment ignores Idempotency-Key (it dedupes by messageId): sent to trace the request
                headers={**JSON_HEADERS, "Idempotency-Key": part_key(idempotency_key, i, len(bodies))},
            )
        return BatchResult(rejected=rejected, received=len(rows) - len(rejected))

    def close(self) -> None:
        self.client.close()
