"""The TikTok connection type: the Access-Token header."""

from __future__ import annotations

from typing import Any

import requests

from data_out.connection_types import kind
from data_out.destinations.http import HttpClient
from data_out.destinations.http_hook import RETRY_EXTRAS, DataOutHttpHook
from data_out.destinations.tiktok.errors import classify, describe


class TikTokHook(DataOutHttpHook):
    conn_type = default_conn_name = kind("tiktok").conn_type
    hook_name = "Data Out: TikTok Ads audiences"
    vendor = "tiktok"
    host_placeholder = "https://business-api.tiktok.com"
    password_label = "Access token"
    extra_placeholders = RETRY_EXTRAS

    def authorise(self, session: requests.Session) -> None:
        session.headers["Access-Token"] = self.info.password or ""

    def client(self, **kwargs: Any) -> HttpClient:
        return super().client(**{"classify": classify, "describe_error": describe, **kwargs})

    def probe(self) -> str:
        """``GET /open_api/v1.3/user/info/``: the user the access token belongs to."""
        data = self._get("/open_api/v1.3/user/info/").json().get("data") or {}
        return f"TikTok accepted the access token (user {data.get('display_name') or data.get('core_user_id', '?')})"
