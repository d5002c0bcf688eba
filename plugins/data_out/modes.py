"""The ways a sync can bring a destination up to date, named once for the trigger form, the runner and the planner."""

from __future__ import annotations

from enum import StrEnum

from data_out.errors import REQUEST_NEXT_STEP, ConfigurationError


class SyncMode(StrEnum):
    """How a destination is synced; the value is what ``do_sync.mode`` records and a trigger's conf says."""

    #: send what changed since the last acknowledged state
    INCREMENTAL = "incremental"
    #: send every desired member again and remove the rest, whatever was acknowledged
    FULL_RESYNC = "full_resync"
    #: swap the whole audience through the destination's own replace API
    REPLACE = "replace"
    #: empty the destination of a retired audience (the lifecycle DAG's, never a trigger's)
    RETIRE = "retire"


#: the modes a person may ask for when triggering a sync
TRIGGER_MODES = (SyncMode.INCREMENTAL, SyncMode.FULL_RESYNC, SyncMode.REPLACE)


class InvalidMode(ConfigurationError, ValueError):
    """A mode that is not a ``SyncMode``; the message lists the allowed ones."""

    next_step = REQUEST_NEXT_STEP


def parse_mode(value: object) -> SyncMode:
    """The mode a trigger's conf names (empty: incremental), or ``InvalidMode`` naming the allowed values."""
    if value in (None, ""):
        return SyncMode.INCREMENTAL
    if value not in TRIGGER_MODES:
        allowed = ", ".join(m.value for m in TRIGGER_MODES)
        raise InvalidMode(f"mode {value!r} is not one of {allowed}")
    return SyncMode(str(value))
