"""Manual operations for data engineers (Airflow DAG ``data_out_operations``): trigger with the form.

Choose audiences (and optionally destinations), a mode (``incremental``; ``full_resync`` re-sends
everyone a destination should have; ``replace`` uses the vendor's replace API), ``dry_run`` to see what
would happen without changing anything, a guard override with its reason, and a ``metrics_from`` /
``metrics_to`` range to replay the message-metrics pipeline. Also usable from the CLI:
``airflow dags trigger data_out_operations --conf '{"audiences": ["lapsed_75d_v1"], "dry_run": true}'``.
Each completed sync (not a dry run) updates the audience's Asset, as its own DAG's runs do.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from data_out.asset_names import run_counts
from data_out.assets import AUDIENCE_SYNCS, audience_asset
from data_out.config import load_audiences
from data_out.dag_factory import platform_dag
from data_out.modes import TRIGGER_MODES
from data_out.operations import InvalidRequest, backfill_metrics, run_item, validate

AUDIENCE_NAMES = sorted(load_audiences().audiences)

with platform_dag(
    "data_out_operations",
    None,
    __doc__,
    tags=["operations"],
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": dt.timedelta(minutes=1)},
    params={
        "audiences": Param(
            [],
            type="array",
            items={"type": "string", "enum": AUDIENCE_NAMES},
            description="Audiences to sync, resync, replace or preview.",
        ),
        "destinations": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Destination labels to limit to (empty: all of each audience's).",
        ),
        "mode": Param(TRIGGER_MODES[0].value, type="string", enum=[m.value for m in TRIGGER_MODES]),
        "dry_run": Param(False, type="boolean", description="Report what would happen; change nothing."),
        "guard_override_reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            description="Let a mass removal through for this run; recorded.",
        ),
        "as_of": Param(None, type=["null", "string"], format="date-time"),
        "metrics_from": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="Replay the message-metrics pipeline from this time...",
        ),
        "metrics_to": Param(None, type=["null", "string"], format="date-time", description="...to this time."),
    },
):

    @task
    def plan() -> dict[str, Any]:
        context = get_current_context()
        try:
            items, window = validate(dict(context["params"]), load_audiences())
        except InvalidRequest as exc:
            raise AirflowFailException(str(exc)) from None
        return {"items": items, "window": [w.isoformat() for w in window] if window else None}

    @task
    def audience_items(planned: dict[str, Any]) -> list[dict[str, Any]]:
        return planned["items"]

    @task(max_active_tis_per_dagrun=2, outlets=[AUDIENCE_SYNCS])
    def run_audience(item: dict[str, Any]) -> dict[str, Any]:
        from data_out.engine.lease import run_holder
        from data_out.hooks.state import DataOutStateHook, connection_info
        from data_out.operators.audience import as_of_from_context

        context = get_current_context()
        holder = run_holder(context["dag_run"].dag_id, context["dag_run"].run_id)
        engine = DataOutStateHook().get_conn()
        result = run_item(engine, load_audiences(), connection_info, item, holder, as_of_from_context(context))
        if not result["dry_run"]:  # a failed run raised above: only a completed sync updates the audience's Asset
            counts = run_counts(engine, result["run_id"])
            context["outlet_events"][AUDIENCE_SYNCS].add(audience_asset(item["audience"]), extra=counts)
        return result

    @task
    def replay_metrics(planned: dict[str, Any]) -> dict[str, Any] | None:
        if not planned["window"]:
            return None
        from data_out.connections import engine_for
        from data_out.hooks.state import DataOutStateHook, connection_info
        from data_out.metrics.pipeline import MetricsPipeline, load_routing
        from data_out.timestamps import parse_timestamp

        routing, path = load_routing()
        pipeline = MetricsPipeline(DataOutStateHook().get_conn(), routing, connection_info, path)
        start, end = (parse_timestamp(v) for v in planned["window"])
        return backfill_metrics(pipeline, engine_for(connection_info(routing.warehouse_conn_id)), start, end)

    # Airflow passes plan()'s dict once it ran; its @task typing sees the XComArg (apache/airflow#39514)
    planned = plan()
    run_audience.expand(item=audience_items(planned))  # type: ignore[arg-type]  # XComArg resolved at run time
    replay_metrics(planned)  # type: ignore[arg-type]  # XComArg resolved at run time
