"""Data Out's public API for your own DAGs: import from here, and only from here.

- ``AudienceSyncTaskGroup``: sync one audience inside your DAG (after the dbt models that feed it, say).
- ``audience_asset(name)``: the Asset each successful sync of ``name`` updates, with the run's counts
  (``members``, ``held_out``, ``added``, ``removed``, ``rejected``, per-destination figures) as the
  event's ``extra``; schedule downstream DAGs on it.
- ``MESSAGE_METRICS``: the Asset the message-metrics pipeline updates once it has written the send log.
- The step operators, for wiring a sync by hand: ``StageAudienceOperator`` ->
  ``PlanDestinationOperator`` -> ``PushDestinationOperator`` (mapped over the plan's shards) ->
  ``FinishRunOperator``; ``add_audience_sync_tasks`` wires them exactly as the audience DAGs do.

Every other module of the package stays importable but is internal: it may change without notice.
See ``docs/using-from-your-dags.md``.
"""

from __future__ import annotations

from data_out.assets import MESSAGE_METRICS, audience_asset
from data_out.operators.audience import (
    FinishRunOperator,
    PlanDestinationOperator,
    PushDestinationOperator,
    StageAudienceOperator,
)
from data_out.task_group import AudienceSyncTaskGroup, add_audience_sync_tasks

__all__ = [
    "MESSAGE_METRICS",
    "AudienceSyncTaskGroup",
    "FinishRunOperator",
    "PlanDestinationOperator",
    "PushDestinationOperator",
    "StageAudienceOperator",
    "add_audience_sync_tasks",
    "audience_asset",
]
