"""The Google Data Manager connection type: access tokens minted from the connection's credential."""

from __future__ import annotations

from typing import Any, ClassVar

import requests

from data_out.connection_types import kind
from data_out.destinations.google.auth import GoogleTokenAuth
from data_out.destinations.google.errors import describe_google_error
from data_out.destinations.http import HttpClient
from data_out.destinations.http_hook import RETRY_EXTRAS, DataOutHttpHook


class GoogleHook(DataOutHttpHook):
    """Google credentials renew: an OAuth client (login, password) with a refresh token, or a service
    account key (JSON) as password; access tokens are minted from them (docs/destinations/google.md)."""

    conn_type = default_conn_name = kind("google").conn_type
    hook_name = "Data Out: Google Customer Match (Data Manager API)"
    vendor = "google"
    #: the OAuth scope access tokens are minted for
    scope: ClassVar[str] = "https://www.googleapis.com/auth/datamanager"
    host_placeholder = "https://datamanager.googleapis.com"
    password_label = "OAuth client secret, or service account key (JSON)"
    extra_placeholders = {"refresh_token": "...", "token_uri": "https://oauth2.googleapis.com/token", **RETRY_EXTRAS}

    def authorise(self, session: requests.Session) -> None:
        session.auth = GoogleTokenAuth(self.vendor, self.info, [self.scope], self.default_base_url())

    def client(self, **kwargs: Any) -> HttpClient:
        return super().client(**{"describe_error": describe_google_error, **kwargs})

    def probe(self) -> str:
        """Mint an access token: the token endpoint checks the credential, no API call is made."""
        auth = GoogleTokenAuth(self.vendor, self.info, [self.scope], self.default_base_url())
        try:
            auth.refresh()
        finally:
            auth.close()
        return f"{self.vendor}: minted an access token from {auth.credential}"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        behaviour = super().get_ui_field_behaviour()
        behaviour["hidden_fields"] = ["schema", "port"]
        behaviour["relabeling"]["login"] = "OAuth client id (empty with a service account key)"
        return behaviour
