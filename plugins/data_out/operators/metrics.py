"""Operators of the message-metrics DAG: each works on its run's data interval, so reruns and
``airflow backfill create`` over a date range are idempotent."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, BaseOperator

from data_out.connections import engine_for
from data_out.hooks.state import DataOutStateHook, connection_info
from data_out.metrics.pipeline import MetricsPipeline, load_routing
from data_out.state.errors import translated


class MetricsStepOperator(BaseOperator):
    """Run one step of the metrics pipeline over ``[data_interval_start, data_interval_end)``.

    :param step: one of ``load_exports``, ``write_send_log``, ``route_segment``, ``route_webhook``,
        ``count_volumes``
    """

    template_fields = ("step",)
    STEPS = ("load_exports", "write_send_log", "route_segment", "route_webhook", "count_volumes")

    def __init__(self, *, step: str, state_conn_id: str = "data_out_state", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if step not in self.STEPS:
            raise ValueError(f"unknown metrics step {step!r}; one of {self.STEPS}")
        self.step = step
        self.state_conn_id = state_conn_id

    def execute(self, context: Any) -> Any:
        start, end = context["data_interval_start"], context["data_interval_end"]
        routing, path = load_routing()
        pipeline = MetricsPipeline(DataOutStateHook(self.state_conn_id).get_conn(), routing, connection_info, path)
        with translated(f"metrics step {self.step}"):  # a driver's DETAIL can quote a recipient's row
            if self.step in ("load_exports", "write_send_log"):
                wh = engine_for(connection_info(routing.warehouse_conn_id))
                result = getattr(pipeline, self.step)(wh, start, end)
            else:
                result = getattr(pipeline, self.step)(start, end)
        count = result if isinstance(result, int) else len(result)
        self.log.info("%s over [%s, %s): %s", self.step, start, end, count)
        for outlet in self.outlets:  # e.g. data_out.assets.MESSAGE_METRICS on write_send_log
            if isinstance(outlet, Asset):
                extra = {"step": self.step, "rows": count, "interval": [start.isoformat(), end.isoformat()]}
                context["outlet_events"][outlet].extra = extra
        return count
