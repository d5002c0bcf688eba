"""Daily reconciliation of every active audience and destination (Airflow DAG ``data_out_reconciliation``).

Compares the latest source snapshot, the acknowledged state and the size each destination reports;
checks day-over-day drift and the median of recent runs, match rate, holdout share, reject and failed
sync rates and message-metric volumes against the thresholds in each audience file; rebuilds a
destination from the warehouse when its gap breaches; then emails new breaches, repairs and recoveries
through the ``smtp_default`` connection. Results are in the state tables ``do_recon`` and
``do_recon_measure``.
"""

from __future__ import annotations

from data_out.dag_factory import as_of_param, platform_dag
from data_out.operators.reconcile import NotifyOperator, ReconcileOperator

with platform_dag(
    "data_out_reconciliation",
    "0 6 * * *",
    __doc__,
    tags=["reconciliation"],
    params={"as_of": as_of_param("Evaluate (and repair) as of this UTC time; default: the run's end.")},
):
    ReconcileOperator(task_id="reconcile") >> NotifyOperator(task_id="notify")
