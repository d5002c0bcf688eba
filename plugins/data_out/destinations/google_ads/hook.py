"""The Google Ads connection type: the Data Manager credential plus developer-token and login-customer-id."""

from __future__ import annotations

import requests

from data_out.connection_types import kind
from data_out.destinations.google.hook import GoogleHook
from data_out.destinations.http_hook import RETRY_EXTRAS


class GoogleAdsHook(GoogleHook):
    conn_type = default_conn_name = kind("google_ads").conn_type
    hook_name = "Data Out: Google Ads Customer Match (Google Ads API)"
    vendor = "google_ads"
    scope = "https://www.googleapis.com/auth/adwords"
    host_placeholder = "https://googleads.googleapis.com"
    extra_placeholders = {
        "refresh_token": "...",
        "developer_token": "...",
        "login_customer_id": "1234567890",
        **RETRY_EXTRAS,
    }

    def authorise(self, session: requests.Session) -> None:
        super().authorise(session)
        extra = self.info.extra
        session.headers["developer-token"] = str(extra.get("developer_token", ""))
        if extra.get("login_customer_id"):
            session.headers["login-customer-id"] = str(extra["login_customer_id"])
