"""Page models: query results shaped (with pandas for the series) into what the templates print.

Kept apart from the FastAPI app so the figures can be tested without HTTP, and apart from ``queries.py``
so the SQL stays small and index-bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from data_out.identity import REASONS
from data_out.report import identifier_quality
from data_out.ui import charts, queries
from data_out.ui.catalog import AudienceInfo, Catalog

#: a destination whose reported size differs from the acknowledged one by more than this needs attention
GAP_ATTENTION_PCT = 5.0


def _pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / max(b, 1) * 100


def _seconds(row: dict[str, Any]) -> float | None:
    if not row.get("finished_at") or not row.get("started_at"):
        return None
    return (row["finished_at"] - row["started_at"]).total_seconds()


@dataclass
class DestinationCell:
    name: str
    acked: int | None
    reported: int | None
    gap_pct: float | None
    match_rate: float | None
    added: int | None
    removed: int | None
    refreshed: int | None  # members re-sent before their membership expires (neither added nor removed)
    rejected: int | None
    status: str | None
    breaches: list[str]
    spark: str


@dataclass
class OverviewRow:
    audience: AudienceInfo
    status: str
    last_run: dict[str, Any] | None
    duration_s: float | None
    holdout_share: float | None
    destinations: list[DestinationCell]
    attention: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(d.acked or 0 for d in self.destinations)


def overview(engine: Engine, catalog: Catalog) -> list[OverviewRow]:
    """Every audience (configured, or still known to the state database), with per-destination figures."""
    with engine.connect() as conn:
        known = queries.known_audiences(conn)
        infos = dict(catalog.audiences)
        for name in known:
            infos.setdefault(name, AudienceInfo(name=name, dag_id=f"audience__{name}"))
        names = sorted(infos)
        runs = queries.last_runs(conn, names)
        acked = queries.acked_counts(conn)
        pairs = sorted({(a, d) for a in names for d in infos[a].destinations} | {p for p in acked if p[0] in infos})
        sizes = queries.size_series(conn, pairs)
        latest = queries.latest_syncs(conn, pairs)
        breaches = queries.open_breaches(conn)
        lifecycle = queries.lifecycle(conn)
    open_by: dict[tuple[str, str], list[str]] = {}
    for b in breaches:
        open_by.setdefault((b["audience"], b["destination"]), []).append(b["check"])
    rows = []
    for name in names:
        info = infos[name]
        run = runs.get(name)
        dests = sorted({d for a, d in pairs if a == name}, key=lambda d: (d not in info.destinations, d))
        cells = []
        for d in dests:
            last = latest.get((name, d))
            reported = last["destination_size"] if last else None
            ack = acked.get((name, d))
            matched = last if last and last["received"] else None
            cells.append(
                DestinationCell(
                    name=d,
                    acked=ack,
                    reported=reported,
                    gap_pct=_pct(reported, ack) if ack is not None else None,
                    match_rate=(matched["matched"] / matched["received"])
                    if matched and matched["matched"] is not None
                    else None,
                    added=last["added"] if last else None,
                    removed=last["removed"] if last else None,
                    refreshed=last["refreshed"] if last else None,
                    rejected=last["rejected"] if last else None,
                    status=last["status"] if last else None,
                    breaches=open_by.get((name, d), []) + open_by.get((name, "*"), []) * (d == dests[0]),
                    spark=charts.sparkline(sizes.get((name, d), [])),
                )
            )
        status = info.status
        if name in lifecycle:
            status = lifecycle[name]["status"]
        row = OverviewRow(
            audience=info,
            status=status,
            last_run=run,
            duration_s=_seconds(run) if run else None,
            holdout_share=(run["held_out"] / run["members"] * 100) if run and run["members"] else None,
            destinations=cells,
        )
        row.attention = _attention(row)
        rows.append(row)
    return rows


def _attention(row: OverviewRow) -> list[str]:
    why = []
    if row.last_run and row.last_run["status"] == "failed":
        why.append("last run failed")
    for c in row.destinations:
        if c.status in ("failed", "guarded"):
            why.append(f"{c.name}: sync {c.status}")
        if c.breaches:
            why.append(f"{c.name}: open breach ({', '.join(c.breaches)})")
        if c.gap_pct is not None and c.gap_pct > GAP_ATTENTION_PCT:
            why.append(f"{c.name}: gap {c.gap_pct:.1f}%")
        if c.rejected:
            why.append(f"{c.name}: {c.rejected} rejected")
    return why


@dataclass
class Health:
    audience: AudienceInfo
    runs: list[dict[str, Any]]
    recent: list[dict[str, Any]]  # latest runs first, each with its syncs
    charts: dict[str, str]
    checks: list[dict[str, Any]]
    check_table: pd.DataFrame
    check_events: list[dict[str, Any]]  # breach, repaired, recovered: latest first
    breaches: list[dict[str, Any]]
    guard_trips: list[dict[str, Any]]
    lifecycle: dict[str, Any] | None
    yaml_text: str
    sql_text: str
    #: the latest run's identifier quality: (reason code, meaning, members), largest first; counts only
    id_quality: list[tuple[str, str, int]] = field(default_factory=list)


def health(engine: Engine, catalog: Catalog, info: AudienceInfo, last: int = 100) -> Health:
    """The Health tab of one audience over its last ``last`` runs."""
    with engine.connect() as conn:
        runs = queries.runs_window(conn, info.name, last)
        from_run = runs[0]["id"] if runs else 0
        dests = list(info.destinations) or queries.sync_destinations(conn, info.name, runs[-1]["id"] if runs else None)
        syncs = queries.syncs_since(conn, info.name, dests, from_run, last) if runs else []
        rejects = queries.rejects_by_reason(conn, [s["id"] for s in syncs])
        checks = queries.check_history(conn, info.name)
        breaches = queries.open_breaches(conn, info.name)
        lifecycle = queries.lifecycle(conn, info.name).get(info.name)
    return Health(
        audience=info,
        runs=runs,
        recent=_recent(runs, syncs),
        charts=_health_charts(runs, syncs, rejects),
        checks=checks,
        check_table=_check_table(checks),
        check_events=check_events(checks),
        breaches=breaches,
        guard_trips=[s for s in syncs if s["status"] == "guarded" or (s["guard"] or "").startswith("overridden")],
        lifecycle=lifecycle,
        yaml_text=info.yaml_text(),
        sql_text=catalog.sql.get(info.name, ""),
        id_quality=id_quality(runs[-1] if runs else None),
    )


def id_quality(run: dict[str, Any] | None) -> list[tuple[str, str, int]]:
    """Members per identifier-quality reason in ``run`` (the same counts the run table prints)."""
    if not run:
        return []
    found = identifier_quality(run.get("identifier_issues") or {})
    return [(code, REASONS.get(code, code), n) for code, n in found.items()]


def _run_label(run: dict[str, Any]) -> str:
    return f"#{run['id']} {run['started_at']:%m-%d %H:%M}"


def _health_charts(runs: list[dict], syncs: list[dict], rejects: list[dict]) -> dict[str, str]:
    """Series per run: one point per run of the window (a run a destination missed is a gap, not a zero)."""
    if not runs:
        return {}
    run_frame = pd.DataFrame(runs).set_index("id")
    labels = [_run_label(r) for r in runs]
    index = run_frame.index
    out: dict[str, str] = {}
    frame = pd.DataFrame(syncs) if syncs else pd.DataFrame(columns=["id", "run_id", "destination"])

    def per_run(column: str) -> dict[str, list[float | None]]:
        if frame.empty:
            return {}
        wide = frame.pivot_table(index="run_id", columns="destination", values=column, aggfunc="last")
        wide = wide.reindex(index)
        return {str(d): [None if pd.isna(v) else float(v) for v in wide[d]] for d in wide.columns}

    out["size"] = charts.line_chart(labels, per_run("acked_size"), title="acknowledged size per destination")
    if not frame.empty:
        rate = frame.assign(
            rate=frame["matched"].astype("float") / frame["received"].where(frame["received"] > 0).astype("float") * 100
        )
        wide = rate.pivot_table(index="run_id", columns="destination", values="rate", aggfunc="last").reindex(index)
        series = {str(d): [None if pd.isna(v) else float(v) for v in wide[d]] for d in wide.columns}
        totals = frame.groupby("run_id")[["added", "removed", "refreshed"]].sum().reindex(index).fillna(0)
        adds, removes, refreshes = list(totals["added"]), list(totals["removed"]), list(totals["refreshed"])
    else:
        series, adds, removes, refreshes = {}, [0.0] * len(labels), [0.0] * len(labels), [0.0] * len(labels)
    out["changes"] = charts.bar_chart(
        labels, adds, removes, refreshed=refreshes, title="adds, removes and refreshes per run"
    )
    out["match"] = charts.line_chart(labels, series, title="match rate", unit="%")
    if rejects:
        rej = pd.DataFrame(rejects).merge(frame[["id", "run_id"]], left_on="sync_id", right_on="id")
        wide = rej.pivot_table(index="run_id", columns="reason", values="rows", aggfunc="sum").reindex(index)
        out["rejects"] = charts.line_chart(
            labels,
            {str(c)[:60]: [0.0 if pd.isna(v) else float(v) for v in wide[c]] for c in wide.columns},
            title="rejects by reason",
        )
    else:
        out["rejects"] = charts.line_chart(labels, {}, title="rejects by reason")
    ended = pd.to_datetime(run_frame["finished_at"], utc=True)
    started = pd.to_datetime(run_frame["started_at"], utc=True)
    seconds = (ended - started).dt.total_seconds()
    out["duration"] = charts.line_chart(
        labels, {"run": [None if pd.isna(v) else float(v) for v in seconds]}, title="run duration", unit="s"
    )
    return out


def _recent(runs: list[dict], syncs: list[dict], show: int = 20) -> list[dict[str, Any]]:
    by_run: dict[int, list[dict]] = {}
    for s in syncs:
        by_run.setdefault(s["run_id"], []).append(s)
    return [{**r, "duration_s": _seconds(r), "syncs": by_run.get(r["id"], [])} for r in reversed(runs[-show:])]


def check_events(checks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The moments a check changed state: it breached, a rebuild repaired it, or it measured ok again."""
    if not checks:
        return []
    f = pd.DataFrame(checks).sort_values("id")
    previous = f.groupby(["destination", "check"])["status"].shift()
    f["event"] = None
    f.loc[f["status"] == "breach", "event"] = "breach"
    f.loc[(f["status"] == "ok") & (previous == "breach"), "event"] = "recovered"
    f.loc[f["repaired"].astype(bool), "event"] = "repaired"
    events = f[f["event"].notna()].sort_values("id", ascending=False)
    return events.to_dict(orient="records")


def _check_table(checks: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (destination, check): the latest value and threshold, and counts of breaches and repairs."""
    if not checks:
        return pd.DataFrame()
    f = pd.DataFrame(checks)
    f["breach"] = f["status"] == "breach"
    grouped = f.groupby(["destination", "check"], sort=True)
    table = grouped.agg(
        latest=("value", "last"),
        threshold=("threshold", "last"),
        status=("status", "last"),
        at=("at", "last"),
        measured=("id", "count"),
        breaches=("breach", "sum"),
        repaired=("repaired", "sum"),
    ).reset_index()
    return table
