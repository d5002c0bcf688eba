"""Settings of a Segment destination in an audience file."""

from __future__ import annotations

from typing import Literal

from data_out.destinations.base import DestinationSettings


class SegmentSettings(DestinationSettings):
    type: Literal["segment"]
    include: Literal["targeted", "holdout", "all"] = "all"
    entered_event: str = "Audience Entered"
    exited_event: str = "Audience Exited"
