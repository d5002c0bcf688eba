"""Message metrics into send tasks (Airflow DAG ``data_out_message_metrics``), hourly.

For each data interval: load Customer.io's exports already in the warehouse, turn the metric events
that arrived in the interval (webhooks land through the ``/data-out/customerio`` receiver) into send
tasks with deterministic dedupe keys, write them to the warehouse send log, route them to Segment and to
the send-task webhook as ``include/metrics/routing.yaml`` says, and recount daily volumes per metric for
the reconciliation's drift checks. Every step is idempotent per interval, so retries, replays and
``airflow backfill create --dag-id data_out_message_metrics --from-date ... --to-date ...`` never
duplicate a task. Writing the send log updates the Asset ``x-data-out://pipeline/message_metrics``,
which the exposure audiences (``schedule: asset:message_metrics``) are scheduled on.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable

from data_out.assets import MESSAGE_METRICS
from data_out.dag_factory import platform_dag
from data_out.operators.metrics import MetricsStepOperator

with platform_dag(
    "data_out_message_metrics",
    # data intervals, not trigger times: each run owns [data_interval_start, data_interval_end)
    CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    __doc__,
    tags=["metrics"],
):
    load = MetricsStepOperator(task_id="load_exports", step="load_exports")
    # the send log is what exposure audiences (schedule: asset:message_metrics) read: they run once it is written
    log = MetricsStepOperator(task_id="write_send_log", step="write_send_log", outlets=[MESSAGE_METRICS])
    segment = MetricsStepOperator(task_id="route_segment", step="route_segment")
    webhook = MetricsStepOperator(task_id="route_webhook", step="route_webhook")
    volumes = MetricsStepOperator(task_id="count_volumes", step="count_volumes")
    load >> log >> [segment, webhook] >> volumes
