"""One description per HTTP destination, so every contract test runs against every stand-in.

A case knows how to start its stand-in, which connection and settings point at it, and how to read what
the stand-in holds in the same shape as what a people row should become there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from data_out.connections import ConnectionInfo
from data_out.identity import identity_forms
from sandbox.standins.base import StandIn
from sandbox.standins.google_ads import GoogleAdsStandIn
from sandbox.standins.google_dm import GoogleDataManagerStandIn
from sandbox.standins.google_oauth import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN
from sandbox.standins.meta import MetaStandIn
from sandbox.standins.segment import SegmentStandIn
from sandbox.standins.tiktok import TikTokStandIn
from sandbox.standins.webhook import WebhookStandIn

FAST_RETRIES = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_attempts": 4, "timeout": 2, "poll_interval": 0.01}
AUDIENCE = "dest_test_v1"
GOOGLE_CONSENT = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
GOOGLE_OAUTH_EXTRA = {"refresh_token": REFRESH_TOKEN, "token_uri": "/token"}


def forms(row: dict) -> Any:
    return identity_forms(row.get("email"), row.get("phone"), None, "US")


@dataclass
class Case:
    type: str
    make: Callable[[], StandIn]
    settings: dict[str, Any]
    secret: str
    ident: Callable[[dict], Any]  # people row -> what the stand-in holds for it
    held: Callable[[StandIn], set]  # stand-in -> set of ident values
    max_rows: int
    extra: dict[str, Any] = field(default_factory=dict)
    supports_replace: bool = False
    reject: Callable[[StandIn, dict], None] | None = None  # make the stand-in refuse one row
    login: str | None = None

    def connection(self, url: str, secret: str | None = None) -> ConnectionInfo:
        return ConnectionInfo(
            f"data_out_{self.type}",
            f"data_out_{self.type}",
            host=url,
            login=self.login,
            password=self.secret if secret is None else secret,
            extra={**FAST_RETRIES, **self.extra},
        )


def _meta_ident(r: dict) -> tuple:
    f = forms(r)
    return tuple(
        x
        for x in (
            f"EMAIL={f.email_sha256}" if f.email_sha256 else None,
            f"PHONE={f.phone_digits_sha256}" if f.phone_digits_sha256 else None,
        )
        if x
    )


def _google_dm_ident(r: dict) -> frozenset:
    f = forms(r)
    ids = set()
    if f.email_google_sha256:
        ids.add(("emailAddress", f.email_google_sha256))
    if f.phone_e164_sha256:
        ids.add(("phoneNumber", f.phone_e164_sha256))
    return frozenset(ids)


def _google_ident(r: dict) -> frozenset:
    f = forms(r)
    ids = set()
    if f.email_sha256:
        ids.add(("hashedEmail", f.email_sha256))
    if f.phone_e164_sha256:
        ids.add(("hashedPhoneNumber", f.phone_e164_sha256))
    return frozenset(ids)


def _tiktok_ident(r: dict) -> tuple:
    f = forms(r)
    return tuple(
        x
        for x in (
            f"EMAIL_SHA256={f.email_sha256}" if f.email_sha256 else None,
            f"PHONE_SHA256={f.phone_e164_sha256}" if f.phone_e164_sha256 else None,
        )
        if x
    )


def _google_reject(s: StandIn, row: dict) -> None:
    s.reject_hashes.add(forms(row).email_sha256)  # type: ignore[attr-defined]


def _webhook_reject(s: StandIn, row: dict) -> None:
    s.reject[row["customer_id"]] = "customer is on legal hold"  # type: ignore[attr-defined]


CASES = {
    "meta": Case(
        "meta",
        lambda: MetaStandIn(auto_create=True),
        {"audience_id": "23850000001"},
        "meta-test-token",
        _meta_ident,
        lambda s: set(s.audiences.get("23850000001", set())),
        10_000,
        supports_replace=True,
    ),
    "google": Case(
        "google",
        GoogleDataManagerStandIn,
        {
            "customer_id": "1234567890",
            "user_list_id": "555",
            "consent": GOOGLE_CONSENT,
            "customer_match_terms_accepted": True,
        },
        CLIENT_SECRET,
        _google_dm_ident,
        lambda s: set(s.lists.get(("1234567890", "555"), set())),
        10_000,
        extra=GOOGLE_OAUTH_EXTRA,
        login=CLIENT_ID,
    ),
    "google_ads": Case(
        "google_ads",
        GoogleAdsStandIn,
        {"customer_id": "1234567890", "user_list_id": "555", "consent": GOOGLE_CONSENT},
        CLIENT_SECRET,
        _google_ident,
        lambda s: set(s.lists.get("customers/1234567890/userLists/555", set())),
        50_000,
        extra={**GOOGLE_OAUTH_EXTRA, "developer_token": "dev-token"},
        supports_replace=True,
        reject=_google_reject,
        login=CLIENT_ID,
    ),
    "tiktok": Case(
        "tiktok",
        TikTokStandIn,
        {"advertiser_id": "7000000001", "segment_id": "seg42"},
        "tiktok-test-token",
        _tiktok_ident,
        lambda s: set(s.segments.get("seg42", set())),
        10_000,
    ),
    "segment": Case(
        "segment",
        SegmentStandIn,
        {"include": "targeted"},
        "segment-write-key",
        lambda r: r["customer_id"],
        lambda s: {u for u, t in s.traits.items() if t.get(AUDIENCE)},
        2_000,
    ),
    "webhook": Case(
        "webhook",
        WebhookStandIn,
        {"path": "/hooks/crm", "fields": ["email_sha256"]},
        "webhook-secret",
        lambda r: r["customer_id"],
        lambda s: set(s.members.get(AUDIENCE, {})),
        1_000,
        reject=_webhook_reject,
    ),
}
