"""Settings of a webhook destination in an audience file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data_out.destinations.base import (
    DestinationSettings,
)


class WebhookSettings(DestinationSettings):
    type: Literal["webhook"]
    path: str = Field("/", pattern=r"^/[\w\-./]*$")
    fields: list[Literal["email_sha256", "phone_sha256", "external_id"]] = Field(default_factory=list)
