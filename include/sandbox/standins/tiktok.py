"""TikTok Ads segment mapping stand-in (``/open_api/v1.3/segment/mapping/``).

Enforces the ``Access-Token`` header, ``advertiser_ids``, ``action`` add/delete, ``id_schema`` of
EMAIL_SHA256 / PHONE_SHA256 / IDFA / GAID, rows as long as the schema, SHA-256 hex ids and the batch size
limit. A row is positional to ``id_schema``: an identifier the member lacks is an empty object ``{}``
(as Segment's TikTok connector sends it); an entry with an ``id`` must carry a real one, so
``{"id": ""}`` is refused, and so is a row with no identifier at all. Errors come as HTTP 200 with a
non-zero ``code``, as TikTok does; 40100 means too many requests. Requests sent twice are applied twice,
as TikTok does (it ignores ``Idempotency-Key``); segments are sets, so that changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.standins.base import HEX64, HttpError, Request, Response, StandIn

MAX_ROWS = 10_000
SCHEMAS = {"EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256"}


def tiktok_error(code: int, message: str) -> HttpError:
    return HttpError(200, {"code": code, "message": message, "request_id": "standin", "data": {}})


class TikTokStandIn(StandIn):
    name = "tiktok"
    rate_per_second = 100.0
    burst = 30
    persistent = ("segments",)

    def __init__(self, token: str = "tiktok-test-token", advertiser_id: str = "7000000001") -> None:
        self.token = token
        self.advertiser_id = advertiser_id
        self.segments: dict[str, set[tuple[str, ...]]] = {}
        super().__init__()

    def setup_routes(self) -> None:
        self.route("POST", "/open_api/v1.3/segment/mapping/", self.mapping)
        self.route("GET", "/open_api/v1.3/dmp/custom_audience/get/", self.get)
        self.route("GET", "/open_api/v1.3/user/info/", self.user_info)

    def check_auth(self, req: Request) -> None:
        if req.headers.get("access-token") != self.token:
            raise tiktok_error(40105, "The access token is invalid or has expired")

    def rate_limited(self) -> Response:
        return tiktok_error(40100, "Requests made too frequently, please try again later").response

    def server_error(self, status: int) -> Response:
        return self.rate_limited() if status == 429 else Response(status, {"code": 50000, "message": "System error"})

    def mapping(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        if body.get("advertiser_ids") != [self.advertiser_id]:
            raise tiktok_error(40001, "advertiser_ids must name the advertiser of this token")
        action, schema, rows = body.get("action"), body.get("id_schema"), body.get("batch_data")
        if action not in {"add", "delete"}:
            raise tiktok_error(40002, "action must be add or delete")
        if not isinstance(schema, list) or not schema or any(s not in SCHEMAS for s in schema):
            raise tiktok_error(40002, f"invalid id_schema {schema!r}")
        if not isinstance(rows, list) or not rows or len(rows) > MAX_ROWS:
            raise tiktok_error(40002, f"batch_data must hold 1 to {MAX_ROWS} rows")
        for row in rows:
            ids, segments = _row_ids(row, schema)
            for seg in segments:
                members = self.segments.setdefault(seg, set())
                members.add(ids) if action == "add" else members.discard(ids)
        return Response(200, {"code": 0, "message": "OK", "request_id": "standin", "data": {}})

    def user_info(self, req: Request, m: re.Match[str]) -> Response:
        """The user the access token belongs to (``/user/info/``), in TikTok's envelope."""
        data = {"core_user_id": "7000000000000000001", "display_name": "Data Out", "email": None}
        return Response(200, {"code": 0, "message": "OK", "request_id": "standin", "data": data})

    def get(self, req: Request, m: re.Match[str]) -> Response:
        ids = req.query.get("custom_audience_ids", ["[]"])[0].strip("[]").replace('"', "").split(",")
        return Response(
            200,
            {
                "code": 0,
                "message": "OK",
                "data": {
                    "list": [
                        {"audience_id": i, "audience_details": {"cover_num": len(self.segments.get(i, set()))}}
                        for i in ids
                        if i
                    ]
                },
            },
        )

    def state(self) -> Any:
        return {seg: sorted(list(r) for r in rows) for seg, rows in self.segments.items()}

    def reset_state(self) -> None:
        self.segments.clear()


def _row_ids(row: Any, schema: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """One ``batch_data`` row checked as TikTok checks it: the member's ids and the audiences they map to."""
    if not isinstance(row, list) or len(row) != len(schema):
        raise tiktok_error(40002, "each batch_data row must have one entry per id_schema item")
    for entry, kind in zip(row, schema, strict=True):
        if entry == {}:
            continue  # the member has no identifier of this kind
        if not isinstance(entry.get("id"), str) or not HEX64.match(entry["id"]):
            raise tiktok_error(40002, f"{kind} id must be a lowercase SHA-256 hex digest")
        if not entry.get("audience_ids"):
            raise tiktok_error(40002, "each id needs audience_ids")
    ids = tuple(f"{k}={e['id']}" for k, e in zip(schema, row, strict=True) if e)
    if not ids:
        raise tiktok_error(40002, "a batch_data row needs at least one id")
    segs = {tuple(e["audience_ids"]) for e in row if e}
    if len(segs) > 1:
        raise tiktok_error(40002, "all ids of a row must map to the same audiences")
    return ids, next(iter(segs))
