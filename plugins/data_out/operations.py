"""What the operations DAG and the lifecycle DAG do, as plain functions (tested without Airflow).

``validate`` turns the trigger form (or ``--conf``) into a list of work items, naming every unknown
audience, destination or mode with the valid choices. ``run_item`` performs one audience in the chosen
mode (or previews it), ``backfill_metrics`` replays the message-metrics pipeline hour by hour over a
range, and ``retire_due`` performs the one-time exit of audiences whose status became ``retired``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from data_out import state
from data_out.config import LoadResult
from data_out.engine.runner import AudienceRunner, Resolver
from data_out.errors import REQUEST_NEXT_STEP, ConfigurationError
from data_out.history import history_rows, history_table
from data_out.metrics.pipeline import MetricsPipeline
from data_out.modes import InvalidMode, SyncMode, parse_mode
from data_out.timestamps import parse_timestamp

log = logging.getLogger(__name__)


class InvalidRequest(ConfigurationError, ValueError):
    """The trigger's parameters do not describe valid work; the message lists every problem."""

    next_step = REQUEST_NEXT_STEP


@dataclass
class WorkItem:
    audience: str
    destinations: list[str] | None
    mode: str
    dry_run: bool
    guard_override_reason: str | None = None
    as_of: str | None = None
    notes: list[str] = field(default_factory=list)


def validate(
    params: dict[str, Any], audiences: LoadResult
) -> tuple[list[dict[str, Any]], tuple[dt.datetime, dt.datetime] | None]:
    """Check the form; returns the work items and the metrics backfill range (or ``None``)."""
    problems = []
    names = list(params.get("audiences") or [])
    wanted_dests = list(params.get("destinations") or [])
    mode = SyncMode.INCREMENTAL
    try:
        mode = parse_mode(params.get("mode"))
    except InvalidMode as exc:
        problems.append(str(exc))
    known = sorted(audiences.audiences)
    for n in names:
        if n not in audiences.audiences:
            problems.append(f"audience {n!r} is not loaded; known audiences: {', '.join(known)}")
    items = []
    for n in names:
        loaded = audiences.audiences.get(n)
        if loaded is None:
            continue
        labels = [d.label for d in loaded.config.destinations]
        chosen = [d for d in wanted_dests if d in labels]
        if wanted_dests and not chosen:
            problems.append(f"audience {n!r} has none of the destinations {wanted_dests}; it has {labels}")
        if loaded.config.status == "retired":
            problems.append(f"audience {n!r} is retired; its exit is done by the lifecycle DAG")
        items.append(
            asdict(
                WorkItem(
                    n,
                    chosen or None,
                    mode.value,
                    bool(params.get("dry_run")),
                    params.get("guard_override_reason") or None,
                    params.get("as_of") or None,
                )
            )
        )
    window = _metrics_window(params, problems)
    if not items and window is None and not problems:
        problems.append("nothing to do: choose audiences, or a metrics_from/metrics_to range")
    if problems:
        raise InvalidRequest("; ".join(problems))
    return items, window


def _metrics_window(params: dict[str, Any], problems: list[str]) -> tuple[dt.datetime, dt.datetime] | None:
    """The metrics backfill range the form asks for (``None``: none); what is wrong with it joins ``problems``,
    so the trigger's answer lists every problem at once."""
    start, end = params.get("metrics_from"), params.get("metrics_to")
    if bool(start) != bool(end):
        problems.append("give both metrics_from and metrics_to for a metrics backfill, or neither")
        return None
    if not (start and end):
        return None
    s, e = parse_timestamp(start), parse_timestamp(end)
    if e <= s:
        problems.append(f"metrics_to ({end}) must be after metrics_from ({start})")
    return s, e


def run_item(
    engine: Engine,
    audiences: LoadResult,
    resolve: Resolver,
    item: dict[str, Any],
    holder: str,
    default_as_of: dt.datetime,
) -> dict[str, Any]:
    """One audience in the requested mode; returns the run id and prints its recent history."""
    runner = AudienceRunner(engine, audiences, item["audience"], resolve)
    as_of = parse_timestamp(item["as_of"]) if item.get("as_of") else default_as_of
    if item["dry_run"]:
        run_id = runner.dry_run(holder, as_of, SyncMode(item["mode"]), item["destinations"])
    else:
        run_id = runner.run(holder, as_of, item["guard_override_reason"], SyncMode(item["mode"]), item["destinations"])
    log.info("history of %s:\n%s", item["audience"], history_table(history_rows(engine, item["audience"], 5)))
    return {"audience": item["audience"], "run_id": run_id, "dry_run": item["dry_run"], "mode": item["mode"]}


def backfill_metrics(pipeline: MetricsPipeline, warehouse: Engine, start: dt.datetime, end: dt.datetime) -> dict:
    """Replay the metrics pipeline hour by hour over ``[start, end)``; idempotent, so safe to repeat."""
    totals = {"hours": 0, "loaded": 0, "tasks": 0, "segment": 0, "webhook": 0}
    t = start
    while t < end:
        u = min(t + dt.timedelta(hours=1), end)
        totals["loaded"] += pipeline.load_exports(warehouse, t, u)
        totals["tasks"] += pipeline.write_send_log(warehouse, t, u)
        totals["segment"] += pipeline.route_segment(t, u)
        totals["webhook"] += pipeline.route_webhook(t, u)
        pipeline.count_volumes(t, u)
        totals["hours"] += 1
        t = u
    return totals


def retire_due(engine: Engine, audiences: LoadResult, resolve: Resolver, holder: str) -> list[str]:
    """Retire (once) every audience whose file says ``status: retired`` and that still has members out."""
    with engine.connect() as conn:
        done = set(
            conn.execute(select(state.lifecycle.c.audience).where(state.lifecycle.c.status == "retired")).scalars()
        )
    retired = []
    for name, loaded in sorted(audiences.audiences.items()):
        if loaded.config.status != "retired" or name in done:
            continue
        AudienceRunner(engine, audiences, name, resolve).retire(f"{holder}/{name}")
        retired.append(name)
    return retired
