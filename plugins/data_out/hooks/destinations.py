"""One Airflow connection type per vendor, each an ``HttpHook`` of the HTTP provider.

A hook owns what the connection says: the base URL (``host``, with ``port`` and extra ``scheme``), the
credential (each vendor puts it where its API wants it: a bearer header, ``Access-Token``, Basic auth,
``appsecret_proof``, OAuth tokens minted by ``google-auth``) and the session ``HttpHook.get_conn`` builds
(TCP keep-alive, extras ``proxies``, ``verify``, ``cert``, ``trust_env``, ``max_redirects``). The retry
rules, error wording and secret masking are ``destinations.http.HttpClient``'s, which sends through the
hook's session. ``test_connection`` backs Airflow's "Test" button with one harmless call per vendor.

A hook is built from a connection id (Airflow resolves it) or from a ``ConnectionInfo`` already in hand
(``connection=``), so the destinations and their tests need no metadata database.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import requests
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import Connection

from data_out.connections import ConnectionInfo
from data_out.hooks.state import connection_info

if TYPE_CHECKING:
    from data_out.destinations.http import HttpClient

#: extras ``HttpHook.get_conn`` applies to the session; every other extra stays out of it (``HttpHook``
#: would send unknown extras as headers, and the extras hold ``app_secret`` and ``refresh_token``)
SESSION_EXTRAS = ("proxies", "proxy", "verify", "verify_ssl", "cert", "trust_env", "max_redirects")

_RETRY_EXTRAS = {"timeout": 30, "max_attempts": 5, "backoff_initial": 1, "max_retry_after": 300}


class DataOutHttpHook(HttpHook):
    """Base of the Data Out connection types: session, base URL and credential from the connection."""

    conn_name_attr = "conn_id"
    default_conn_name = "data_out_http"
    conn_type = "data_out_http"
    hook_name = "Data Out: HTTP"
    #: the vendor this hook speaks for, in messages
    vendor: ClassVar[str] = "http"
    host_placeholder: ClassVar[str] = ""
    password_label: ClassVar[str] = "Secret"
    extra_placeholders: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        connection: ConnectionInfo | None = None,
        default_base_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        conn_id = conn_id or (connection.conn_id if connection else None) or self.default_conn_name
        super().__init__(http_conn_id=conn_id, **kwargs)
        self.conn_id = conn_id
        self._info = connection
        self._default_base_url = default_base_url

    def default_base_url(self) -> str:
        """The vendor's API when the connection names no host."""
        return self._default_base_url or self.host_placeholder

    @property
    def info(self) -> ConnectionInfo:
        """The connection as plain data, resolved from Airflow once (secrets registered for masking)."""
        if self._info is None:
            self._info = connection_info(self.conn_id)
        return self._info

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]  # a classmethod in BaseHook
        """What ``HttpHook`` builds its session and base URL from: host, port and scheme, and the
        session extras only. The credential is applied by ``authorise``, never as ``HttpHook``'s Basic
        auth from ``login`` (Google's ``login`` is an OAuth client id)."""
        info = self.info
        self.default_host = self.default_base_url()
        extra = {k: v for k, v in info.extra.items() if k in SESSION_EXTRAS}
        return Connection(
            conn_id=info.conn_id,
            conn_type=info.conn_type or self.conn_type,
            host=info.host or None,
            port=info.port if info.host else None,
            schema=str(info.extra.get("scheme") or "https"),
            extra=json.dumps(extra) if extra else None,
        )

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Any:
        """``HttpHook``'s session, made one that refuses cross-host redirects, with the vendor's credential."""
        from data_out.destinations.http import ApiSession

        session = ApiSession.adopt(super().get_conn(headers=None, extra_options=extra_options))
        self.authorise(session)
        if headers:
            session.headers.update(headers)
        return session

    def authorise(self, session: requests.Session) -> None:
        """Put the connection's credential on ``session``: each vendor where its API wants it."""

    def client(self, **kwargs: Any) -> HttpClient:
        """An ``HttpClient`` sending through this hook (the destinations' transport)."""
        from data_out.destinations.http import HttpClient

        return HttpClient(self.vendor, self.info, hook=self, **kwargs)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: one call that reads and changes nothing. Any failure is the message."""
        from data_out.destinations.base import DestinationError

        try:
            return True, self.probe()
        except DestinationError as exc:
            return False, str(exc)
        except (ValueError, OSError) as exc:  # a missing connection, a malformed key: their own message
            return False, f"{self.vendor}: {exc}"

    def probe(self) -> str:
        """Make the test call; return what was confirmed, or raise ``DestinationError``."""
        raise NotImplementedError

    def _get(self, path: str, **kwargs: Any) -> requests.Response:
        client = self.client(**kwargs.pop("client", {}))
        try:
            return client.request("GET", path, **kwargs)
        finally:
            client.close()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": cls.password_label},
            "placeholders": {"host": cls.host_placeholder, "extra": str(cls.extra_placeholders or "{}")},
        }


class MetaHook(DataOutHttpHook):
    default_conn_name = "data_out_meta"
    conn_type = "data_out_meta"
    hook_name = "Data Out: Meta Custom Audiences"
    vendor = "meta"
    host_placeholder = "https://graph.facebook.com"
    password_label = "System user access token"
    #: app_secret: with it every call carries appsecret_proof (apps with "Require app secret" need it)
    extra_placeholders = {"app_secret": "the app's secret (App settings > Basic)", **_RETRY_EXTRAS}

    def authorise(self, session: requests.Session) -> None:
        from data_out.destinations.meta.destination import appsecret_proof

        token = self.info.password or ""
        session.headers["Authorization"] = f"Bearer {token}"
        proof = appsecret_proof(token, self.info.extra.get("app_secret"))
        if proof:
            session.params = {"appsecret_proof": proof}  # on every call, as Meta's SDK does

    def client(self, **kwargs: Any) -> HttpClient:
        from data_out.destinations.meta.destination import classify, describe

        return super().client(**{"classify": classify, "describe_error": describe, **kwargs})

    def probe(self) -> str:
        """``GET /{version}/me``: the token's own node, which every valid token can read."""
        from data_out.destinations.meta.versions import DEFAULT_API_VERSION

        body = self._get(f"/{DEFAULT_API_VERSION}/me", params={"fields": "id,name"}).json()
        return f"Meta accepted the token (user {body.get('name') or body.get('id', '?')})"


class GoogleHook(DataOutHttpHook):
    """Google credentials renew: an OAuth client (login, password) with a refresh token, or a service
    account key (JSON) as password; access tokens are minted from them (docs/destinations/google.md)."""

    default_conn_name = "data_out_google"
    conn_type = "data_out_google"
    hook_name = "Data Out: Google Customer Match (Data Manager API)"
    vendor = "google"
    #: the OAuth scope access tokens are minted for
    scope: ClassVar[str] = "https://www.googleapis.com/auth/datamanager"
    host_placeholder = "https://datamanager.googleapis.com"
    password_label = "OAuth client secret, or service account key (JSON)"
    extra_placeholders = {"refresh_token": "...", "token_uri": "https://oauth2.googleapis.com/token", **_RETRY_EXTRAS}

    def authorise(self, session: requests.Session) -> None:
        from data_out.destinations.google.auth import GoogleTokenAuth

        session.auth = GoogleTokenAuth(self.vendor, self.info, [self.scope], self.default_base_url())

    def client(self, **kwargs: Any) -> HttpClient:
        from data_out.destinations.google.destination import describe_google_error

        return super().client(**{"describe_error": describe_google_error, **kwargs})

    def probe(self) -> str:
        """Mint an access token: the token endpoint checks the credential, no API call is made."""
        from data_out.destinations.google.auth import GoogleTokenAuth

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


class GoogleAdsHook(GoogleHook):
    default_conn_name = "data_out_google_ads"
    conn_type = "data_out_google_ads"
    hook_name = "Data Out: Google Ads Customer Match (Google Ads API)"
    vendor = "google_ads"
    scope = "https://www.googleapis.com/auth/adwords"
    host_placeholder = "https://googleads.googleapis.com"
    extra_placeholders = {
        "refresh_token": "...",
        "developer_token": "...",
        "login_customer_id": "1234567890",
        **_RETRY_EXTRAS,
    }

    def authorise(self, session: requests.Session) -> None:
        super().authorise(session)
        extra = self.info.extra
        session.headers["developer-token"] = str(extra.get("developer_token", ""))
        if extra.get("login_customer_id"):
            session.headers["login-customer-id"] = str(extra["login_customer_id"])


class TikTokHook(DataOutHttpHook):
    default_conn_name = "data_out_tiktok"
    conn_type = "data_out_tiktok"
    hook_name = "Data Out: TikTok Ads audiences"
    vendor = "tiktok"
    host_placeholder = "https://business-api.tiktok.com"
    password_label = "Access token"
    extra_placeholders = _RETRY_EXTRAS

    def authorise(self, session: requests.Session) -> None:
        session.headers["Access-Token"] = self.info.password or ""

    def client(self, **kwargs: Any) -> HttpClient:
        from data_out.destinations.tiktok.destination import _describe, classify

        return super().client(**{"classify": classify, "describe_error": _describe, **kwargs})

    def probe(self) -> str:
        """``GET /open_api/v1.3/user/info/``: the user the access token belongs to."""
        data = self._get("/open_api/v1.3/user/info/").json().get("data") or {}
        return f"TikTok accepted the access token (user {data.get('display_name') or data.get('core_user_id', '?')})"


class SegmentHook(DataOutHttpHook):
    default_conn_name = "data_out_segment"
    conn_type = "data_out_segment"
    hook_name = "Data Out: Segment"
    vendor = "segment"
    host_placeholder = "https://api.segment.io"
    password_label = "Write key"
    extra_placeholders = _RETRY_EXTRAS

    def authorise(self, session: requests.Session) -> None:
        session.auth = (self.info.password or "", "")  # Segment: the write key as Basic auth user

    def test_connection(self) -> tuple[bool, str]:
        """Segment's Tracking API has no call that reads, and it answers 200 to a write key it does not
        know: the only test is an event, which would land in the source. So the button says so."""
        problem = "" if (self.info.password or "").strip() else " The connection has no write key (password)."
        return False, (
            "segment: cannot be tested without sending an event: Segment's Tracking API has no read call and "
            "accepts events for any write key. Check the write key in Segment (Connections > Sources > the source "
            f"> Settings > API Keys) and watch the source's debugger after the first sync.{problem}"
        )


class WebhookHook(DataOutHttpHook):
    default_conn_name = "data_out_webhook"
    conn_type = "data_out_webhook"
    hook_name = "Data Out: signed webhook"
    vendor = "webhook"
    host_placeholder = "https://crm.internal.example.com"
    password_label = "Signing secret"
    extra_placeholders = _RETRY_EXTRAS

    def probe(self) -> str:
        """A signed ``{"kind": "ping"}`` POST to the base URL (docs/webhooks.md): the receiver checks the
        signature as for a batch and answers 2xx; a 401 means the signing secrets differ."""
        from data_out.destinations.webhook.destination import fresh_signature, signing_secret

        secret = signing_secret(self.info)
        body = json.dumps({"kind": "ping"}, separators=(",", ":")).encode()
        client = self.client()
        try:
            client.request(
                "POST",
                "/",
                data=body,
                headers={"Content-Type": "application/json"},
                attempt_headers=fresh_signature(secret, body),
            )
        finally:
            client.close()
        return "webhook: the receiver accepted a signed ping"


class CustomerIOHook(DataOutHttpHook):
    """Customer.io App API (a source, not a destination; same connection shape)."""

    default_conn_name = "data_out_customerio"
    conn_type = "data_out_customerio"
    hook_name = "Data Out: Customer.io App API"
    vendor = "customerio"
    host_placeholder = "https://api.customer.io (or extra region: eu)"
    password_label = "App API key"
    extra_placeholders = {"region": "us", "requests_per_second": 10, **_RETRY_EXTRAS}

    def default_base_url(self) -> str:
        """Extra ``region`` (us, eu) picks Customer.io's API host."""
        from data_out.sources.customerio import REGIONS

        region = str(self.info.extra.get("region", "us")).lower()
        return self._default_base_url or REGIONS.get(region, REGIONS["us"])

    def authorise(self, session: requests.Session) -> None:
        session.headers["Authorization"] = f"Bearer {self.info.password or ''}"

    def probe(self) -> str:
        """``GET /v1/segments``: the workspace's segments, readable by any App API key."""
        segments = self._get("/v1/segments").json().get("segments") or []
        return f"Customer.io accepted the App API key ({len(segments)} segments in the workspace)"


#: connection type -> hook class
HOOKS: dict[str, type[DataOutHttpHook]] = {
    h.conn_type: h for h in (MetaHook, GoogleHook, GoogleAdsHook, TikTokHook, SegmentHook, WebhookHook, CustomerIOHook)
}


def http_hook(conn: ConnectionInfo, default_base_url: str) -> DataOutHttpHook:
    """The hook of ``conn``'s type (the plain Data Out HTTP hook for any other type), built from ``conn``."""
    cls = HOOKS.get((conn.conn_type or "").lower(), DataOutHttpHook)
    return cls(connection=conn, default_base_url=default_base_url)
