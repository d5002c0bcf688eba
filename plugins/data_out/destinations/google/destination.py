"""Google Customer Match through the Data Manager API: the default Google destination (type ``google``).

Google directs Customer Match uploads to the Data Manager API; the Google Ads API path
(``google_ads``) is kept for developer tokens Google still allowlists for it.

Requests (``https://datamanager.googleapis.com/v1``): ``audienceMembers:ingest`` for adds and refreshes,
``audienceMembers:remove`` for removals, each with at most 10,000 audience members and 10 user
identifiers a member, identifiers SHA-256 hex (``encoding: HEX``): the email trimmed and lower-cased, for gmail.com and
googlemail.com addresses also without dots and plus suffix in the local part (``identity.google_email``),
the phone E.164 with its plus sign. Every ingest carries the audience's EEA consent (``consent``) and the
Customer Match terms of service the account accepted. Lists have set semantics, so a batch re-sent
after a lost answer changes nothing; Google has no idempotency key and none is sent.

Diagnostics: each accepted request returns a ``requestId``; ``requestStatus:retrieve`` reports its
processing status and, for an ingest, the record count and the upload's match-rate range. The
destination asks once after each request (and keeps asking for up to the connection's ``status_wait``
seconds while it is ``PROCESSING``); the record count becomes the batch's ``received`` figure and the
lower bound of the match-rate range its ``matched`` figure, which the run record and the daily match-rate
check read. A ``FAILED`` request fails the batch with Google's error reasons. The list's size is
Google's estimate of its members on Search (``userLists`` ``sizeInfo``).

Connection (type ``data_out_google``): ``host`` the API base URL (default
https://datamanager.googleapis.com), the credential as ``google/auth.py`` describes, extras ``status_wait``
(seconds, default 0) and ``status_poll_interval`` (default 2). Per audience: ``customer_id`` (the
operating Google Ads account), ``user_list_id``, optional ``login_customer_id`` (a manager account
the credential signs in through), ``consent`` and ``customer_match_terms_accepted``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from data_out.connection_types import kind
from data_out.connections import ConnectionInfo
from data_out.destinations import register
from data_out.destinations.base import (
    BatchResult,
    Destination,
    DestinationError,
    DestinationSettings,
    MemberRow,
    Op,
)
from data_out.destinations.google.auth import GoogleTokenAuth
from data_out.destinations.google.settings import CUSTOMER_MATCH_MAX_LIFETIME_DAYS, GoogleSettings
from data_out.destinations.http import HttpClient
from data_out.redact import scrub

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://datamanager.googleapis.com"
MAX_MEMBERS_PER_REQUEST = 10_000
MAX_IDENTIFIERS_PER_MEMBER = 10
#: lower bound, in percent, of each ``MatchRateRange`` (``NOT_ELIGIBLE`` and ``UNKNOWN``: no figure)
MATCH_RATE_FLOOR = {
    "MATCH_RATE_RANGE_LESS_THAN_20": 0,
    "MATCH_RATE_RANGE_20_TO_30": 20,
    "MATCH_RATE_RANGE_31_TO_40": 31,
    "MATCH_RATE_RANGE_41_TO_50": 41,
    "MATCH_RATE_RANGE_51_TO_60": 51,
    "MATCH_RATE_RANGE_61_TO_70": 61,
    "MATCH_RATE_RANGE_71_TO_80": 71,
    "MATCH_RATE_RANGE_81_TO_90": 81,
    "MATCH_RATE_RANGE_91_TO_100": 91,
}


@register
class GoogleDestination(Destination):
    type_name = "google"
    pool = kind("google").pool  # sized in deploy/pools.json
    settings_model = GoogleSettings
    default_conn_id = kind("google").conn_type
    max_batch_rows = MAX_MEMBERS_PER_REQUEST
    identity_columns = {"email_sha256": "email_google_sha256", "phone_sha256": "phone_e164_sha256"}
    membership_lifetime_days = CUSTOMER_MATCH_MAX_LIFETIME_DAYS
    # Google's list size is an estimate, updated within about a day and rounded; small lists show 0
    reported_size_is_live = False

    settings: GoogleSettings

    def __init__(self, audience: str, settings: DestinationSettings, connection: ConnectionInfo) -> None:
        super().__init__(audience, settings, connection)
        extra = dict(self.connection.extra)
        from data_out.destinations.google.hook import GoogleHook  # access tokens minted from the connection

        self.client: HttpClient = GoogleHook(connection=self.connection, default_base_url=DEFAULT_BASE_URL).client()
        assert isinstance(self.client.session.auth, GoogleTokenAuth)
        self.auth = self.client.session.auth
        self.status_wait = float(extra.get("status_wait", 0))
        self.status_poll_interval = float(extra.get("status_poll_interval", 2))

    def _destination(self) -> dict[str, Any]:
        s = self.settings
        dest: dict[str, Any] = {
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": s.customer_id},
            "productDestinationId": s.user_list_id,
        }
        if s.login_customer_id:
            dest["loginAccount"] = {"accountType": "GOOGLE_ADS", "accountId": s.login_customer_id}
        return dest

    @staticmethod
    def member(r: MemberRow) -> dict[str, Any] | None:
        ids = []
        if r.email_sha256:
            ids.append({"emailAddress": r.email_sha256})
        if r.phone_sha256:
            ids.append({"phoneNumber": r.phone_sha256})
        return {"userData": {"userIdentifiers": ids}} if ids else None

    def request_body(self, op: Op, members: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"destinations": [self._destination()], "audienceMembers": members, "encoding": "HEX"}
        if op.adds:
            c = self.settings.consent
            body["consent"] = {
                "adUserData": f"CONSENT_{c.ad_user_data}",
                "adPersonalization": f"CONSENT_{c.ad_personalization}",
            }
            body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
        return body

    def push(self, op: Op, rows: Sequence[MemberRow], idempotency_key: str) -> BatchResult:
        rejected: dict[str, str] = {}
        members = []
        for r in rows:
            m = self.member(r)
            if m is None:
                rejected[r.member_key] = "no email or phone hash to match on"
            else:
                members.append(m)
        if not members:
            return BatchResult(rejected=rejected, received=0)
        path = "/v1/audienceMembers:ingest" if op.adds else "/v1/audienceMembers:remove"
        resp = self.client.request("POST", path, json=self.request_body(op, members))
        request_id = str(resp.json().get("requestId", ""))
        received, matched = self._diagnostics(request_id, len(members), op)
        return BatchResult(rejected=rejected, received=received, matched=matched)

    def _diagnostics(self, request_id: str, sent: int, op: Op) -> tuple[int, int | None]:
        """(records Google counted, matched records) for one request: for an ingest the match-rate range's
        lower bound times the records; a processed removal counts whole, so the sync's rate is the adds'."""
        if not request_id:
            return sent, None
        deadline = time.monotonic() + self.status_wait
        while True:
            resp = self.client.request("GET", "/v1/requestStatus:retrieve", params={"requestId": request_id})
            statuses = resp.json().get("requestStatusPerDestination") or [{}]
            status = statuses[0]
            state = status.get("requestStatus", "REQUEST_STATUS_UNKNOWN")
            if state != "PROCESSING" or time.monotonic() >= deadline:
                break
            time.sleep(self.status_poll_interval)
        errors = _counts(status.get("errorInfo"), "errorCounts")
        if state == "FAILED":
            raise DestinationError(
                f"google: request {request_id} failed at Google: {errors or 'no reason given'}", retryable=False
            )
        detail = status.get("audienceMembersIngestionStatus", {}).get("userDataIngestionStatus") or status.get(
            "audienceMembersRemovalStatus", {}
        ).get("userDataRemovalStatus", {})
        records = int(detail.get("recordCount", sent))
        rng = detail.get("uploadMatchRateRange", "MATCH_RATE_RANGE_UNKNOWN")
        log.info(
            "google: request %s %s: %d records, match rate %s%s",
            request_id,
            state,
            records,
            rng,
            f", errors {errors}" if errors else "",
        )
        if state not in ("SUCCESS", "PARTIAL_SUCCESS"):
            return records, None
        if not op.adds:
            return records, records
        floor = MATCH_RATE_FLOOR.get(rng)
        return records, None if floor is None else math.floor(records * floor / 100)

    def size(self) -> int | None:
        """The list's estimated members on Google Search (``sizeInfo.searchNetworkMembersCount``), as the
        Google Ads path reads ``size_for_search``: Google's estimate, for the reconciliation gap check."""
        s = self.settings
        headers = {}
        if s.login_customer_id:
            headers["login-account"] = f"accountTypes/GOOGLE_ADS/accounts/{s.login_customer_id}"
        path = f"/v1/accountTypes/GOOGLE_ADS/accounts/{s.customer_id}/userLists/{s.user_list_id}"
        body = self.client.request("GET", path, headers=headers).json()
        count = (body.get("sizeInfo") or {}).get("searchNetworkMembersCount")
        return None if count is None else int(count)

    def close(self) -> None:
        self.client.close()


def _counts(info: Any, key: str) -> str:
    if not isinstance(info, dict):
        return ""
    return scrub(", ".join(f"{c.get('reason', '?')}: {c.get('recordCount', '?')}" for c in info.get(key, [])))
