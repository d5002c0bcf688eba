"""One Airflow connection type per destination, so the UI shows the right form and labels for each.

The hooks are deliberately thin: the destination classes own transport and API contract; a hook
resolves its connection and says how the connection form should look (secrets go in ``password``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseHook

from data_out.connections import ConnectionInfo
from data_out.hooks.state import connection_info


class DataOutDestinationHook(BaseHook):
    """Base: ``conn_id`` -> ``ConnectionInfo`` for a Data Out destination."""

    conn_name_attr = "conn_id"
    host_placeholder: ClassVar[str] = ""
    password_label: ClassVar[str] = "Secret"
    extra_placeholders: ClassVar[dict[str, Any]] = {}

    def __init__(self, conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id or self.default_conn_name

    def get_conn(self) -> ConnectionInfo:
        return connection_info(self.conn_id)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": cls.password_label},
            "placeholders": {"host": cls.host_placeholder, "extra": str(cls.extra_placeholders or "{}")},
        }


_RETRY_EXTRAS = {"timeout": 30, "max_attempts": 5, "backoff_initial": 1, "max_retry_after": 300}


class MetaHook(DataOutDestinationHook):
    default_conn_name = "data_out_meta"
    conn_type = "data_out_meta"
    hook_name = "Data Out: Meta Custom Audiences"
    host_placeholder = "https://graph.facebook.com"
    password_label = "System user access token"
    #: app_secret: with it every call carries appsecret_proof (apps with "Require app secret" need it)
    extra_placeholders = {"app_secret": "the app's secret (App settings > Basic)", **_RETRY_EXTRAS}


class GoogleHook(DataOutDestinationHook):
    """Google credentials renew: an OAuth client (login, password) with a refresh token, or a service
    account key (JSON) as password; access tokens are minted from them (docs/destinations/google.md)."""

    default_conn_name = "data_out_google"
    conn_type = "data_out_google"
    hook_name = "Data Out: Google Customer Match (Data Manager API)"
    host_placeholder = "https://datamanager.googleapis.com"
    password_label = "OAuth client secret, or service account key (JSON)"
    extra_placeholders = {"refresh_token": "...", "token_uri": "https://oauth2.googleapis.com/token", **_RETRY_EXTRAS}

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        behaviour = super().get_ui_field_behaviour()
        behaviour["hidden_fields"] = ["schema", "port"]
        behaviour["relabeling"]["login"] = "OAuth client id (empty with a service account key)"
        return behaviour


class GoogleAdsHook(GoogleHook):
    default_conn_name = "data_out_google_ads"
    conn_type = "data_out_google_ads"
    hook_name = "Data Out: Google Ads Customer Match (Google Ads API)"
    host_placeholder = "https://googleads.googleapis.com"
    extra_placeholders = {
        "refresh_token": "...",
        "developer_token": "...",
        "login_customer_id": "1234567890",
        **_RETRY_EXTRAS,
    }


class TikTokHook(DataOutDestinationHook):
    default_conn_name = "data_out_tiktok"
    conn_type = "data_out_tiktok"
    hook_name = "Data Out: TikTok Ads audiences"
    host_placeholder = "https://business-api.tiktok.com"
    password_label = "Access token"
    extra_placeholders = _RETRY_EXTRAS


class SegmentHook(DataOutDestinationHook):
    default_conn_name = "data_out_segment"
    conn_type = "data_out_segment"
    hook_name = "Data Out: Segment"
    host_placeholder = "https://api.segment.io"
    password_label = "Write key"
    extra_placeholders = _RETRY_EXTRAS


class WebhookHook(DataOutDestinationHook):
    default_conn_name = "data_out_webhook"
    conn_type = "data_out_webhook"
    hook_name = "Data Out: signed webhook"
    host_placeholder = "https://crm.internal.example.com"
    password_label = "Signing secret"
    extra_placeholders = _RETRY_EXTRAS


class CustomerIOHook(DataOutDestinationHook):
    """Customer.io App API (a source, not a destination; same connection shape)."""

    default_conn_name = "data_out_customerio"
    conn_type = "data_out_customerio"
    hook_name = "Data Out: Customer.io App API"
    host_placeholder = "https://api.customer.io (or extra region: eu)"
    password_label = "App API key"
    extra_placeholders = {"region": "us", "requests_per_second": 10, **_RETRY_EXTRAS}
