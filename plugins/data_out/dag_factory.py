"""Build one Airflow DAG per audience from its YAML file.

DAG files stay thin: they call ``build_audience_dags`` and put the result in their globals.

Per destination: ``plan`` -> ``push`` mapped over the key-hash shards the plan returns (one for a
small diff) -> ``finish``. Both run in the destination type's Airflow pool (``deploy/pools.json``).
The tasks come from ``data_out.task_group``, which also builds them into people's own DAGs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Param

from data_out.assets import audience_schedule
from data_out.config import LoadedAudience, LoadResult, load_audiences
from data_out.operators.audience import notify_sync_failure
from data_out.task_group import add_audience_sync_tasks

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def as_of_param(description: str) -> Param:
    """The optional ``as_of`` every Data Out DAG accepts: evaluate at this UTC time instead of the run's."""
    return Param(None, type=["null", "string"], format="date-time", description=description)


RUN_PARAMS = {
    "as_of": as_of_param("Evaluate the source as of this UTC time (ISO 8601). Default: the run's data interval end."),
    "guard_override_reason": Param(
        None,
        type=["null", "string"],
        maxLength=500,
        description="Let this one run remove more than the mass-removal guard allows; the reason is recorded.",
    ),
}


def platform_dag(dag_id: str, schedule: Any, doc: str | None, **kwargs: Any) -> DAG:
    """The settings every Data Out DAG that is not an audience DAG shares (owner, start, one run at a time)."""
    default_args = {"owner": "data-platform", "retries": 2, "retry_delay": dt.timedelta(minutes=2)}
    default_args.update(kwargs.pop("default_args", {}))
    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        tags=["data-out", *kwargs.pop("tags", [])],
        doc_md=doc,
        **kwargs,
    )


def _doc(loaded: LoadedAudience, module_doc: str | None) -> str:
    c = loaded.config
    dests = "\n".join(f"- `{d.label}` ({d.type}, include: {d.include})" for d in c.destinations)
    holdout = f"{c.holdout.percent}% (salt `{c.holdout.salt}`)" if c.holdout else "none"
    return (
        f"# {c.name}\n\n{c.purpose}\n\n"
        f"- owner: {c.owner}\n- status: {c.status}\n- defined in: `{loaded.path.name}`\n"
        f"- holdout: {holdout}\n- exclusions: {', '.join(c.exclusions) or 'none'}\n\n"
        f"## Destinations\n{dests}\n\n{module_doc or ''}"
    )


def build_audience_dag(loaded: LoadedAudience, module_doc: str | None = None) -> DAG:
    c = loaded.config
    default_args: dict[str, Any] = {
        "owner": c.owner,
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "on_failure_callback": notify_sync_failure,
    }
    schedule = audience_schedule(c)  # paused: runs only when triggered; asset:<pipeline>: after that pipeline
    with DAG(
        dag_id=c.dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        tags=sorted({"data-out", "audience", c.status, *(d.type for d in c.destinations), *c.tags}),
        doc_md=_doc(loaded, module_doc),
        params=RUN_PARAMS,
        is_paused_upon_creation=c.status != "active",
    ) as dag:
        add_audience_sync_tasks(c)
    return dag


def build_audience_dags(audiences: LoadResult | None = None, module_doc: str | None = None) -> dict[str, DAG]:
    """One DAG per active or paused audience; retired audiences get none."""
    audiences = audiences or load_audiences()
    return {
        loaded.config.dag_id: build_audience_dag(loaded, module_doc)
        for loaded in audiences.audiences.values()
        if loaded.config.status != "retired"
    }
