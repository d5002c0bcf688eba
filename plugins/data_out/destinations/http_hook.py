"""The base of Data Out's connection types: an ``HttpHook`` of the HTTP provider.

Each vendor's hook (``destinations/<vendor>/hook.py``, ``sources/customerio_hook.py``) subclasses it;
``connection_types.py`` names them all.

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

from data_out.connection_types import hook_for_conn_type
from data_out.connections import ConnectionInfo
from data_out.hooks.state import connection_info

if TYPE_CHECKING:
    from data_out.destinations.http import HttpClient

#: extras ``HttpHook.get_conn`` applies to the session; every other extra stays out of it (``HttpHook``
#: would send unknown extras as headers, and the extras hold ``app_secret`` and ``refresh_token``)
SESSION_EXTRAS = ("proxies", "proxy", "verify", "verify_ssl", "cert", "trust_env", "max_redirects")

RETRY_EXTRAS = {"timeout": 30, "max_attempts": 5, "backoff_initial": 1, "max_retry_after": 300}


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


def http_hook(conn: ConnectionInfo, default_base_url: str) -> DataOutHttpHook:
    """The hook of ``conn``'s type (the plain Data Out HTTP hook for any other type), built from ``conn``."""
    kind = hook_for_conn_type(conn.conn_type)
    cls: type[DataOutHttpHook] = kind.hook_class() if kind else DataOutHttpHook
    return cls(connection=conn, default_base_url=default_base_url)
