"""Run history as tables for humans: the demo's summary and the run-history command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select
from tabulate import tabulate

from data_out import state
from data_out.identity import REASONS


def run_sync_rows(engine: Engine, run_ids: Sequence[int], newest_first: bool = False) -> list[dict[str, Any]]:
    """One row per (audience run, destination sync): every ``do_run`` column and the sync's figures, the
    sync's status and error as ``sync_status`` and ``sync_error``. A run without syncs has one row.

    Ordered by audience and destination, or ``newest_first`` (latest run first, its syncs in order).
    """
    r, s = state.run, state.sync
    if not run_ids:
        return []
    order = (r.c.id.desc(), s.c.id) if newest_first else (r.c.audience, s.c.destination)
    stmt = (
        select(
            r,
            s.c.destination,
            s.c.mode,
            s.c.status.label("sync_status"),
            s.c.planned_adds,
            s.c.planned_removes,
            s.c.added,
            s.c.removed,
            s.c.rejected,
            s.c.unmatchable,
            s.c.destination_size,
            s.c.guard,
            s.c.error.label("sync_error"),
            s.c.plan_seconds,
            s.c.push_seconds,
        )
        .select_from(r.outerjoin(s, s.c.run_id == r.c.id))
        .where(r.c.id.in_(list(run_ids)))
        .order_by(*order)
    )
    with engine.connect() as conn:
        return [dict(m) for m in conn.execute(stmt).mappings()]


def sync_rows(engine: Engine, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (audience run, destination), with the figures a data engineer checks first."""
    rows = run_sync_rows(engine, run_ids)
    for row in rows:
        issues = row.get("identifier_issues") or {}
        row["invalid"] = sum(n for k, n in issues.items() if k.endswith("_invalid") and ":" not in k)
        row["missing"] = sum(n for k, n in issues.items() if k.endswith("_missing") and ":" not in k)
        row["quality"] = identifier_quality(issues)
        end = row["finished_at"] or row["started_at"]
        row["run_s"] = round((end - row["started_at"]).total_seconds(), 2)
        row["sync_s"] = round((row["plan_seconds"] or 0) + (row["push_seconds"] or 0), 2)
    return rows


def identifier_quality(issues: dict[str, int]) -> dict[str, int]:
    """The run's identifier quality counts per reason code (``identity.REASONS``), largest first."""
    found = {k.removeprefix("reason:"): n for k, n in issues.items() if k.startswith("reason:")}
    return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


def quality_report(rows: list[dict[str, Any]]) -> str:
    """Identifier quality of each audience's latest run in ``rows``: how many members each reason touched.

    Counts only, never values.
    """
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["audience"] not in latest or row["id"] > latest[row["audience"]]["id"]:
            latest[row["audience"]] = row
    table = [
        [audience, code, REASONS.get(code, code), n]
        for audience, row in sorted(latest.items())
        for code, n in row["quality"].items()
    ]
    if not table:
        return "identifier quality: nothing to report"
    return tabulate(table, headers=["audience", "reason", "meaning", "members"], tablefmt="github", intfmt=",")


def run_report(rows: list[dict[str, Any]]) -> str:
    headers = [
        "audience",
        "destination",
        "status",
        "source",
        "added",
        "removed",
        "held out",
        "invalid ids",
        "no usable id",
        "rejected",
        "dest size",
        "sync s",
    ]
    table = [
        [
            row["audience"],
            row["destination"] or "-",
            row["sync_status"] or row["status"],
            row["members"],
            row["added"],
            row["removed"],
            row["held_out"],
            row["invalid"],
            row["unmatchable"],
            row["rejected"],
            row["destination_size"],
            row["sync_s"],
        ]
        for row in rows
    ]
    out = tabulate(table, headers=headers, tablefmt="github", intfmt=",")
    if any(row.get("quality") for row in rows):
        out += "\n\nIdentifier quality (members per reason; see docs/identity.md):\n" + quality_report(rows)
    problems = [
        f"- {row['audience']}/{row['destination'] or '-'}: {row['sync_error'] or row['error']}"
        for row in rows
        if (row["sync_status"] or row["status"]) != "success"
    ]
    return out + ("\n\nProblems:\n" + "\n".join(problems) if problems else "")


def recon_report(engine: Engine, recon_id: int) -> str:
    """Breaches, repairs and a count of the rest for one reconciliation run."""
    r = state.recon
    with engine.connect() as conn:
        rows = conn.execute(select(r).where(r.c.recon_id == recon_id).order_by(r.c.id)).mappings().all()
    shown = [row for row in rows if row["status"] == "breach" or row["repaired"]]
    table = [
        [
            row["audience"],
            row["destination"],
            row["check"],
            row["value"],
            row["threshold"],
            "repaired" if row["repaired"] else row["status"],
            row["detail"],
        ]
        for row in shown
    ]
    counts = {s: sum(row["status"] == s for row in rows) for s in ("ok", "breach", "skipped")}
    head = (
        f"reconciliation #{recon_id}: {len(rows)} checks, {counts['ok']} ok, {counts['breach']} breached, "
        f"{counts['skipped']} skipped (no baseline yet or not reported), "
        f"{sum(bool(row['repaired']) for row in rows)} repaired"
    )
    if not table:
        return head
    headers = ["audience", "destination", "check", "value", "threshold", "status", "detail"]
    return head + "\n" + tabulate(table, headers=headers, tablefmt="github")
