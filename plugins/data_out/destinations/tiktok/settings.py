"""Settings of a TikTok destination in an audience file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data_out.destinations.base import DestinationSettings

IdKind = Literal["EMAIL_SHA256", "PHONE_SHA256"]
_DEFAULT_ID_SCHEMA: list[IdKind] = ["EMAIL_SHA256", "PHONE_SHA256"]


class TikTokSettings(DestinationSettings):
    type: Literal["tiktok"]
    advertiser_id: str = Field(pattern=r"^\d+$")
    segment_id: str = Field(pattern=r"^\w+$")
    id_schema: list[IdKind] = Field(default_factory=lambda: _DEFAULT_ID_SCHEMA.copy(), min_length=1)
    phone_format: Literal["e164", "digits"] = Field(
        "e164",
        description="hash the phone as E.164 with its + (e164) or as digits with the country code and no + "
        "(digits); TikTok's help pages name both, see docs/decisions/identity.md",
    )
