"""Names of the Airflow Assets Data Out emits, and the counts an audience sync's event carries.

Pure: the config validates ``schedule: asset:<name>`` against these names without importing Airflow.

URIs use the scheme ``x-data-out``: a scheme may not contain ``_`` (RFC 3986), and Airflow treats a
scheme beginning with ``x-`` as custom, so it neither warns nor looks for a provider to normalise it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from data_out import state

SCHEME = "x-data-out"

#: the pipelines whose Asset an audience may be scheduled on (``schedule: asset:<key>``)
PIPELINE_ASSETS = {"message_metrics": f"{SCHEME}://pipeline/message_metrics"}
ASSET_SCHEDULE_PREFIX = "asset:"


def audience_uri(audience: str) -> str:
    """The Asset updated each time ``audience`` finishes a successful sync."""
    return f"{SCHEME}://audience/{audience}"


def pipeline_asset_key(schedule: str | None) -> str | None:
    """``message_metrics`` for ``schedule: asset:message_metrics``; ``None`` for a cron or preset."""
    if schedule and schedule.startswith(ASSET_SCHEDULE_PREFIX):
        return schedule.removeprefix(ASSET_SCHEDULE_PREFIX)
    return None


def run_counts(engine: Engine, run_id: int) -> dict[str, Any]:
    """The run's counts for the Asset event's ``extra``: totals plus one entry per destination.

    Counts only, never member keys or identifiers: the event is stored in Airflow's metadata database
    and shown in its UI.
    """
    r, s = state.run, state.sync
    with engine.connect() as conn:
        run = conn.execute(select(r.c.audience, r.c.members, r.c.held_out).where(r.c.id == run_id)).mappings().one()
        rows = conn.execute(
            select(s.c.destination, s.c.status, s.c.added, s.c.removed, s.c.rejected)
            .where(s.c.run_id == run_id)
            .order_by(s.c.id)  # the latest attempt per destination wins
        ).mappings()
        per_destination = {
            row["destination"]: {
                "status": row["status"],
                "added": int(row["added"] or 0),
                "removed": int(row["removed"] or 0),
                "rejected": int(row["rejected"] or 0),
            }
            for row in rows
        }
    return {
        "audience": run["audience"],
        "run_id": run_id,
        "members": int(run["members"] or 0),
        "held_out": int(run["held_out"] or 0),
        **{k: sum(d[k] for d in per_destination.values()) for k in ("added", "removed", "rejected")},
        "destinations": per_destination,
    }
