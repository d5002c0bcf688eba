"""The Meta connection type: bearer token and appsecret_proof on every call."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import requests

from data_out.connection_types import kind
from data_out.destinations.http import HttpClient
from data_out.destinations.http_hook import RETRY_EXTRAS, DataOutHttpHook
from data_out.destinations.meta.errors import classify, describe
from data_out.destinations.meta.versions import DEFAULT_API_VERSION


def appsecret_proof(access_token: str, app_secret: str | None) -> str | None:
    """HMAC-SHA256 of the access token keyed by the app secret, hex (Meta's "Securing Graph API
    requests"); ``None`` without a secret."""
    if not app_secret:
        return None
    return hmac.new(str(app_secret).encode(), access_token.encode(), hashlib.sha256).hexdigest()


class MetaHook(DataOutHttpHook):
    conn_type = default_conn_name = kind("meta").conn_type
    hook_name = "Data Out: Meta Custom Audiences"
    vendor = "meta"
    host_placeholder = "https://graph.facebook.com"
    password_label = "System user access token"
    #: app_secret: with it every call carries appsecret_proof (apps with "Require app secret" need it)
    extra_placeholders = {"app_secret": "the app's secret (App settings > Basic)", **RETRY_EXTRAS}

    def authorise(self, session: requests.Session) -> None:
        token = self.info.password or ""
        session.headers["Authorization"] = f"Bearer {token}"
        proof = appsecret_proof(token, self.info.extra.get("app_secret"))
        if proof:
            session.params = {"appsecret_proof": proof}  # on every call, as Meta's SDK does

    def client(self, **kwargs: Any) -> HttpClient:
        return super().client(**{"classify": classify, "describe_error": describe, **kwargs})

    def probe(self) -> str:
        """``GET /{version}/me``: the token's own node, which every valid token can read."""
        body = self._get(f"/{DEFAULT_API_VERSION}/me", params={"fields": "id,name"}).json()
        return f"Meta accepted the token (user {body.get('name') or body.get('id', '?')})"
