"""Google Data Manager API stand-in: Customer Match audience members, ingested, removed and diagnosed.

Routes (v1, JSON as Google's REST transport speaks it): ``POST /v1/audienceMembers:ingest``,
``POST /v1/audienceMembers:remove``, ``POST /v1/audienceMembers:removeAll``,
``GET /v1/requestStatus:retrieve?requestId=...``, ``GET /v1/accountTypes/GOOGLE_ADS/accounts/{id}/userLists/{id}``
(its ``sizeInfo``), and ``POST /token`` (``google_oauth``).

Enforces what Google documents for these requests: OAuth bearer tokens that expire, only known fields
(a misspelt or invented field is ``INVALID_ARGUMENT``, as proto JSON parsing refuses it), enum values by
name, 1 to 10 destinations of account type ``GOOGLE_ADS`` with a numeric ``productDestinationId``, at
most 10,000 audience members a request and 10 user identifiers a member, ``encoding`` set for user data
and every hashed identifier a SHA-256 in that encoding, the Customer Match terms of service accepted on
ingest. Lists have set semantics (adding a member twice keeps one; removing matches any shared
identifier, as Google matches each identifier to an account). No ``Idempotency-Key`` replay: Google has
none. Each accepted request gets a ``requestId`` whose status is ``PROCESSING`` for ``processing_polls``
retrievals, then ``SUCCESS`` with the record and identifier counts and the upload's match-rate range.

Members expire as Customer Match memberships do: ``membership_days`` (the list's ``membershipDuration``,
540 days by default, Google's maximum) after their last upload, unless uploaded again meanwhile. Time
is ``clock`` (wall time unless a test sets it), so a test can move a list through years of runs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import re
import sys
from collections.abc import Callable
from typing import Any

from sandbox.standins.base import HttpError, Request, Response, StandIn
from sandbox.standins.google_oauth import TokenIssuer

SCOPE = "https://www.googleapis.com/auth/datamanager"
MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
CONSENT = {"CONSENT_STATUS_UNSPECIFIED", "CONSENT_GRANTED", "CONSENT_DENIED"}
ENCODINGS = {"HEX", "BASE64"}  # ENCODING_UNSPECIFIED "should never be used"
ACCOUNT_TYPES = {"GOOGLE_ADS", "DISPLAY_VIDEO_PARTNER", "DISPLAY_VIDEO_ADVERTISER", "DATA_PARTNER"}
TERMS = {"TERMS_OF_SERVICE_STATUS_UNSPECIFIED", "ACCEPTED", "REJECTED"}
#: a list's membership duration when none was set: Customer Match's maximum
MAX_MEMBERSHIP_DAYS = 540
#: [lower, upper) bounds in percent of each MatchRateRange value Google reports
RANGES = [
    (0, 20, "MATCH_RATE_RANGE_LESS_THAN_20"),
    (20, 31, "MATCH_RATE_RANGE_20_TO_30"),
    (31, 41, "MATCH_RATE_RANGE_31_TO_40"),
    (41, 51, "MATCH_RATE_RANGE_41_TO_50"),
    (51, 61, "MATCH_RATE_RANGE_51_TO_60"),
    (61, 71, "MATCH_RATE_RANGE_61_TO_70"),
    (71, 81, "MATCH_RATE_RANGE_71_TO_80"),
    (81, 91, "MATCH_RATE_RANGE_81_TO_90"),
    (91, 101, "MATCH_RATE_RANGE_91_TO_100"),
]

# The fields each message may carry, in proto JSON names (lowerCamelCase; snake_case is accepted too).
_ACCOUNT = {"accountId": str, "accountType": ACCOUNT_TYPES, "product": {"GOOGLE_ADS"}}
_DESTINATION = {
    "reference": str,
    "loginAccount": _ACCOUNT,
    "linkedAccount": _ACCOUNT,
    "operatingAccount": _ACCOUNT,
    "productDestinationId": str,
}
_CONSENT = {"adUserData": CONSENT, "adPersonalization": CONSENT}
_ADDRESS = {
    "givenName": str,
    "familyName": str,
    "regionCode": str,
    "postalCode": str,
    "addressLine": str,
    "city": str,
    "administrativeArea": str,
}
_IDENTIFIER = {"emailAddress": str, "phoneNumber": str, "address": _ADDRESS}
_MEMBER = {
    "destinationReferences": [str],
    "userData": {"userIdentifiers": [_IDENTIFIER]},
    "consent": _CONSENT,
}
_COMMON = {"destinations": [_DESTINATION], "validateOnly": bool, "encoding": ENCODINGS}
_INGEST = {
    **_COMMON,
    "audienceMembers": [_MEMBER],
    "consent": _CONSENT,
    "termsOfService": {"customerMatchTermsOfServiceStatus": TERMS},
}
_REMOVE = {**_COMMON, "audienceMembers": [_MEMBER]}
_REMOVE_ALL = {"destinations": [_DESTINATION], "validateOnly": bool, "removeAsOfTime": str}


def dm_error(status: int, code: str, message: str, reason: str | None = None, field: str | None = None) -> HttpError:
    """Google's error shape: ``google.rpc.Status`` with an ErrorInfo reason and the offending field."""
    details: list[dict[str, Any]] = []
    if reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "datamanager.googleapis.com",
            }
        )
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    return HttpError(status, {"error": {"code": status, "message": message, "status": code, "details": details}})


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def validate(value: Any, schema: Any, path: str) -> Any:
    """Check ``value`` against ``schema`` as proto JSON parsing would; return it with camelCase keys."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise dm_error(
                400, "INVALID_ARGUMENT", f"Invalid value at '{path}': expected an object", "INVALID_ARGUMENT", path
            )
        out = {}
        for key, item in value.items():
            name = _camel(key)
            if name not in schema:
                raise dm_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': Cannot find field.",
                    "INVALID_ARGUMENT",
                    f"{path}.{key}".lstrip("."),
                )
            out[name] = validate(item, schema[name], f"{path}.{name}".lstrip("."))
        return out
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise dm_error(
                400, "INVALID_ARGUMENT", f"Invalid value at '{path}': expected a list", "INVALID_ARGUMENT", path
            )
        return [validate(v, schema[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(schema, set):
        if value not in schema:
            raise dm_error(
                400,
                "INVALID_ARGUMENT",
                f"Invalid value at '{path}': {value!r} is not a valid enum value",
                "INVALID_ENUM_VALUE",
                path,
            )
        return value
    if schema is bool and not isinstance(value, bool) or schema is str and not isinstance(value, str):
        raise dm_error(
            400, "INVALID_ARGUMENT", f"Invalid value at '{path}' ({type(value).__name__})", "INVALID_ARGUMENT", path
        )
    return value


def _hash_ok(value: str, encoding: str) -> bool:
    if encoding == "HEX":
        return re.fullmatch(r"[0-9a-fA-F]{64}", value) is not None
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class GoogleDataManagerStandIn(StandIn):
    name = "google"
    max_body_bytes = sys.maxsize  # Google documents no body cap, only the member and identifier counts
    rate_per_second = 100.0
    burst = 50
    persistent = ("lists", "uploaded")

    def __init__(
        self,
        processing_polls: int = 0,
        token_ttl: float = 3600.0,
        membership_days: int = MAX_MEMBERSHIP_DAYS,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.oauth = TokenIssuer(SCOPE, token_ttl=token_ttl)
        self.processing_polls = processing_polls
        self.membership_days = membership_days
        self.clock: Callable[[], dt.datetime] = clock or (lambda: dt.datetime.now(dt.UTC))
        #: (operating account id, user list id) -> members, each a frozenset of (identifier type, value)
        self.lists: dict[tuple[str, str], set[frozenset[tuple[str, str]]]] = {}
        #: (operating account id, user list id) -> member -> when it was last uploaded
        self.uploaded: dict[tuple[str, str], dict[frozenset[tuple[str, str]], dt.datetime]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.unmatched_hashes: set[str] = set()  # identifiers Google finds no account for
        self.bodies: list[tuple[str, bytes]] = []  # (path, body) of every accepted API request
        self._ids = itertools.count(1)
        super().__init__()

    def setup_routes(self) -> None:
        self.route("POST", "/token", self.token)
        self.route("POST", r"/v1/audienceMembers:ingest", self.ingest)
        self.route("POST", r"/v1/audienceMembers:remove", self.remove)
        self.route("POST", r"/v1/audienceMembers:removeAll", self.remove_all)
        self.route("GET", r"/v1/requestStatus:retrieve", self.status)
        self.route(
            "GET",
            r"/v1/accountTypes/(?P<type>[A-Z_]+)/accounts/(?P<account>\d+)/userLists/(?P<list>\d+)",
            self.user_list,
        )

    def check_auth(self, req: Request) -> None:
        if req.path != "/token":
            self.oauth.check(req)

    def rate_limited(self) -> Response:
        r = dm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "RESOURCE_EXHAUSTED").response
        r.headers["Retry-After"] = "1"
        return r

    def server_error(self, status: int) -> Response:
        if status == 429:
            return self.rate_limited()
        return dm_error(status, "UNAVAILABLE", "The service is currently unavailable.").response

    def token(self, req: Request, m: re.Match[str] | None = None) -> Response:
        return self.oauth.token(req)

    def expire(self) -> None:
        """Drop the members whose membership ran out: ``membership_days`` after their last upload."""
        with self.lock:
            now = self.clock()
            cutoff = now - dt.timedelta(days=self.membership_days)
            for dest, members in self.lists.items():
                times = self.uploaded.setdefault(dest, {})
                for u in members - times.keys():  # put there without an upload (a saved list, a test): from now
                    times[u] = now
                gone = {u for u in members if times[u] <= cutoff}
                members.difference_update(gone)
                for u in gone:
                    times.pop(u, None)

    def dispatch(self, req: Request) -> Response:
        self.expire()  # whatever the request reads or changes, expired members are gone first
        # Google's token endpoint is another service: the API's faults, rate limit and log are not its own
        if req.path == "/token" and req.method == "POST":
            with self.lock:
                try:
                    return self.token(req)
                except HttpError as exc:
                    return exc.response
        return super().dispatch(req)

    # -- requests ------------------------------------------------------------------------------------
    def _destinations(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        dests = body.get("destinations") or []
        if not dests:
            raise dm_error(
                400, "INVALID_ARGUMENT", "destinations is required", "REQUIRED_FIELD_MISSING", "destinations"
            )
        if len(dests) > MAX_DESTINATIONS:
            raise dm_error(400, "INVALID_ARGUMENT", f"at most {MAX_DESTINATIONS} destinations", "TOO_MANY_DESTINATIONS")
        out = []
        for i, d in enumerate(dests):
            op = d.get("operatingAccount") or {}
            if op.get("accountType") != "GOOGLE_ADS" or not re.fullmatch(r"\d{10}", op.get("accountId", "")):
                raise dm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "operatingAccount needs accountType GOOGLE_ADS and a 10-digit accountId",
                    "INVALID_DESTINATION",
                    f"destinations[{i}].operatingAccount",
                )
            if not re.fullmatch(r"\d+", d.get("productDestinationId", "")):
                raise dm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "productDestinationId must be a user list id",
                    "INVALID_USER_LIST_ID",
                    f"destinations[{i}].productDestinationId",
                )
            out.append((op["accountId"], d["productDestinationId"]))
        return out

    def _members(self, body: dict[str, Any]) -> list[frozenset[tuple[str, str]]]:
        members = body.get("audienceMembers") or []
        if not members:
            raise dm_error(
                400, "INVALID_ARGUMENT", "audienceMembers is required", "REQUIRED_FIELD_MISSING", "audienceMembers"
            )
        if len(members) > MAX_MEMBERS:
            raise dm_error(
                400,
                "INVALID_ARGUMENT",
                f"{len(members)} audience members in one request; at most {MAX_MEMBERS}",
                "TOO_MANY_AUDIENCE_MEMBERS",
                "audienceMembers",
            )
        encoding = body.get("encoding")
        if encoding is None:
            raise dm_error(
                400, "INVALID_ARGUMENT", "encoding is required for UserData", "REQUIRED_FIELD_MISSING", "encoding"
            )
        out = []
        for i, member in enumerate(members):
            ids = (member.get("userData") or {}).get("userIdentifiers") or []
            where = f"audienceMembers[{i}].userData.userIdentifiers"
            if not ids:
                raise dm_error(
                    400, "INVALID_ARGUMENT", "a member needs at least one identifier", "NO_IDENTIFIERS_PROVIDED", where
                )
            if len(ids) > MAX_IDENTIFIERS:
                raise dm_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"at most {MAX_IDENTIFIERS} user identifiers a member",
                    "TOO_MANY_USER_IDENTIFIERS",
                    where,
                )
            user = set()
            for j, ident in enumerate(ids):
                if len(ident) != 1:
                    raise dm_error(
                        400,
                        "INVALID_ARGUMENT",
                        "exactly one identifier per UserIdentifier",
                        "INVALID_ARGUMENT",
                        f"{where}[{j}]",
                    )
                [(kind, value)] = ident.items()
                if kind == "address":
                    missing = [k for k in ("givenName", "familyName", "regionCode", "postalCode") if not value.get(k)]
                    if missing:
                        raise dm_error(
                            400,
                            "INVALID_ARGUMENT",
                            f"address needs {missing}",
                            "REQUIRED_FIELD_MISSING",
                            f"{where}[{j}].address",
                        )
                    value = "|".join(value.get(k, "") for k in ("givenName", "familyName", "regionCode", "postalCode"))
                elif not _hash_ok(value, encoding):
                    reason = "INVALID_HEX_ENCODING" if encoding == "HEX" else "INVALID_FORMAT"
                    raise dm_error(
                        400,
                        "INVALID_ARGUMENT",
                        f"{kind} is not a SHA-256 hash in {encoding} encoding",
                        reason,
                        f"{where}[{j}].{kind}",
                    )
                else:
                    value = value.lower() if encoding == "HEX" else base64.b64decode(value).hex()
                user.add((kind, value))
            out.append(frozenset(user))
        return out

    def _accept(
        self, req: Request, kind: str, dests: list[tuple[str, str]], records: int, identifiers: int, matched: int
    ) -> Response:
        rid = f"standin-request-{next(self._ids)}"
        self.requests[rid] = {
            "kind": kind, "destinations": dests, "records": records, "identifiers": identifiers,
            "matched": matched, "polls": 0,
        }  # fmt: skip
        self.bodies.append((req.path, req.body))
        return Response(200, {"requestId": rid})

    def ingest(self, req: Request, m: re.Match[str]) -> Response:
        body = validate(req.json(), _INGEST, "")
        dests = self._destinations(body)
        members = self._members(body)
        terms = (body.get("termsOfService") or {}).get("customerMatchTermsOfServiceStatus")
        if terms != "ACCEPTED":
            raise dm_error(
                400,
                "INVALID_ARGUMENT",
                "The Customer Match terms of service must be accepted to upload user data.",
                "TERMS_AND_CONDITIONS_NOT_SIGNED",
                "termsOfService.customerMatchTermsOfServiceStatus",
            )
        if body.get("validateOnly"):
            return Response(200, {})
        now = self.clock()
        for dest in dests:
            held = self.lists.setdefault(dest, set())
            held.update(members)
            self.uploaded.setdefault(dest, {}).update(dict.fromkeys(members, now))  # a re-upload renews
        matched = sum(1 for u in members if any(v not in self.unmatched_hashes for _, v in u))
        return self._accept(req, "ingest", dests, len(members), sum(map(len, members)), matched)

    def remove(self, req: Request, m: re.Match[str]) -> Response:
        body = validate(req.json(), _REMOVE, "")
        dests = self._destinations(body)
        members = self._members(body)
        if body.get("validateOnly"):
            return Response(200, {})
        gone = {ident for u in members for ident in u}
        for dest in dests:
            held = self.lists.get(dest, set())
            removed = {u for u in held if u & gone}
            held.difference_update(removed)
            for u in removed:
                self.uploaded.get(dest, {}).pop(u, None)
        return self._accept(req, "remove", dests, len(members), sum(map(len, members)), 0)

    def remove_all(self, req: Request, m: re.Match[str]) -> Response:
        body = validate(req.json(), _REMOVE_ALL, "")
        dests = self._destinations(body)
        if "removeAsOfTime" in body:
            raise dm_error(
                400, "INVALID_ARGUMENT", "the stand-in removes as of now only", "INVALID_ARGUMENT", "removeAsOfTime"
            )
        if body.get("validateOnly"):
            return Response(200, {})
        for dest in dests:
            self.lists.get(dest, set()).clear()
            self.uploaded.pop(dest, None)
        return self._accept(req, "remove_all", dests, 0, 0, 0)

    def status(self, req: Request, m: re.Match[str]) -> Response:
        unknown = set(req.query) - {"requestId", "request_id"}
        if unknown:
            raise dm_error(400, "INVALID_ARGUMENT", f"unknown parameter {sorted(unknown)[0]}", "INVALID_ARGUMENT")
        rid = (req.query.get("requestId") or req.query.get("request_id") or [""])[0]
        if rid not in self.requests:
            raise dm_error(404, "NOT_FOUND", f"request {rid} not found", "INVALID_REQUEST_ID")
        r = self.requests[rid]
        r["polls"] += 1
        out = []
        for account, user_list in r["destinations"]:
            entry: dict[str, Any] = {
                "destination": {
                    "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": account},
                    "productDestinationId": user_list,
                }
            }
            if r["polls"] <= self.processing_polls:
                entry["requestStatus"] = "PROCESSING"
            else:
                entry["requestStatus"] = "SUCCESS"
                counts = {"recordCount": str(r["records"]), "userIdentifierCount": str(r["identifiers"])}
                if r["kind"] == "ingest":
                    pct = 100 * r["matched"] / r["records"] if r["records"] else 0
                    rng = next(name for lo, hi, name in RANGES if lo <= pct < hi)
                    entry["audienceMembersIngestionStatus"] = {
                        "userDataIngestionStatus": {**counts, "uploadMatchRateRange": rng}
                    }
                elif r["kind"] == "remove":
                    entry["audienceMembersRemovalStatus"] = {"userDataRemovalStatus": counts}
                else:
                    entry["removeAllAudienceMembersStatus"] = {}
            out.append(entry)
        return Response(200, {"requestStatusPerDestination": out})

    def user_list(self, req: Request, m: re.Match[str]) -> Response:
        if m["type"] not in ACCOUNT_TYPES:
            raise dm_error(400, "INVALID_ARGUMENT", f"unknown account type {m['type']}", "INVALID_ENUM_VALUE")
        login = req.headers.get("login-account")
        if login is not None and not re.fullmatch(r"accountTypes/[A-Z_]+/accounts/\d+", login):
            raise dm_error(400, "INVALID_ARGUMENT", "login-account must be accountTypes/{type}/accounts/{id}")
        # every list id is taken to exist (made in Google Ads beforehand); one never written to is empty
        size = str(len(self.lists.get((m["account"], m["list"]), set())))
        return Response(
            200,
            {
                "name": f"accountTypes/{m['type']}/accounts/{m['account']}/userLists/{m['list']}",
                "id": m["list"],
                "sizeInfo": {"displayNetworkMembersCount": size, "searchNetworkMembersCount": size},
            },
        )

    # -- admin -------------------------------------------------------------------------------------
    def state(self) -> Any:
        self.expire()
        return {f"{a}/{u}": sorted(sorted(list(m)) for m in members) for (a, u), members in self.lists.items()}

    def reset_state(self) -> None:
        self.lists.clear()
        self.uploaded.clear()
        self.requests.clear()
        self.unmatched_hashes.clear()
        self.bodies.clear()

    def admin(self, req: Request, action: str) -> Response:
        body = req.json() or {}
        if action == "expire_tokens":
            self.oauth.expire_tokens()
            return Response(200, {"ok": True})
        if action == "unmatched_hashes":
            self.unmatched_hashes.update(body["hashes"])
            return Response(200, {"ok": True})
        return super().admin(req, action)
