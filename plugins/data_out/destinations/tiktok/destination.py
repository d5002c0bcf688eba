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
from typing import Any, Literal

import requests
from pydantic import Field

from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationSettings, MemberRow, Op
from data_out.destinations.http import HttpClient, Verdict, default_classify

RETRY_CODES = {40100, 40016}

IdKind = Literal["EMAIL_SHA256", "PHONE_SHA256"]
_DEFAULT_ID_SCHEMA: list[IdKind] = ["EMAIL_SHA256", "PHONE_SHA256"]


class TikTokSettings(DestinationSettings):
    type: Literal["tiktok"]
    advertiser_id: str = Field(pattern=r"^\d+$")
    segment_id: str = Field(pattern=r"^\w+$")
    id_schema: list[IdKind] = Field(default_factory=lambda: _DEFAULT_ID_SCHEMA.copy(), min_length=1)
    phone_format: Literal["e164", "digits"] = Field(
        "e164",
        description="hash the phone as E.164 with its + (e164) or as digits with the country code and no + "
        "(digits); TikTok's help pages name both, see docs/decisions/identity.md",
    )


def _code(resp: requests.Response) -> int | None:
    try:
        return int(resp.json().get("code"))
    except (ValueError, TypeError, AttributeError):
        return None


def classify(resp: requests.Response) -> Verdict:
    if resp.status_code >= 300:
        return default_classify(resp)
    code = _code(resp)
    if code == 0:
        return Verdict.OK
    return Verdict.RETRY if code in RETRY_CODES or (code or 0) >= 50000 else Verdict.FATAL


def _describe(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return f"code {body.get('code')}: {body.get('message')}"
    except ValueError:
        return resp.text[:300]


@register
class TikTokDestination(Destination):
    type_name = "tiktok"
    pool = "data_out_tiktok"  # see deploy/pools.json
    settings_model = TikTokSettings
    default_conn_id = "data_out_tiktok"
    max_batch_rows = 10_000
    # ``cover_num`` counts the audience once TikTok has processed uploads, asynchronously, not on acceptance
    reported_size_is_live = False

    settings: TikTokSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        from data_out.hooks.destinations import TikTokHook  # the Access-Token header from the connection

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
