"""Settings of a Google Ads destination in an audience file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from data_out.destinations.base import DestinationSettings
from data_out.destinations.google.settings import CustomerMatchMembership, GoogleConsent, require_consent


class GoogleAdsSettings(DestinationSettings, CustomerMatchMembership):
    type: Literal["google_ads"]
    customer_id: str = Field(pattern=r"^\d{10}$", description="the ad account, 10 digits without dashes")
    user_list_id: str = Field(pattern=r"^\d+$")
    consent: GoogleConsent
    gmail_canonical: bool = Field(
        False,
        description="send gmail.com/googlemail.com addresses without dots and +tags before the @ "
        "(the Data Manager API's rule; the Google Ads API guidance does not ask for it)",
    )

    @model_validator(mode="before")
    @classmethod
    def _consent_is_explicit(cls, data: Any) -> Any:
        return require_consent(data)
