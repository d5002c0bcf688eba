"""Google Ads Customer Match through OfflineUserDataJobs: create -> addOperations -> run -> poll.

Connection (type ``data_out_google_ads``): ``host`` the API base URL (default
https://googleads.googleapis.com), ``password`` an OAuth access token, extras ``developer_token``,
optional ``login_customer_id``, ``poll_interval`` (seconds, default 5) and ``poll_timeout`` (default 3600).
Per audience: ``customer_id``, ``user_list_id``, ``consent`` and ``api_version``.

Email is hashed trimmed and lower-cased, the phone as E.164 **with** the plus sign, as Google specifies.
Partial failures name the failing operation, so one bad identifier is a row-level reject and the rest
of the batch is applied. A full replace is one job whose first operation is ``removeAll``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from data_out.destinations import register
from data_out.destinations.base import BatchResult, Destination, DestinationError, DestinationSettings, MemberRow, Op
from data_out.destinations.http import HttpClient, split_by_size
from data_out.redact import scrub

MAX_IDENTIFIERS_PER_REQUEST = 100_000
Consent = Literal["GRANTED", "DENIED", "UNSPECIFIED"]


class ConsentSettings(BaseModel):
    """EEA consent signals sent with every job (``ad_user_data``, ``ad_personalization``)."""

    model_config = ConfigDict(extra="forbid")
    ad_user_data: Consent = "UNSPECIFIED"
    ad_personalization: Consent = "UNSPECIFIED"


class GoogleAdsSettings(DestinationSettings):
    type: Literal["google_ads"]
    customer_id: str = Field(pattern=r"^\d{10}$", description="the ad account, 10 digits without dashes")
    user_list_id: str = Field(pattern=r"^\d+$")
    consent: ConsentSettings = ConsentSettings()
    api_version: str = Field("v19", pattern=r"^v\d+$")


def _describe(resp: requests.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return f"{err.get('status', '')}: {err.get('message', '')}"
    except ValueError:
        return resp.text[:300]


@register
class GoogleAdsDestination(Destination):
    type_name = "google_ads"
    pool = "data_out_google_ads"  # see deploy/pools.json
    # Google answers CONCURRENT_MODIFICATION when two jobs modify one user list at once
    max_push_shards = 1
    settings_model = GoogleAdsSettings
    default_conn_id = "data_out_google_ads"
    max_batch_rows = 50_000  # two identifiers each: within 100,000 identifiers per request
    identity_columns = {"email_sha256": "email_sha256", "phone_sha256": "phone_e164_sha256"}
    supports_replace = True

    settings: GoogleAdsSettings

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        extra = dict(self.connection.extra)
        headers = {
            "Authorization": f"Bearer {self.connection.password or ''}",
            "developer-token": str(extra.get("developer_token", "")),
        }
        if extra.get("login_customer_id"):
            headers["login-customer-id"] = str(extra["login_customer_id"])
        self.client = HttpClient(
            "google_ads",
            self.connection,
            default_base_url="https://googleads.googleapis.com",
            headers=headers,
            describe_error=_describe,
        )
        self.poll_interval = float(extra.get("poll_interval", 5))
        self.poll_timeout = float(extra.get("poll_timeout", 3600))
        s = self.settings
        self.prefix = f"/{s.api_version}/customers/{s.customer_id}"

    @staticmethod
    def _user(r: MemberRow) -> dict[str, Any]:
        ids = []
        if r.email_sha256:
            ids.append({"hashedEmail": r.email_sha256})
        if r.phone_sha256:
            ids.append({"hashedPhoneNumber": r.phone_sha256})
        return {"userIdentifiers": ids}

    def _create_job(self) -> str:
        s = self.settings
        job = {
            "type": "CUSTOMER_MATCH_USER_LIST",
            "customerMatchUserListMetadata": {
                "userList": f"customers/{s.customer_id}/userLists/{s.user_list_id}",
                "consent": {"adUserData": s.consent.ad_user_data, "adPersonalization": s.consent.ad_personalization},
            },
        }
        resp = self.client.request("POST", f"{self.prefix}/offlineUserDataJobs:create", json={"job": job})
        return str(resp.json()["resourceName"])

    def _add(self, job: str, operations: list[dict[str, Any]], rows: Sequence[MemberRow | None]) -> dict[str, str]:
        """Send operations in requests of at most 100,000 identifiers; return rejects by member key."""

        def size(pair: tuple[dict[str, Any], MemberRow | None]) -> int:
            op = pair[0]
            return len(op.get("create", op.get("remove", {})).get("userIdentifiers", [])) or 1

        rejected: dict[str, str] = {}
        for chunk in split_by_size(list(zip(operations, rows, strict=True)), size, MAX_IDENTIFIERS_PER_REQUEST):
            resp = self.client.request(
                "POST",
                f"/{self.settings.api_version}/{job}:addOperations",
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

    def _run_and_wait(self, job: str, idempotency_key: str) -> None:
        resp = self.client.request(
            "POST", f"/{self.settings.api_version}/{job}:run", headers={"Idempotency-Key": idempotency_key}
        )
        operation = resp.json()["name"]
        deadline = time.monotonic() + self.poll_timeout
        while True:
            status = self.client.request("GET", f"/{self.settings.api_version}/{operation}").json()
            if status.get("done"):
                if status.get("error"):
                    raise DestinationError(
                        f"google_ads: job {job} failed: {scrub(str(status['error'].get('message', '')))}",
                        retryable=False,
                    )
                return
            if time.monotonic() > deadline:
                raise DestinationError(f"google_ads: job {job} not done after {self.poll_timeout:.0f}s", retryable=True)
            time.sleep(self.poll_interval)

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        kind = "create" if op is Op.ADD else "remove"
        job = self._create_job()
        rejected = self._add(job, [{kind: self._user(r)} for r in rows], rows)
        self._run_and_wait(job, idempotency_key)
        return BatchResult(rejected=rejected, received=len(rows))

    def replace(self, batches: Iterator[list[MemberRow]], total: int, idempotency_key: str) -> BatchResult:
        job = self._create_job()
        rejected = self._add(job, [{"removeAll": True}], [None])
        for rows in batches:
            rejected.update(self._add(job, [{"create": self._user(r)} for r in rows], rows))
        self._run_and_wait(job, idempotency_key)
        return BatchResult(rejected=rejected, received=total)

    def size(self) -> int | None:
        query = f"SELECT user_list.size_for_search FROM user_list WHERE user_list.id = {self.settings.user_list_id}"
        resp = self.client.request("POST", f"{self.prefix}/googleAds:search", json={"query": query})
        results = resp.json().get("results", [])
        return int(results[0]["userList"]["sizeForSearch"]) if results else 0

    def close(self) -> None:
        self.client.close()
