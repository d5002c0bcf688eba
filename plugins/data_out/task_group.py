"""The tasks of one audience sync, built once for both the audience DAGs and people's own DAGs.

``add_audience_sync_tasks`` wires stage -> (plan -> push, mapped over shards) per destination -> finish
into whatever DAG or TaskGroup is open; ``AudienceSyncTaskGroup`` wraps them in a TaskGroup so a sync
can follow, say, the dbt models that build the audience's source table.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TaskGroup

from data_out.config import AudienceConfig, LoadResult, load_audiences
from data_out.destinations import destination_class
from data_out.operators.audience import (
    FinishRunOperator,
    PlanDestinationOperator,
    PushDestinationOperator,
    StageAudienceOperator,
)

DEFAULT_STATE_CONN_ID = "data_out_state"


def add_audience_sync_tasks(
    config: AudienceConfig, *, state_conn_id: str = DEFAULT_STATE_CONN_ID
) -> tuple[StageAudienceOperator, FinishRunOperator]:
    """Add one audience's sync tasks to the open DAG or TaskGroup; returns its first and last task.

    Task ids are read back from the created tasks (``stage.task_id``), so the XCom pulls between steps
    stay right when a TaskGroup prefixes them.
    """
    c = config
    stage = StageAudienceOperator(task_id="stage", audience=c.name, state_conn_id=state_conn_id)
    finish = FinishRunOperator(
        task_id="finish", audience=c.name, stage_task_id=stage.task_id, state_conn_id=state_conn_id
    )
    for d in c.destinations:
        # The pool caps concurrent calls per vendor across every worker and audience. The plan task
        # takes a slot too: when it finds an interrupted run's batches it pushes them first.
        pool = destination_class(d.type).pool
        with TaskGroup(group_id=d.label, tooltip=f"{d.type} destination"):
            plan = PlanDestinationOperator(
                task_id="plan",
                audience=c.name,
                destination=d.label,
                stage_task_id=stage.task_id,
                state_conn_id=state_conn_id,
                pool=pool,
            )
            push = PushDestinationOperator.partial(
                task_id="push",
                audience=c.name,
                destination=d.label,
                plan_task_id=plan.task_id,
                state_conn_id=state_conn_id,
                pool=pool,
                map_index_template="shard {{ task.shard }}",
            ).expand(shard=plan.output)  # one mapped push per key-hash shard the plan returns
            stage >> plan
            push >> finish
    if not c.destinations:
        stage >> finish
    return stage, finish


class AudienceSyncTaskGroup(TaskGroup):
    """Sync one audience inside your own DAG: the same tasks its audience DAG runs, in a TaskGroup.

    ::

        with DAG("dbt_then_audiences", schedule="@daily", ...):
            dbt_build = BashOperator(task_id="dbt_build", bash_command="dbt build")
            dbt_build >> AudienceSyncTaskGroup("recent_purchasers_7d_v1")

    The audience is read from its YAML file when the DAG is parsed (a file that does not load fails the
    parse with the reason). A successful sync updates ``audience_asset(name)``, with the run's counts as
    the event's ``extra``. Runs of the group and of the audience's own DAG share the audience's lease,
    so they never sync it at the same time (the later one fails, saying another run holds it).
    The run's ``as_of`` is the ``as_of`` param if the DAG has one, else the data interval's end.

    :param audience: the audience's name (the YAML file's stem)
    :param group_id: default ``sync_<audience>``
    :param state_conn_id: connection of the Data Out state database
    :param audiences: already loaded audience files (default: load ``include/audiences``)
    :param kwargs: passed to ``TaskGroup`` (``tooltip``, ``default_args``, ...)
    """

    def __init__(
        self,
        audience: str,
        *,
        group_id: str | None = None,
        state_conn_id: str = DEFAULT_STATE_CONN_ID,
        audiences: LoadResult | None = None,
        **kwargs: Any,
    ) -> None:
        config = (audiences or load_audiences()).get(audience).config
        kwargs.setdefault("tooltip", f"Data Out: sync audience {audience}")
        super().__init__(group_id=group_id or f"sync_{audience}", **kwargs)
        with self:
            self.stage, self.finish = add_audience_sync_tasks(config, state_conn_id=state_conn_id)
