"""Google Ads Customer Match through OfflineUserDataJobs: create -> addOperations -> run -> poll.

Google directs Customer Match to the Data Manager API (type ``google``); this path serves developer
tokens Google still allowlists for Customer Match through the Google Ads API. The API version is
``API_VERSION`` below, the one place it is kept; a test fails once the pinned ``google-ads`` library no
longer ships it.

Connection (type ``data_out_google_ads``): ``host`` the API base URL (default
https://googleads.googleapis.com), the credential as ``google/auth.py`` describes (access tokens are minted
and renewed, never stored), extras ``developer_token``, optional ``login_customer_id``,
``poll_interval`` (seconds, default 5) and ``poll_timeout`` (default 3600). Per audience:
``customer_id``, ``user_list_id`` and ``consent``.

Email is hashed trimmed and lower-cased, the phone as E.164 **with** the plus sign, as Google specifies.
Partial failures name the failing operation, so one bad identifier is a row-level reject and the rest
of the batch is applied. A full replace is one job whose first operation is ``removeAll``.

Jobs as Google runs them: a job runs once (a second ``:run`` is refused) and Google ignores
``Idempotency-Key``. Each batch's job carries an ``external_id`` derived from the batch's idempotency
key, so a retry after a lost answer, a timed-out ``:run`` or a crash finds its job again and carries on
from the job's status instead of applying the batch twice: RUNNING is polled, SUCCESS is done; a
FAILED job, or a PENDING one that never started, is replaced by a new job whose ``external_id`` derives
from the key and that job.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationError, DestinationSettings, MemberRow, Op
from data_out.destinations.google.auth import GoogleTokenAuth
from data_out.destinations.google.destination import (
    CUSTOMER_MATCH_MAX_LIFETIME_DAYS,
    MATCH_RATE_FLOOR,
)
from data_out.destinations.google_ads.settings import GoogleAdsSettings
from data_out.destinations.http import HttpClient, split_by_size
from data_out.identity import GMAIL_COLUMN
from data_out.redact import scrub

log = logging.getLogger(__name__)

#: the Google Ads API version every request uses; the only place it is set
API_VERSION = "v26"
DEFAULT_BASE_URL = "https://googleads.googleapis.com"
MAX_IDENTIFIERS_PER_REQUEST = 100_000
#: failed jobs of one batch replaced before the batch fails for good
MAX_JOB_GENERATIONS = 5


#: job statuses, furthest along first
_PROGRESS = {"SUCCESS": 0, "RUNNING": 1, "PENDING": 2, "FAILED": 3}


def external_id(seed: str) -> int:
    """A job's ``external_id`` (int64) for a batch key: found again by a retry, unique across installations."""
    return int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big") >> 1


@register
class GoogleAdsDestination(Destination):
    type_name = "google_ads"
    pool = kind("google_ads").pool  # sized in deploy/pools.json
    # Google answers CONCURRENT_MODIFICATION when two jobs modify one user list at once
    max_push_shards = 1
    settings_model = GoogleAdsSettings
    default_conn_id = kind("google_ads").conn_type
    max_batch_rows = 50_000  # two identifiers each: within 100,000 identifiers per request
    supports_replace = True
    membership_lifetime_days = CUSTOMER_MATCH_MAX_LIFETIME_DAYS
    # ``size_for_search`` is an estimate Google updates within about a day, rounded; small lists show 0
    reported_size_is_live = False

    settings: GoogleAdsSettings

    @classmethod
    def columns_for(cls, settings: DestinationSettings) -> dict[str, str]:
        assert isinstance(settings, GoogleAdsSettings)
        email = GMAIL_COLUMN if settings.gmail_canonical else "email_sha256"
        return {"email_sha256": email, "phone_sha256": "phone_e164_sha256"}

    @property
    def identity_columns(self) -> dict[str, str]:  # type: ignore[override]  # class-wide in the base
        return self.columns_for(self.settings)

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        extra = dict(self.connection.extra)
        from data_out.destinations.google_ads.hook import GoogleAdsHook  # tokens, developer-token, login-customer-id

        hook = GoogleAdsHook(connection=self.connection, default_base_url=DEFAULT_BASE_URL)
        self.client: HttpClient = hook.client()
        assert isinstance(self.client.session.auth, GoogleTokenAuth)
        self.auth = self.client.session.auth
        self.poll_interval = float(extra.get("poll_interval", 5))
        self.poll_timeout = float(extra.get("poll_timeout", 3600))
        self.prefix = f"/{API_VERSION}/customers/{self.settings.customer_id}"

    @staticmethod
    def _user(r: MemberRow) -> dict[str, Any]:
        ids = []
        if r.email_sha256:
            ids.append({"hashedEmail": r.email_sha256})
        if r.phone_sha256:
            ids.append({"hashedPhoneNumber": r.phone_sha256})
        return {"userIdentifiers": ids}

    # -- jobs ----------------------------------------------------------------------------------------
    def _search(self, query: str) -> list[dict[str, Any]]:
        resp = self.client.request("POST", f"{self.prefix}/googleAds:search", json={"query": query})
        return list(resp.json().get("results", []))

    def _job_by_external_id(self, ext: int) -> dict[str, Any] | None:
        """The batch's job; when a retried ``create`` made two, the one furthest along."""
        rows = self._search(
            "SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
            "offline_user_data_job.failure_reason FROM offline_user_data_job "
            f"WHERE offline_user_data_job.external_id = {ext}"
        )
        jobs = [r["offlineUserDataJob"] for r in rows]
        return min(jobs, key=lambda j: _PROGRESS.get(str(j.get("status")), len(_PROGRESS)), default=None)

    def _job_status(self, job: str) -> dict[str, Any]:
        rows = self._search(
            "SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
            "offline_user_data_job.failure_reason, offline_user_data_job.operation_metadata.match_rate_range "
            "FROM offline_user_data_job "
            f"WHERE offline_user_data_job.resource_name = '{job}'"
        )
        if not rows:
            raise DestinationError(f"google_ads: job {job} is gone", retryable=True)
        return dict(rows[0]["offlineUserDataJob"])

    def _create_job(self, ext: int) -> str:
        s = self.settings
        job = {
            "type": "CUSTOMER_MATCH_USER_LIST",
            "externalId": str(ext),
            "customerMatchUserListMetadata": {
                "userList": f"customers/{s.customer_id}/userLists/{s.user_list_id}",
                "consent": {"adUserData": s.consent.ad_user_data, "adPersonalization": s.consent.ad_personalization},
            },
        }
        resp = self.client.request("POST", f"{self.prefix}/offlineUserDataJobs:create", json={"job": job})
        return str(resp.json()["resourceName"])

    def _find_or_create(self, idempotency_key: str) -> tuple[str, str]:
        """The batch's job and its status: found by external id, or created (status ``NEW``).

        A job found RUNNING or SUCCESS is the batch's, and is never run again. A FAILED job, or a PENDING
        one (never started, and holding an unknown part of the operations), is left alone: the batch gets
        a new job whose external id derives from the key and that job, so a later retry finds it too.
        """
        seed = idempotency_key
        for _ in range(MAX_JOB_GENERATIONS):
            ext = external_id(seed)
            found = self._job_by_external_id(ext)
            if found is None:
                return self._create_job(ext), "NEW"
            status = str(found.get("status"))
            if status in ("RUNNING", "SUCCESS"):
                return str(found["resourceName"]), status
            log.warning(
                "google_ads: job %s of this batch is %s%s; the batch goes into a new job",
                found["resourceName"],
                status,
                f" ({found['failureReason']})" if found.get("failureReason") else "",
            )
            seed = f"{idempotency_key}:{found['resourceName']}"
        raise DestinationError(
            f"google_ads: {MAX_JOB_GENERATIONS} jobs for this batch did not complete; see them in the Google Ads "
            "UI (Tools > Offline data jobs)",
            retryable=False,
        )

    def _add(self, job: str, operations: list[dict[str, Any]], rows: Sequence[MemberRow | None]) -> dict[str, str]:
        """Send operations in requests of at most 100,000 identifiers; return rejects by member key."""

        def size(pair: tuple[dict[str, Any], MemberRow | None]) -> int:
            op = pair[0]
            return len(op.get("create", op.get("remove", {})).get("userIdentifiers", [])) or 1

        rejected: dict[str, str] = {}
        for chunk in split_by_size(list(zip(operations, rows, strict=True)), size, MAX_IDENTIFIERS_PER_REQUEST):
            resp = self.client.request(
                "POST",
                f"/{API_VERSION}/{job}:addOperations",
                json={"operations": [op for op, _ in chunk], "enablePartialFailure": True},
            )
            failure = resp.json().get("partialFailureError")
            for detail in (failure or {}).get("details", []):
                for err in detail.get("errors", []):
                    index = next(
                        (
                            p.get("index")
                            for p in err.get("location", {}).get("fieldPathElements", [])
                            if p.get("fieldName") == "operations"
                        ),
                        None,
                    )
                    row = chunk[index][1] if index is not None and index < len(chunk) else None
                    if row is not None:
                        code = "".join(str(v) for v in err.get("errorCode", {}).values())
                        rejected[row.member_key] = scrub(f"{code}: {err.get('message', '')}")
        return rejected

    def _run(self, job: str) -> None:
        """Start the job once. A ``:run`` whose answer was lost may have started it: its status decides."""
        try:
            self.client.request("POST", f"/{API_VERSION}/{job}:run")
        except DestinationError:
            if self._job_status(job).get("status") == "PENDING":
                raise
            log.info("google_ads: job %s started although its :run answer was lost", job)

    def _wait(self, job: str) -> str | None:
        """Poll until the job is done; its match-rate range, when Google reports one."""
        deadline = time.monotonic() + self.poll_timeout
        while True:
            status = self._job_status(job)
            if status.get("status") == "SUCCESS":
                rng = status.get("operationMetadata", {}).get("matchRateRange")
                log.info("google_ads: job %s done, match rate %s", job, rng or "not reported")
                return rng
            if status.get("status") == "FAILED":
                raise DestinationError(
                    f"google_ads: job {job} failed: {status.get('failureReason', 'no reason given')}; the batch's "
                    "next attempt uses a new job",
                    retryable=True,
                )
            if time.monotonic() > deadline:
                raise DestinationError(f"google_ads: job {job} not done after {self.poll_timeout:.0f}s", retryable=True)
            time.sleep(self.poll_interval)

    def _apply(
        self, idempotency_key: str, fill: Iterator[tuple[list[dict[str, Any]], Sequence[MemberRow | None]]]
    ) -> tuple[dict[str, str], str | None]:
        """Run the batch's job once (a job found under this key is not run again): the rejected members,
        and the job's match rate range."""
        job, status = self._find_or_create(idempotency_key)
        rejected: dict[str, str] = {}
        if status == "NEW":
            for operations, rows in fill:
                rejected.update(self._add(job, operations, rows))
            self._run(job)
        else:
            log.info("google_ads: found job %s of this batch %s; not running it again", job, status)
        return rejected, self._wait(job)

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        kind = "remove" if op is Op.REMOVE else "create"
        rejected, rng = self._apply(idempotency_key, iter([([{kind: self._user(r)} for r in rows], rows)]))
        sent = len(rows) - len(rejected)
        return BatchResult(rejected=rejected, received=len(rows), matched=_matched(op, sent, rng))

    def replace(self, batches: Iterator[list[MemberRow]], total: int, idempotency_key: str) -> BatchResult:
        def fill() -> Iterator[tuple[list[dict[str, Any]], Sequence[MemberRow | None]]]:
            yield [{"removeAll": True}], [None]
            for rows in batches:
                yield [{"create": self._user(r)} for r in rows], rows

        rejected, rng = self._apply(idempotency_key, fill())
        return BatchResult(rejected=rejected, received=total, matched=_matched(Op.ADD, total - len(rejected), rng))

    def size(self) -> int | None:
        query = f"SELECT user_list.size_for_search FROM user_list WHERE user_list.id = {self.settings.user_list_id}"
        results = self._search(query)
        return int(results[0]["userList"]["sizeForSearch"]) if results else 0

    def close(self) -> None:
        self.client.close()


def _matched(op: Op, accepted: int, match_rate_range: str | None) -> int | None:
    """Matched members by the lower bound of the job's match-rate range (a removal counts whole)."""
    if op is Op.REMOVE:
        return accepted
    floor = (
        MATCH_RATE_FLOOR.get(f"MATCH_RATE_RANGE_{match_rate_range.removeprefix('MATCH_RANGE_')}")
        if match_rate_range
        else None
    )
    return None if floor is None else math.floor(accepted * floor / 100)
