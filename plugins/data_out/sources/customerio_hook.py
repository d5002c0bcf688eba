"""The Customer.io App API connection type: the bearer key and the region's host."""

from __future__ import annotations

import requests

from data_out.connection_types import kind
from data_out.destinations.http_hook import RETRY_EXTRAS, DataOutHttpHook


class CustomerIOHook(DataOutHttpHook):
    """Customer.io App API (a source, not a destination; same connection shape)."""

    conn_type = default_conn_name = kind("customerio").conn_type
    hook_name = "Data Out: Customer.io App API"
    vendor = "customerio"
    host_placeholder = "https://api.customer.io (or extra region: eu)"
    password_label = "App API key"
    extra_placeholders = {"region": "us", "requests_per_second": 9.5, **RETRY_EXTRAS}

    def default_base_url(self) -> str:
        """Extra ``region`` (us, eu) picks Customer.io's API host."""
        region = str(self.info.extra.get("region", "us")).lower()
        return self._default_base_url or REGIONS.get(region, REGIONS["us"])

    def authorise(self, session: requests.Session) -> None:
        session.headers["Authorization"] = f"Bearer {self.info.password or ''}"

    def probe(self) -> str:
        """``GET /v1/segments``: the workspace's segments, readable by any App API key."""
        segments = self._get("/v1/segments").json().get("segments") or []
        return f"Customer.io accepted the App API key ({len(segments)} segments in the workspace)"


REGIONS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
