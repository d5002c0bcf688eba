"""Settings of a Meta destination in an audience file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from data_out.destinations.base import DestinationSettings
from data_out.destinations.meta.versions import DEFAULT_API_VERSION, current, expired

MatchKey = Literal["EMAIL", "PHONE", "EXTERN_ID", "FN", "LN", "FI", "CT", "ST", "ZIP", "COUNTRY", "GEN"]


_DEFAULT_MATCH_KEYS: list[MatchKey] = ["EMAIL", "PHONE"]


class MetaSettings(DestinationSettings):
    type: Literal["meta"]
    audience_id: str = Field(pattern=r"^[0-9A-Za-z_-]{1,64}$")
    match_keys: list[MatchKey] = Field(default_factory=lambda: _DEFAULT_MATCH_KEYS.copy(), min_length=1)
    api_version: str = Field(DEFAULT_API_VERSION, pattern=r"^v\d+\.\d+$")

    @field_validator("api_version")
    @classmethod
    def _not_expired(cls, v: str) -> str:
        if expired(v):
            raise ValueError(
                f"Meta retired Marketing API {v}; use one it still serves ({', '.join(current())}) "
                f"or leave api_version out for the default {DEFAULT_API_VERSION}"
            )
        return v

    @field_validator("match_keys")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("list each match key once")
        return v
