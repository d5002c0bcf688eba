"""Reading the ISO-8601 timestamps people type into a DAG trigger's conf."""

from __future__ import annotations

import datetime as dt


def parse_timestamp(value: object) -> dt.datetime:
    """An aware datetime from ISO-8601 text (``Z`` or an offset; none means UTC), or an aware datetime as is.

    Raises ``ValueError`` for text that is not ISO-8601.
    """
    parsed = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
