"""Google Ads Customer Match stand-in: OfflineUserDataJob create -> addOperations -> run -> poll.

Enforces: bearer token and ``developer-token`` header, job type CUSTOMER_MATCH_USER_LIST with a user list
of the same customer, at most 100,000 user identifiers per addOperations request and 20 per UserData,
SHA-256 hex for hashedEmail / hashedPhoneNumber, ``removeAll`` only as a job's first operation, partial
failure reporting by operation index, a job that runs once (a second ``:run`` is refused, and
``Idempotency-Key`` is ignored as Google ignores it), asynchronous jobs polled through their long-running
operation or through ``offline_user_data_job.status`` in ``googleAds:search`` (also found by
``external_id``), and ``user_list.size_for_search``. OAuth access tokens come from ``/token``
(``google_oauth``) and expire. Bodies have no size cap: Google has none, only the identifier counts.
"""

from __future__ import annotations

import itertools
import re
import sys
from typing import Any

from sandbox.standins.base import HttpError, Request, Response, StandIn, require_hex64
from sandbox.standins.google_oauth import TokenIssuer

MAX_IDENTIFIERS = 100_000
#: [lower, upper) percent of each OfflineUserDataJobMatchRateRange value
MATCH_RANGES = [
    (0, 20, "MATCH_RANGE_LESS_THAN_20"),
    *(
        (lo, hi + 1, f"MATCH_RANGE_{lo}_TO_{hi}")
        for lo, hi in ((20, 30), (31, 40), (41, 50), (51, 60), (61, 70), (71, 80), (81, 90))
    ),
    (91, 101, "MATCH_RANGE_91_TO_100"),
]
MAX_PER_USER = 20
ID_FIELDS = ("hashedEmail", "hashedPhoneNumber", "thirdPartyUserId")


def google_error(status: int, code: str, message: str) -> HttpError:
    return HttpError(status, {"error": {"code": status, "status": code, "message": message}})


class GoogleAdsStandIn(StandIn):
    name = "google_ads"
    max_body_bytes = sys.maxsize
    rate_per_second = 100.0
    burst = 50
    persistent = ("lists",)

    def __init__(
        self, developer_token: str = "dev-token", polls_until_done: int = 2, token_ttl: float = 3600.0
    ) -> None:
        self.oauth = TokenIssuer("https://www.googleapis.com/auth/adwords", token_ttl=token_ttl)
        self.developer_token = developer_token
        self.polls_until_done = polls_until_done
        self.lists: dict[str, set[frozenset[tuple[str, str]]]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reject_hashes: set[str] = set()
        self.unmatched_hashes: set[str] = set()  # identifiers Google finds no account for
        self._ids = itertools.count(1)
        super().__init__()

    def setup_routes(self) -> None:
        self.route("POST", "/token", self.token)
        v = r"/v\d+/customers/(?P<cid>\d+)"
        self.route("POST", f"{v}/offlineUserDataJobs:create", self.create)
        self.route("POST", f"{v}/offlineUserDataJobs/(?P<jid>\\d+):addOperations", self.add_operations)
        self.route("POST", f"{v}/offlineUserDataJobs/(?P<jid>\\d+):run", self.run)
        self.route("GET", f"{v}/operations/(?P<jid>\\d+)", self.operation)
        self.route("POST", f"{v}/googleAds:search", self.search)

    def token(self, req: Request, m: re.Match[str] | None = None) -> Response:
        return self.oauth.token(req)

    def dispatch(self, req: Request) -> Response:
        # Google's token endpoint is another service: the API's faults, rate limit and log are not its own
        if req.path == "/token" and req.method == "POST":
            with self.lock:
                try:
                    return self.token(req)
                except HttpError as exc:
                    return exc.response
        return super().dispatch(req)

    def check_auth(self, req: Request) -> None:
        if req.path == "/token":
            return
        self.oauth.check(req)
        if req.headers.get("developer-token") != self.developer_token:
            raise google_error(403, "PERMISSION_DENIED", "The developer token is not valid")

    def rate_limited(self) -> Response:
        r = google_error(429, "RESOURCE_EXHAUSTED", "Too many requests").response
        r.headers["Retry-After"] = "1"
        return r

    def server_error(self, status: int) -> Response:
        if status == 429:
            return self.rate_limited()
        return google_error(status, "UNAVAILABLE", "The service is currently unavailable").response

    def create(self, req: Request, m: re.Match[str]) -> Response:
        job = req.json()["job"]
        if job.get("type") != "CUSTOMER_MATCH_USER_LIST":
            raise google_error(400, "INVALID_ARGUMENT", "job.type must be CUSTOMER_MATCH_USER_LIST")
        user_list = job["customerMatchUserListMetadata"]["userList"]
        if not re.fullmatch(rf"customers/{m['cid']}/userLists/\d+", user_list):
            raise google_error(400, "INVALID_ARGUMENT", f"userList {user_list!r} is not a list of this customer")
        consent = job["customerMatchUserListMetadata"].get("consent", {})
        for k, v in consent.items():
            if k not in {"adUserData", "adPersonalization"} or v not in {"GRANTED", "DENIED", "UNSPECIFIED"}:
                raise google_error(400, "INVALID_ARGUMENT", f"invalid consent {k}={v}")
        ext = job.get("externalId")
        if ext is not None and not re.fullmatch(r"-?\d+", str(ext)):
            raise google_error(400, "INVALID_ARGUMENT", f"externalId {ext!r} is not an int64")
        jid = str(next(self._ids))
        self.jobs[jid] = {
            "list": user_list, "ops": [], "status": "PENDING", "polls": 0, "consent": consent,
            "external_id": None if ext is None else str(ext), "customer": m["cid"],
        }  # fmt: skip
        return Response(200, {"resourceName": f"customers/{m['cid']}/offlineUserDataJobs/{jid}"})

    def _job(self, jid: str) -> dict[str, Any]:
        if jid not in self.jobs:
            raise google_error(404, "NOT_FOUND", f"job {jid} does not exist")
        return self.jobs[jid]

    def add_operations(self, req: Request, m: re.Match[str]) -> Response:
        job = self._job(m["jid"])
        if job["status"] != "PENDING":
            raise google_error(400, "FAILED_PRECONDITION", "operations can only be added before the job runs")
        body = req.json()
        ops = body["operations"]
        total = sum(len(op.get("create", op.get("remove", {})).get("userIdentifiers", [])) for op in ops)
        if total > MAX_IDENTIFIERS:
            raise google_error(
                400,
                "INVALID_ARGUMENT",
                f"TOO_MANY_USER_IDENTIFIERS: {total} identifiers in one request, limit {MAX_IDENTIFIERS}",
            )
        failures = []
        for i, op in enumerate(ops):
            if op.get("removeAll"):
                if job["ops"] or i:
                    raise google_error(400, "INVALID_ARGUMENT", "removeAll must be the first operation of a job")
                job["ops"].append(("remove_all", None))
                continue
            kind = "create" if "create" in op else "remove"
            user = _user_data(op[kind]["userIdentifiers"])
            if any(v in self.reject_hashes for _, v in user):
                failures.append(
                    {
                        "errorCode": {"offlineUserDataJobError": "INVALID_SHA256_FORMAT"},
                        "message": "The identifier was rejected.",
                        "location": {"fieldPathElements": [{"fieldName": "operations", "index": i}]},
                    }
                )
                continue
            job["ops"].append((kind, frozenset(user)))
        out: dict[str, Any] = {}
        if failures:
            if not body.get("enablePartialFailure"):
                raise google_error(400, "INVALID_ARGUMENT", "operation failed and partial failure is not enabled")
            out["partialFailureError"] = {
                "code": 3,
                "message": f"{len(failures)} operations failed",
                "details": [{"errors": failures}],
            }
        return Response(200, out)

    def run(self, req: Request, m: re.Match[str]) -> Response:
        job = self._job(m["jid"])
        if job["status"] != "PENDING":
            raise google_error(400, "FAILED_PRECONDITION", "the job already ran")
        job["status"] = "RUNNING"
        members = self.lists.setdefault(job["list"], set())
        for kind, user in job["ops"]:  # applied at run time; the operation reports done after a few polls
            if kind == "remove_all":
                members.clear()
            elif kind == "create":
                members.add(user)
            else:
                members.discard(user)
        return Response(200, {"name": f"customers/{m['cid']}/operations/{m['jid']}"})

    def operation(self, req: Request, m: re.Match[str]) -> Response:
        job = self._job(m["jid"])
        if self._poll(job) == "SUCCESS":
            return Response(200, {"name": f"customers/{m['cid']}/operations/{m['jid']}", "done": True})
        return Response(200, {"name": f"customers/{m['cid']}/operations/{m['jid']}", "done": False})

    def _match_rate_range(self, job: dict[str, Any]) -> str:
        """The job's match-rate range: the share of its users with an identifier Google knows."""
        users = [u for kind, u in job["ops"] if kind == "create"]
        if not users:
            return "UNKNOWN"
        pct = 100 * sum(any(v not in self.unmatched_hashes for _, v in u) for u in users) / len(users)
        return next(name for lo, hi, name in MATCH_RANGES if lo <= pct < hi)

    def _poll(self, job: dict[str, Any]) -> str:
        """Status after one more look: a running job is done after ``polls_until_done`` looks."""
        if job["status"] == "RUNNING":
            job["polls"] += 1
            if job["polls"] >= self.polls_until_done:
                job["status"] = "SUCCESS"
        return str(job["status"])

    def search(self, req: Request, m: re.Match[str]) -> Response:
        query = req.json()["query"]
        if "FROM offline_user_data_job" in query:
            by_ext = re.search(r"WHERE offline_user_data_job\.external_id = (-?\d+)$", query)
            by_name = re.search(r"WHERE offline_user_data_job\.resource_name = '([^']+)'$", query)
            if not (by_ext or by_name):
                raise google_error(400, "INVALID_ARGUMENT", "the stand-in answers job lookups by external_id or name")
            results = []
            for jid, job in self.jobs.items():
                name = f"customers/{job['customer']}/offlineUserDataJobs/{jid}"
                if job["customer"] != m["cid"]:
                    continue
                if (by_ext and job["external_id"] == by_ext[1]) or (by_name and name == by_name[1]):
                    row: dict[str, Any] = {"resourceName": name, "status": self._poll(job)}
                    if job["status"] == "FAILED":
                        row["failureReason"] = "UNKNOWN"
                    if job["status"] == "SUCCESS":
                        row["operationMetadata"] = {"matchRateRange": self._match_rate_range(job)}
                    results.append({"offlineUserDataJob": row})
            return Response(200, {"results": results} if results else {})
        hit = re.search(r"FROM user_list WHERE user_list\.id = (\d+)", query)
        if not hit or "user_list.size_for_search" not in query:
            raise google_error(400, "INVALID_ARGUMENT", "the stand-in answers only user_list size queries")
        size = len(self.lists.get(f"customers/{m['cid']}/userLists/{hit[1]}", set()))
        return Response(200, {"results": [{"userList": {"id": hit[1], "sizeForSearch": str(size)}}]})

    def state(self) -> Any:
        return {name: sorted(sorted(list(u)) for u in users) for name, users in self.lists.items()}

    def reset_state(self) -> None:
        self.lists.clear()
        self.jobs.clear()
        self.reject_hashes.clear()
        self.unmatched_hashes.clear()

    def admin(self, req: Request, action: str) -> Response:
        body = req.json() or {}
        if action == "drop_members":
            users = self.lists.get(body["user_list"], set())
            for u in sorted(users, key=sorted)[: int(body.get("count", 1))]:
                users.discard(u)
            return Response(200, {"size": len(users)})
        if action == "expire_tokens":
            self.oauth.expire_tokens()
            return Response(200, {"ok": True})
        if action == "reject_hashes":
            self.reject_hashes.update(body["hashes"])
            return Response(200, {"ok": True})
        return super().admin(req, action)


def _user_data(ids: list[dict[str, str]]) -> set[tuple[str, str]]:
    """One operation's UserData checked as Google checks it: (field, value) per identifier."""
    if not ids or len(ids) > MAX_PER_USER:
        raise google_error(400, "INVALID_ARGUMENT", f"a UserData needs 1 to {MAX_PER_USER} identifiers")
    user = set()
    for ident in ids:
        [(field, value)] = ident.items()
        if field not in ID_FIELDS:
            raise google_error(400, "INVALID_ARGUMENT", f"unknown identifier {field}")
        if field != "thirdPartyUserId":
            require_hex64(value, field)
        user.add((field, value))
    return user
