"""Google's OAuth 2.0 token endpoint and bearer-token checks, shared by the Google stand-ins.

``POST /token`` (form-encoded, RFC 6749 as Google runs it) grants access tokens two ways:

* ``grant_type=refresh_token`` with ``client_id``, ``client_secret`` and ``refresh_token``;
* ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with an ``assertion``: a JWT signed RS256 by
  a registered service account key, ``iss`` its email, ``aud`` Google's token endpoint (what google-auth
  and Google's docs put there, wherever the request is sent), ``scope`` the scopes asked for,
  ``iat``/``exp`` at most an hour apart.

Access tokens expire after ``token_ttl`` seconds; ``expire_tokens`` revokes every token at once (an
early expiry the client cannot see coming). Errors use Google's shapes: ``{"error": "invalid_grant",
"error_description": ...}`` from the token endpoint, 401 ``UNAUTHENTICATED`` from the API.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt

from sandbox.standins.base import HttpError, Request, Response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
#: what the demo's and the tests' connections carry
CLIENT_ID = "standin-client.apps.googleusercontent.com"
CLIENT_SECRET = "standin-client-secret"
REFRESH_TOKEN = "standin-refresh-token"


def oauth_error(status: int, error: str, description: str) -> HttpError:
    return HttpError(status, {"error": error, "error_description": description})


@dataclass
class TokenIssuer:
    """Refresh tokens and service account keys it honours, and the access tokens it has issued."""

    scope: str
    token_ttl: float = 3600.0
    clients: dict[str, str] = field(default_factory=lambda: {CLIENT_ID: CLIENT_SECRET})
    refresh_tokens: dict[str, str] = field(default_factory=lambda: {REFRESH_TOKEN: CLIENT_ID})
    service_accounts: dict[str, Any] = field(default_factory=dict)  # client_email -> public key (PEM)
    issued: dict[str, float] = field(default_factory=dict)  # access token -> expiry (monotonic)
    grants: list[str] = field(default_factory=list)  # grant types served, in order

    def token(self, req: Request) -> Response:
        if req.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            raise oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8"), strict_parsing=True).items()}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            client = form.get("client_id", "")
            if self.clients.get(client) != form.get("client_secret") or not client:
                raise oauth_error(401, "invalid_client", "The OAuth client was not found.")
            if self.refresh_tokens.get(form.get("refresh_token", "")) != client:
                raise oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        elif grant == JWT_BEARER:
            self._check_assertion(form.get("assertion", ""))
        else:
            raise oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")
        self.grants.append(grant)
        access = "ya29.standin-" + secrets.token_urlsafe(24)
        self.issued[access] = time.monotonic() + self.token_ttl
        body: dict[str, Any] = {"access_token": access, "expires_in": int(self.token_ttl), "token_type": "Bearer"}
        if grant == "refresh_token":
            body["scope"] = self.scope
        return Response(200, body)

    def _check_assertion(self, assertion: str) -> None:
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            key = self.service_accounts.get(str(claims.get("iss")))
            if key is None:
                raise oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
            claims = jwt.decode(
                assertion, key, algorithms=["RS256"], audience=TOKEN_AUDIENCE, options={"require": ["iat", "exp"]}
            )
        except jwt.InvalidAudienceError:
            raise oauth_error(400, "invalid_grant", "Invalid JWT: audience is not the token endpoint.") from None
        except jwt.ExpiredSignatureError:
            raise oauth_error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token.") from None
        except jwt.PyJWTError:
            raise oauth_error(400, "invalid_grant", "Invalid JWT Signature.") from None
        if claims["exp"] - claims["iat"] > 3600:
            raise oauth_error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes).")
        if self.scope not in str(claims.get("scope", "")).split():
            raise oauth_error(400, "invalid_scope", f"the assertion does not ask for {self.scope}")

    def check(self, req: Request) -> None:
        """Raise Google's 401 unless the request carries a live access token this issuer minted."""
        value = req.headers.get("authorization", "")
        expiry = self.issued.get(value.removeprefix("Bearer ")) if value.startswith("Bearer ") else None
        if expiry is None or expiry <= time.monotonic():
            raise HttpError(
                401,
                {
                    "error": {
                        "code": 401,
                        "message": "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                        "status": "UNAUTHENTICATED",
                    }
                },
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )

    def expire_tokens(self) -> None:
        self.issued.clear()
