"""TikTok Ads custom audiences through segment mapping (``/open_api/v1.3/segment/mapping/``).

Connection (type ``data_out_tiktok``): ``host`` the API base URL (default
https://business-api.tiktok.com), ``password`` the access token. Per audience: ``advertiser_id``,
``segment_id``, ``id_schema`` (EMAIL_SHA256 and/or PHONE_SHA256), ``phone_format`` and ``batch_size``.

TikTok answers errors with HTTP 200 and a non-zero ``code``: 40100 (too many requests) and 5xxxx are
retried, every other code fails the batch with TikTok's message.

Each ``batch_data`` row holds one entry per ``id_schema`` item, in order. An identifier the member lacks
is sent as an empty object ``{}``, never as ``{"id": ""}``: an empty id is no SHA-256 digest and matches
nobody, and the row must keep its positions (Segment's TikTok Audiences connector does the same). A
member with none of the schema's identifiers is not sent at all; the planner leaves such members out,
and should one reach a batch its add is rejected by row with the reason, so it shows up as a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationSettings, MemberRow, Op
from data_out.destinations.http import HttpClient
from data_out.destinations.tiktok.settings import TikTokSettings


@register
class TikTokDestination(Destination):
    type_name = "tiktok"
    pool = kind("tiktok").pool  # sized in deploy/pools.json
    settings_model = TikTokSettings
    default_conn_id = kind("tiktok").conn_type
    max_batch_rows = 10_000
    # ``cover_num`` counts the audience once TikTok has processed uploads, asynchronously, not on acceptance
    reported_size_is_live = False

    settings: TikTokSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        from data_out.destinations.tiktok.hook import TikTokHook  # the Access-Token header from the connection

        self.client: HttpClient = TikTokHook(connection=self.connection).client()

    @classmethod
    def columns_for(cls, settings: DestinationSettings) -> dict[str, str]:
        assert isinstance(settings, TikTokSettings)
        cols = {}
        if "EMAIL_SHA256" in settings.id_schema:
            cols["email_sha256"] = "email_sha256"
        if "PHONE_SHA256" in settings.id_schema:
            cols["phone_sha256"] = "phone_e164_sha256" if settings.phone_format == "e164" else "phone_digits_sha256"
        return cols

    @property
    def identity_columns(self) -> dict[str, str]:  # type: ignore[override]  # class-wide in the base
        return self.columns_for(self.settings)

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        s = self.settings
        values = {"EMAIL_SHA256": lambda r: r.email_sha256, "PHONE_SHA256": lambda r: r.phone_sha256}
        batch: list[list[dict[str, Any]]] = []
        rejected: dict[str, str] = {}
        for r in rows:
            ids = [values[k](r) for k in s.id_schema]
            if not any(ids):
                if op.adds:  # a removal of a member TikTok cannot have been given is simply done
                    rejected[r.member_key] = f"no identifier of id_schema {'/'.join(s.id_schema)}"
                continue
            batch.append([{"id": v, "audience_ids": [s.segment_id]} if v else {} for v in ids])
        if batch:
            body = {
                "advertiser_ids": [s.advertiser_id],
                "action": "add" if op is Op.ADD else "delete",
                "id_schema": list(s.id_schema),
                "batch_data": batch,
            }
            # TikTok ignores Idempotency-Key (segments are sets): sent to trace the request
            self.client.request(
                "POST", "/open_api/v1.3/segment/mapping/", json=body, headers={"Idempotency-Key": idempotency_key}
            )
        return BatchResult(rejected=rejected, received=len(batch))

    def size(self) -> int | None:
        s = self.settings
        resp = self.client.request(
            "GET",
            "/open_api/v1.3/dmp/custom_audience/get/",
            params={"advertiser_id": s.advertiser_id, "custom_audience_ids": f'["{s.segment_id}"]'},
        )
        found = resp.json().get("data", {}).get("list", [])
        return int(found[0]["audience_details"]["cover_num"]) if found else None

    def close(self) -> None:
        self.client.close()
