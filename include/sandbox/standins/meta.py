"""Meta Custom Audiences stand-in (Graph API ``/{version}/{audience_id}/users`` and ``usersreplace``).

Enforces: a Marketing API version Meta still serves (an expired one answers error #2635, an unknown
one is refused), bearer token, ``appsecret_proof`` when the app has "Require app secret" on
(``require_app_secret``), form-encoded ``payload`` JSON with ``schema`` and ``data``, known schema keys,
rows as long as the schema, SHA-256 hex for hashed keys (EXTERN_ID and MADID unhashed), at most 10,000
rows a request, Meta's error envelope ({"error": {"code", "error_subcode", "message"}}) including the
rate-limit code 80004 and the blocked-audience error, replace sessions, approximate counts.

Requests sent twice are applied twice, as Meta does (it ignores ``Idempotency-Key``): audiences are sets,
so a repeated add or remove changes nothing. A ``usersreplace`` session is stricter: Meta documents its
batches as numbered from 1 by ``batch_seq`` and says nothing of a batch sent again, so this stand-in
takes the strictest reading and refuses a ``batch_seq`` the session already has, and any batch of a
session that already finished; the client must open a new session instead of re-sending one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import Any

from sandbox.standins.base import HttpError, Request, Response, StandIn, bearer, require_hex64

MAX_ROWS = 10_000
KEYS = {
    "EMAIL",
    "PHONE",
    "EXTERN_ID",
    "FN",
    "LN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "COUNTRY",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "MADID",
}
UNHASHED = {"EXTERN_ID", "MADID"}
BLOCKED_SUBCODE = 1713230
#: expiration dates, Meta's "Marketing API version history" (None: "TBD"); kept apart from the client's
#: copy on purpose, so the two are checked against each other rather than sharing one mistake
VERSIONS: dict[str, dt.date | None] = {
    "v21.0": dt.date(2025, 9, 9),
    "v22.0": dt.date(2026, 2, 19),
    "v23.0": dt.date(2026, 6, 9),
    "v24.0": dt.date(2026, 11, 10),
    "v25.0": dt.date(2027, 2, 23),
    "v26.0": None,
    "v27.0": None,
}
LATEST = "v27.0"


def params(req: Request) -> dict[str, list[str]]:
    """Graph API parameters: the query string and a form-encoded body alike (Meta's SDK sends a DELETE's
    parameters, payload included, in the query string and a POST's in the body)."""
    return {**req.query, **req.form}


def meta_error(
    code: int, message: str, subcode: int | None = None, status: int = 400, kind: str = "OAuthException"
) -> HttpError:
    err: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": "standin"}
    if subcode:
        err["error_subcode"] = subcode
    return HttpError(status, {"error": err})


class MetaStandIn(StandIn):
    name = "meta"
    rate_per_second = 200.0
    burst = 50
    persistent = ("audiences",)

    def __init__(
        self,
        token: str = "meta-test-token",
        auto_create: bool = True,
        app_secret: str = "meta-app-secret",
        require_app_secret: bool = False,
    ) -> None:
        self.token = token
        self.auto_create = auto_create
        self.app_secret = app_secret
        self.require_app_secret = require_app_secret  # the app setting "Require app secret"
        self.today: Callable[[], dt.date] = dt.date.today
        self.finished: set[tuple[str, int]] = set()  # replace sessions whose last batch arrived
        self.audiences: dict[str, set[tuple[str, ...]]] = {}
        self.blocked: set[str] = set()
        self.invalid_hashes: set[str] = set()  # received but not matchable: counted in num_invalid_entries
        self.sessions: dict[tuple[str, int], dict[str, Any]] = {}
        super().__init__()

    def setup_routes(self) -> None:
        v = r"/v\d+\.\d+"
        self.route("GET", f"{v}/me", self.me)  # before the audience read, which would take "me" for an id
        self.route("POST", f"{v}/(?P<aud>[\\w-]+)/users", self.add)
        self.route("DELETE", f"{v}/(?P<aud>[\\w-]+)/users", self.remove)
        self.route("POST", f"{v}/(?P<aud>[\\w-]+)/usersreplace", self.replace)
        self.route("GET", f"{v}/(?P<aud>[\\w-]+)", self.read)

    def check_auth(self, req: Request) -> None:
        self._check_version(req.path)
        token = params(req).get("access_token")  # Meta takes the token as a parameter too (its SDK does)
        if not (token and hmac.compare_digest(token[0], self.token)):
            try:
                bearer(req, self.token)
            except HttpError:
                raise meta_error(190, "Invalid OAuth 2.0 Access Token", status=401) from None
        if self.require_app_secret:
            self._check_proof(req)

    def _check_version(self, path: str) -> None:
        version = path.split("/")[1]
        if version not in VERSIONS:
            raise meta_error(2635, f"(#2635) Unknown version {version}. Please use a version up to {LATEST}.")
        until = VERSIONS[version]
        if until is not None and self.today() >= until:
            raise meta_error(
                2635,
                f"(#2635) You are calling a deprecated version of the Ads API. "
                f"Please update to the latest version: {LATEST}.",
            )

    def _check_proof(self, req: Request) -> None:
        """Meta takes ``appsecret_proof`` as a query or form parameter, as its SDK sends it."""
        given = params(req).get("appsecret_proof")
        if not given:
            raise meta_error(
                100, "API calls from the server require an appsecret_proof argument", kind="GraphMethodException"
            )
        want = hmac.new(self.app_secret.encode(), self.token.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given[0], want):
            raise meta_error(100, "Invalid appsecret_proof provided in the API argument", kind="GraphMethodException")

    def rate_limited(self) -> Response:
        return meta_error(80004, "There have been too many calls to this ad-account.").response

    def server_error(self, status: int) -> Response:
        if status == 429:
            return self.rate_limited()
        return meta_error(2, "Service temporarily unavailable", status=status).response

    def _audience(self, aud: str) -> set[tuple[str, ...]]:
        if aud in self.blocked:
            raise meta_error(
                100, "This audience is blocked from updates (it may be in use by a policy review).", BLOCKED_SUBCODE
            )
        if aud not in self.audiences:
            if not self.auto_create:
                raise meta_error(100, f"Unsupported post request. Object with ID '{aud}' does not exist")
            self.audiences[aud] = set()
        return self.audiences[aud]

    def _rows(self, req: Request) -> tuple[list[tuple[str, ...]], int]:
        form = params(req)
        if "payload" not in form:
            raise meta_error(100, "(#100) The parameter payload is required")
        payload = json.loads(form["payload"][0])
        schema = payload.get("schema")
        data = payload.get("data")
        if not isinstance(schema, list) or not schema or any(k not in KEYS for k in schema):
            raise meta_error(100, f"(#100) Invalid schema {schema!r}")
        if not isinstance(data, list) or not data:
            raise meta_error(100, "(#100) data must be a non-empty list")
        if len(data) > MAX_ROWS:
            raise meta_error(100, f"(#100) At most {MAX_ROWS} users can be sent in one request")
        rows, invalid = [], 0
        for row in data:
            if not isinstance(row, list) or len(row) != len(schema):
                raise meta_error(100, "(#100) Each data row must have one value per schema key")
            for key, value in zip(schema, row, strict=True):
                if value and key not in UNHASHED:
                    require_hex64(value, key)  # raises 400 as Meta does for unhashed PII
            if not any(row) or any(v in self.invalid_hashes for v in row):
                invalid += 1
                continue
            rows.append(tuple(f"{k}={v}" for k, v in zip(schema, row, strict=True) if v))
        return rows, invalid

    def _answer(self, aud: str, received: int, invalid: int, session_id: int = 0) -> Response:
        return Response(
            200,
            {
                "audience_id": aud,
                "session_id": session_id,
                "num_received": received,
                "num_invalid_entries": invalid,
                "invalid_entry_samples": {},
            },
        )

    def add(self, req: Request, m: re.Match[str]) -> Response:
        members = self._audience(m["aud"])
        rows, invalid = self._rows(req)
        members.update(rows)
        return self._answer(m["aud"], len(rows) + invalid, invalid)

    def remove(self, req: Request, m: re.Match[str]) -> Response:
        members = self._audience(m["aud"])
        rows, invalid = self._rows(req)
        members.difference_update(rows)
        return self._answer(m["aud"], len(rows) + invalid, invalid)

    def replace(self, req: Request, m: re.Match[str]) -> Response:
        aud = m["aud"]
        self._audience(aud)
        session = json.loads(params(req)["session"][0])
        sid, seq = int(session["session_id"]), int(session["batch_seq"])
        rows, invalid = self._rows(req)
        if (aud, sid) in self.finished:
            raise meta_error(100, f"(#100) Replace session {sid} has already finished")
        state = self.sessions.setdefault((aud, sid), {"next": 1, "rows": set()})
        if seq < state["next"]:
            raise meta_error(100, f"(#100) batch_seq {seq} was already received in session {sid}")
        if seq != state["next"]:
            raise meta_error(100, f"(#100) batch_seq {seq} out of order, expected {state['next']}")
        state["rows"].update(rows)
        state["next"] += 1
        if session.get("last_batch_flag"):
            self.audiences[aud] = set(state["rows"])
            del self.sessions[(aud, sid)]
            self.finished.add((aud, sid))
        return self._answer(aud, len(rows) + invalid, invalid, sid)

    def me(self, req: Request, m: re.Match[str]) -> Response:
        """The token's own node (``GET /me``): a system user's id and name, as Graph API answers."""
        return Response(200, {"id": "100000000000001", "name": "Data Out system user"})

    def read(self, req: Request, m: re.Match[str]) -> Response:
        n = len(self._audience(m["aud"]))
        return Response(200, {"id": m["aud"], "approximate_count_lower_bound": n, "approximate_count_upper_bound": n})

    def state(self) -> Any:
        return {aud: sorted(list(r) for r in rows) for aud, rows in self.audiences.items()}

    def reset_state(self) -> None:
        self.audiences.clear()
        self.blocked.clear()
        self.invalid_hashes.clear()
        self.sessions.clear()
        self.finished.clear()

    def admin(self, req: Request, action: str) -> Response:
        body = req.json() or {}
        if action == "drop_members":  # members lost behind the product's back
            members = self.audiences.get(body["audience_id"], set())
            for row in sorted(members)[: int(body.get("count", 1))]:
                members.discard(row)
            return Response(200, {"size": len(members)})
        if action == "block":
            self.blocked.add(body["audience_id"])
            return Response(200, {"ok": True})
        return super().admin(req, action)
