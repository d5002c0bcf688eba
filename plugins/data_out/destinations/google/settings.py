"""Settings of a Google Data Manager destination, and the consent and membership rules it shares with Google Ads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_out.destinations.base import (
    DestinationSettings,
    MembershipSettings,
)

#: Customer Match's longest membership: a member not uploaded again within it leaves the list (the Data
#: Manager ``UserList.membershipDuration`` defaults to it, the Ads API ``membership_life_span`` refuses more)
CUSTOMER_MATCH_MAX_LIFETIME_DAYS = 540


CONSENT_FIX = (
    "add `consent: {ad_user_data: GRANTED, ad_personalization: GRANTED}` to this Google destination (DENIED "
    "where the members did not consent): it is the EEA consent (Digital Markets Act) the members gave, and "
    "Google does not use EEA members uploaded without it"
)


class GoogleConsent(BaseModel):
    """EEA consent signals sent with every upload; both must be said, since Google drops unspecified EEA users."""

    model_config = ConfigDict(extra="forbid")
    ad_user_data: Literal["GRANTED", "DENIED"]
    ad_personalization: Literal["GRANTED", "DENIED"]


def require_consent(data: Any) -> Any:
    """Before-validator for Google settings: a missing ``consent`` gets an error that says what to add."""
    if isinstance(data, dict) and data.get("consent") is None:
        raise ValueError(f"consent is required: {CONSENT_FIX}")
    if isinstance(data, dict) and isinstance(data["consent"], dict):
        missing = [k for k in ("ad_user_data", "ad_personalization") if k not in data["consent"]]
        if missing:
            raise ValueError(f"consent must set {' and '.join(missing)}: {CONSENT_FIX}")
    return data


class CustomerMatchMembership(MembershipSettings):
    """A Customer Match list's membership duration, when it was set shorter than Google's maximum."""

    membership_lifetime_days: int | None = Field(
        None,
        ge=2,
        le=CUSTOMER_MATCH_MAX_LIFETIME_DAYS,
        description="the list's membership duration in days (Data Manager ``membershipDuration``, Ads API "
        "``membership_life_span``) when shorter than Google's maximum of 540",
    )


class GoogleSettings(DestinationSettings, CustomerMatchMembership):
    type: Literal["google"]
    customer_id: str = Field(pattern=r"^\d{10}$", description="the operating Google Ads account, 10 digits")
    user_list_id: str = Field(pattern=r"^\d+$")
    login_customer_id: str | None = Field(None, pattern=r"^\d{10}$", description="manager account signed in through")
    consent: GoogleConsent
    customer_match_terms_accepted: Literal[True] = Field(
        description="the account accepted Google's Customer Match terms of service (sent with every upload)"
    )

    @model_validator(mode="before")
    @classmethod
    def _consent_and_terms(cls, data: Any) -> Any:
        data = require_consent(data)
        if isinstance(data, dict) and data.get("customer_match_terms_accepted") is not True:
            raise ValueError(
                "customer_match_terms_accepted: true is required once the Google Ads account has accepted the "
                "Customer Match terms of service (Tools > Audience manager); Google refuses uploads without it"
            )
        return data
