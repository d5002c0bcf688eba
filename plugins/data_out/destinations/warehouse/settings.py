"""Settings of a warehouse destination in an audience file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from data_out.destinations.base import (
    IDENTIFIER_RE,
    DestinationSettings,
)


class WarehouseSettings(DestinationSettings):
    type: Literal["warehouse"]
    include: Literal["targeted", "holdout", "all"] = "all"
    table: str | None = Field(None, description="members table; default audience_<name>")
    holdout_table: str | None = Field(None, description="holdout table; default <table>_holdout")
    db_schema: str | None = Field(
        None, description="schema (Postgres, Snowflake, Redshift), database (MySQL), dataset (BigQuery) of both"
    )

    @field_validator("table", "holdout_table", "db_schema")
    @classmethod
    def _identifier(cls, v: str | None) -> str | None:
        if v is not None and not IDENTIFIER_RE.match(v):
            raise ValueError("must be a lowercase SQL identifier: letters, digits, underscores")
        return v
