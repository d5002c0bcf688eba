"""Audience lifecycle (Airflow DAG ``data_out_lifecycle``), hourly.

An audience whose file says ``status: retired`` has no sync DAG any more; this DAG performs its exit
once: every acknowledged member is removed from every destination, the snapshot is dropped and the
retirement is recorded in ``do_lifecycle``. A paused audience keeps its members and only runs when
triggered. Renaming to a new version (``_v2``) is a new audience: both run side by side until the old
file is set to ``retired``.
"""

from __future__ import annotations

from airflow.sdk import get_current_context, task

from data_out.dag_factory import platform_dag

with platform_dag("data_out_lifecycle", "@hourly", __doc__, tags=["lifecycle"]):

    @task
    def retire_audiences() -> list[str]:
        from data_out.config import load_audiences
        from data_out.engine.lease import run_holder
        from data_out.hooks.state import DataOutStateHook, connection_info
        from data_out.operations import retire_due

        context = get_current_context()
        holder = run_holder(context["dag_run"].dag_id, context["dag_run"].run_id)
        return retire_due(DataOutStateHook().get_conn(), load_audiences(), connection_info, holder)

    retire_audiences()
