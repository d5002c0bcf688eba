"""Run history for humans: the last runs of an audience, one row per destination sync.

``no key`` counts the source rows staged without a usable member key (for a Customer.io segment: people
without an id), which no destination receives. ``compared`` says how staging compared the source with
the snapshot: ``full``, or ``changed`` (only the rows the source's change column flagged, docs/sources.md).

    python -m data_out.history cio_cart_abandon_6h_v1 --last 10

(with ``PYTHONPATH=plugins`` and the ``data_out_state`` connection in the environment, as ``make
history AUDIENCE=...`` sets up). The operations DAG prints the same table in its task log.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import Engine, select
from tabulate import tabulate

from data_out import state
from data_out.report import identifier_quality, run_sync_rows


def history_rows(engine: Engine, audience: str, last: int = 10) -> list[dict[str, Any]]:
    """The audience's last ``last`` runs, newest first, one row per destination sync (``report.run_sync_rows``)."""
    r = state.run
    with engine.connect() as conn:
        run_ids = conn.execute(select(r.c.id).where(r.c.audience == audience).order_by(r.c.id.desc()).limit(last))
        ids = list(run_ids.scalars())
    return run_sync_rows(engine, ids, newest_first=True)


def history_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs recorded"
    headers = [
        "run",
        "started (UTC)",
        "run status",
        "members",
        "held out",
        "no key",
        "compared",
        "destination",
        "mode",
        "sync status",
        "planned +/-",
        "done +/-",
        "rejected",
        "dest size",
        "secs",
        "id quality",
        "guard / error",
    ]
    table = []
    for x in rows:
        secs = sum(v or 0 for v in (x["stage_seconds"], x["plan_seconds"], x["push_seconds"]))
        note = x["sync_error"] or x["guard"] or ""
        table.append(
            [
                x["id"],
                f"{x['started_at']:%Y-%m-%d %H:%M}",
                x["status"],
                x["members"],
                x["held_out"],
                x["missing_keys"] or 0,
                x["comparison"] or "-",
                x["destination"] or "-",
                x["mode"] or "-",
                x["sync_status"] or "-",
                f"+{x['planned_adds'] or 0}/-{x['planned_removes'] or 0}",
                f"+{x['added'] or 0}/-{x['removed'] or 0}",
                x["rejected"] or 0,
                x["destination_size"],
                round(secs, 2),
                _quality(x.get("identifier_issues")),
                (note[:60] + "...") if len(note) > 60 else note,
            ]
        )
    return tabulate(table, headers=headers, tablefmt="github")


def _quality(issues: dict[str, int] | None) -> str:
    """The run's three most frequent identifier quality reasons, as ``code n``: counts, never values."""
    top = list(identifier_quality(issues or {}).items())[:3]
    return ", ".join(f"{code} {n}" for code, n in top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("audience")
    ap.add_argument("--last", type=int, default=10, help="how many runs (default 10)")
    args = ap.parse_args(argv)
    from data_out.hooks.state import DataOutStateHook

    print(history_table(history_rows(DataOutStateHook().get_conn(), args.audience, args.last)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
