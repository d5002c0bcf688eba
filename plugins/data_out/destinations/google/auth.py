"""OAuth for Google's APIs: access tokens minted and renewed by ``google-auth``, never stored.

A Google connection holds a credential that lasts, one of:

* ``password``: a JSON key as Google hands it out, either a service account key
  (``{"type": "service_account", "client_email": ..., "private_key": ...}``) or an OAuth user
  credential (``{"type": "authorized_user", "client_id": ..., "client_secret": ..., "refresh_token": ...}``);
* extra ``service_account``: the same service account key (JSON object or string);
* ``login`` the OAuth client id, ``password`` the client secret and extra ``refresh_token``.

Optional extras: ``token_uri`` (the token endpoint; an absolute URL, or a path on the connection's
``host``; default Google's), ``subject`` (a user a service account with domain-wide delegation acts as).

Access tokens live about an hour. They are minted on first use, renewed shortly before they expire, and
once more when the API answers 401 (a token revoked or expired early); a second 401 is a terminal error
that names the credential to fix.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin

import google.auth.exceptions
import requests
from google.auth.credentials import Credentials
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from data_out.connections import ConnectionInfo
from data_out.destinations.base import DestinationError
from data_out.destinations.http import ApiSession, RefreshableAuth, base_url
from data_out.errors import ConfigurationError
from data_out.redact import scrub

log = logging.getLogger(__name__)

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


class GoogleCredentialError(ConfigurationError, ValueError):
    """The connection holds no usable Google credential; the message says what to set."""


def token_uri(conn: ConnectionInfo, default_base_url: str) -> str:
    """The token endpoint: extra ``token_uri``, resolved against the connection's host when it is a path."""
    value = str(conn.extra.get("token_uri") or GOOGLE_TOKEN_URI)
    if "://" in value:
        return value
    return urljoin(base_url(conn, default_base_url).rstrip("/") + "/", value.lstrip("/"))


def _json_key(conn: ConnectionInfo) -> dict[str, Any] | None:
    raw: Any = conn.extra.get("service_account")
    if raw is None and (conn.password or "").lstrip().startswith("{"):
        raw = conn.password
    if raw is None:
        return None
    if isinstance(raw, dict):
        return dict(raw)
    try:
        info = json.loads(raw)
    except ValueError:
        raise GoogleCredentialError(
            f"connection {conn.conn_id!r}: the JSON key is not valid JSON; paste the key file Google gave you as it is"
        ) from None
    if not isinstance(info, dict):
        raise GoogleCredentialError(f"connection {conn.conn_id!r}: the JSON key must be a JSON object")
    return info


def build_credentials(conn: ConnectionInfo, scopes: Sequence[str], default_base_url: str) -> tuple[Credentials, str]:
    """google-auth credentials for the connection, and a description of the credential for error messages."""
    uri = token_uri(conn, default_base_url)
    info = _json_key(conn)
    where = f"connection {conn.conn_id!r}"
    try:
        if info is not None and info.get("type") == "service_account":
            info["token_uri"] = uri
            creds: Credentials = service_account.Credentials.from_service_account_info(
                info, scopes=list(scopes), subject=conn.extra.get("subject") or None
            )
            return creds, f"the service account key of {where} ({info.get('client_email', '?')})"
        if info is not None and info.get("type") == "authorized_user":
            fields = {k: info.get(k) for k in ("client_id", "client_secret", "refresh_token")}
            what = f"the refresh token in the JSON credential of {where}"
        elif info is not None:
            raise GoogleCredentialError(
                f"{where}: the JSON key has type {info.get('type')!r}; expected 'service_account' or 'authorized_user'"
            )
        else:
            fields = {
                "client_id": conn.login,
                "client_secret": conn.password,
                "refresh_token": conn.extra.get("refresh_token"),
            }
            what = f"the refresh token (extra refresh_token) and OAuth client (login, password) of {where}"
        missing = [k for k, v in fields.items() if not v]
        if missing:
            raise GoogleCredentialError(
                f"{where}: no usable Google credential ({', '.join(missing)} missing). Set the OAuth client id as "
                "login, its secret as password and extra refresh_token, or paste a service account key (JSON) "
                "as password"
            )
        return user_credentials.Credentials(None, token_uri=uri, **fields), what
    except (ValueError, KeyError) as exc:
        if isinstance(exc, GoogleCredentialError):
            raise
        raise GoogleCredentialError(f"{where}: the service account key is incomplete ({type(exc).__name__})") from None


class GoogleTokenAuth(RefreshableAuth):
    """Bearer auth for ``requests`` from google-auth credentials, renewed before expiry and on a 401."""

    def __init__(self, vendor: str, conn: ConnectionInfo, scopes: Sequence[str], default_base_url: str) -> None:
        self.vendor = vendor
        try:
            self.credentials, self.credential = build_credentials(conn, scopes, default_base_url)
        except GoogleCredentialError as exc:
            raise DestinationError(f"{vendor}: {exc}", retryable=False) from None
        self._session = ApiSession()  # a redirect elsewhere would resend the refresh token or key assertion
        self._request = GoogleRequest(self._session)
        self._lock = threading.Lock()
        self.refreshes = 0  # tokens minted, for tests and run logs

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        with self._lock:
            if not self.credentials.valid:
                self._refresh_locked()
            token = self.credentials.token
        r.headers["Authorization"] = f"Bearer {token}"
        return r

    def refresh(self) -> None:
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            self.credentials.refresh(self._request)
        except google.auth.exceptions.RefreshError as exc:
            reason = _reason(exc)
            if getattr(exc, "retryable", False):
                raise DestinationError(
                    f"{self.vendor}: the token endpoint failed ({reason}); will retry", retryable=True
                ) from None
            raise DestinationError(
                f"{self.vendor}: the token endpoint refused {self.credential}: {reason}. Fix that credential "
                "(a revoked or expired refresh token needs a new consent; a deleted service account key a new key)",
                retryable=False,
            ) from None
        except google.auth.exceptions.TransportError as exc:
            raise DestinationError(
                f"{self.vendor}: could not reach the token endpoint ({type(exc).__name__}); will retry",
                retryable=True,
            ) from None
        self.refreshes += 1
        log.info("%s: minted an access token from %s", self.vendor, self.credential)

    def refused(self, message: str) -> DestinationError:
        return DestinationError(
            f"{message}. A freshly minted access token was refused too: check {self.credential} (its Google "
            "account or service account needs access to the account, and the API enabled in its Cloud project)",
            retryable=False,
        )

    def close(self) -> None:
        self._session.close()


def _reason(exc: google.auth.exceptions.RefreshError) -> str:
    """The token endpoint's error code and description, never the request (it carries the secrets)."""
    details = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    if details.get("error"):
        return scrub(f"{details['error']}: {details.get('error_description', '')}".strip(": "))
    return scrub(str(exc.args[0]) if exc.args else type(exc).__name__)[:300]
