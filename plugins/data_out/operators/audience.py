"""Operators that drive one audience run: stage -> (plan -> push) per destination -> finish.

They are thin: each resolves connections and the audience config, then calls one ``AudienceRunner``
step. XCom carries ids and counts only, never identifiers.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

from data_out import alerts
from data_out.asset_names import audience_uri, run_counts
from data_out.assets import audience_asset
from data_out.config import load_audiences
from data_out.engine.lease import DEFAULT_TTL, LeaseHeld, run_holder
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.errors import DataOutError, next_step_of
from data_out.hooks.state import DataOutStateHook, connection_info
from data_out.redact import scrub
from data_out.timestamps import parse_timestamp

log = logging.getLogger(__name__)
SMTP_CONN_ENV = "DATA_OUT_SMTP_CONN_ID"


class TaskFailed(AirflowFailException):
    """Fails the task without retries for a terminal ``DataOutError``, which it carries as ``error``.

    Its message is the error's; the failure email reads the next step from ``error``.
    """

    def __init__(self, error: DataOutError) -> None:
        super().__init__(str(error))
        self.error = error
        self.next_step = error.next_step


@contextmanager
def routed() -> Iterator[None]:
    """Route a step's errors by type: a retryable ``DataOutError`` is raised again (Airflow's retries run), a
    terminal one fails the task at once (``TaskFailed``); any other error is a bug, left to the retry policy."""
    try:
        yield
    except DataOutError as exc:
        if exc.retryable:
            raise
        raise TaskFailed(exc) from None


def as_of_from_context(context: Any) -> dt.datetime:
    """The point in time the source query is evaluated at: the ``as_of`` param, else the data interval end."""
    explicit = (context.get("params") or {}).get("as_of")
    if explicit:
        return parse_timestamp(explicit)
    for key in ("data_interval_end", "logical_date"):
        if context.get(key):
            return context[key]
    return dt.datetime.now(dt.UTC)


class AudienceStepOperator(BaseOperator):
    """Base for the steps: resolves the runner and the lease holder for this DAG run.

    :param audience: audience name (templated)
    :param state_conn_id: connection of the Data Out state database
    """

    template_fields: tuple[str, ...] = ("audience",)
    ui_color = "#e8f0fe"

    def __init__(self, *, audience: str, state_conn_id: str = "data_out_state", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audience = audience
        self.state_conn_id = state_conn_id

    def runner(self) -> AudienceRunner:
        engine = DataOutStateHook(self.state_conn_id).get_conn()
        return AudienceRunner(engine, load_audiences(), self.audience, connection_info)

    @staticmethod
    def holder(context: Any) -> str:
        dag_run = context["dag_run"]
        return run_holder(dag_run.dag_id, dag_run.run_id)

    @staticmethod
    def override_reason(context: Any) -> str | None:
        return (context.get("params") or {}).get("guard_override_reason") or None

    def execute(self, context: Any) -> Any:
        with routed():
            return self.step(context)

    def step(self, context: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


#: how often a run waiting for its turn looks again (the task frees its worker slot meanwhile)
TURN_POKE = dt.timedelta(seconds=15)
#: how long a run waits for its turn before failing: longer than a lease outlives a killed worker
TURN_TIMEOUT = DEFAULT_TTL + dt.timedelta(hours=1)


class StageAudienceOperator(AudienceStepOperator):
    """Wait for this run's turn, take the audience's lease, open a run record, and stage the snapshot.

    Runs of one audience take turns in logical-date order. Airflow's ``max_active_runs=1`` orders
    scheduled and manual runs, but a backfill counts its runs apart (``airflow backfill create`` starts
    up to its own ``--max-active-runs``, 10 by default) and a backfill run can meet a scheduled one. So
    while an earlier run of this DAG is still running, or another run holds the lease, the stage task
    reschedules itself (``up_for_reschedule``, no worker slot held) every ``turn_poke`` and logs why,
    failing only after ``turn_timeout``.

    :param turn_poke: how often to look again while waiting for the turn
    :param turn_timeout: how long to wait for the turn before failing
    """

    def __init__(
        self, *, turn_poke: dt.timedelta = TURN_POKE, turn_timeout: dt.timedelta = TURN_TIMEOUT, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.turn_poke = turn_poke
        self.turn_timeout = turn_timeout

    def step(self, context: Any) -> dict[str, Any]:
        runner, holder = self.runner(), self.holder(context)
        earlier = context["ti"].get_previous_dagrun(state="running")
        if earlier is not None:
            self._wait_turn(context, f"the earlier run {earlier.run_id!r} of this DAG is still running")
        try:
            run_id = runner.start(holder, as_of_from_context(context))
        except LeaseHeld as exc:
            self._wait_turn(context, str(exc))
        # pushed before staging so that finish can close the run and free the lease even if it fails
        context["ti"].xcom_push(key="run_id", value=run_id)
        stats = runner.stage(run_id, holder)
        return {"run_id": run_id, "members": stats.members, "held_out": stats.held_out}

    def _wait_turn(self, context: Any, why: str) -> None:
        """Reschedule this task to look again in ``turn_poke``; fail once it has waited ``turn_timeout``."""
        now = dt.datetime.now(dt.UTC)
        first = context["ti"].get_first_reschedule_date(context) or now
        waited = now - first
        if waited >= self.turn_timeout:
            raise LeaseHeld(f"{why}; gave up waiting for this run's turn after {waited}")
        log.info(
            "Waiting for this run's turn: %s. Looking again in %ss (waited %s of %s).",
            why,
            int(self.turn_poke.total_seconds()),
            str(waited).split(".")[0],
            self.turn_timeout,
        )
        raise AirflowRescheduleException(now + self.turn_poke)


class PlanDestinationOperator(AudienceStepOperator):
    """Diff the snapshot against what the destination acknowledged; apply the mass-removal guard.

    Returns the push shards (``[0, 1, ...]``) the push task is mapped over; the plan's ids and counts
    go to the XCom key ``plan``.
    """

    template_fields = ("audience", "destination")

    def __init__(self, *, destination: str, stage_task_id: str = "stage", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.destination = destination
        self.stage_task_id = stage_task_id

    def step(self, context: Any) -> list[int]:
        run_id = context["ti"].xcom_pull(task_ids=self.stage_task_id, key="run_id")
        plan = self.runner().plan(run_id, self.destination, self.holder(context), self.override_reason(context))
        summary = {
            "sync_id": plan.sync_id,
            "adds": plan.adds,
            "removes": plan.removes,
            "batches": plan.batches,
            "shards": plan.shards,
        }
        context["ti"].xcom_push(key="plan", value=summary)
        return list(range(plan.shards))  # never empty: an empty list would skip the push and its bookkeeping


class PushDestinationOperator(AudienceStepOperator):
    """Push one shard of the planned batches and commit what the destination acknowledged.

    Mapped over the plan's shards (``partial(...).expand(shard=plan.output)``), in the destination's
    pool, so Celery or Kubernetes workers share a large push while the pool caps calls per vendor.

    :param shard: the push shard this task drains; ``None`` drains all of them
    """

    template_fields = ("audience", "destination")

    def __init__(self, *, destination: str, plan_task_id: str, shard: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.destination = destination
        self.plan_task_id = plan_task_id
        self.shard = shard

    def step(self, context: Any) -> dict[str, Any]:
        planned = context["ti"].xcom_pull(task_ids=self.plan_task_id, key="plan")
        r = self.runner().push(
            planned["sync_id"], self.destination, self.holder(context), self.override_reason(context), shard=self.shard
        )
        return {
            "added": r.added,
            "removed": r.removed,
            "refreshed": r.refreshed,
            "rejected": r.rejected,
            "batches": r.batches,
        }


class FinishRunOperator(AudienceStepOperator):
    """Close the run record and release the lease; fails the DAG run if any step failed.

    On success it updates the audience's Asset (``data_out.assets.audience_asset``) with the run's
    counts as the event's ``extra``, so DAGs scheduled on that Asset run after each sync. A failed run
    emits no event.

    :param emit_asset: add the audience's Asset to ``outlets`` (default); ``False`` for no event
    """

    def __init__(self, *, stage_task_id: str = "stage", emit_asset: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        if emit_asset:
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), audience_asset(kwargs["audience"])]
        super().__init__(**kwargs)
        self.stage_task_id = stage_task_id

    def step(self, context: Any) -> dict[str, Any]:
        run_id = context["ti"].xcom_pull(task_ids=self.stage_task_id, key="run_id")
        if run_id is None:
            raise AirflowFailException(
                f"audience {self.audience}: the run did not start (see the stage task's log), so nothing was synced"
            )
        runner = self.runner()
        result = runner.finish(run_id, self.holder(context))
        uri = audience_uri(self.audience)
        for outlet in self.outlets:
            if isinstance(outlet, Asset) and outlet.uri == uri:
                context["outlet_events"][outlet].extra = run_counts(runner.engine, run_id)
        return result


def notify_sync_failure(context: Any) -> None:
    """``on_failure_callback`` of the audience DAGs: email the reason and the next step, never raise."""
    try:
        ti = context["ti"]
        audience = str(ti.dag_id).removeprefix("audience__")
        exc = context.get("exception")
        if ti.task_id == "finish" and isinstance(getattr(exc, "error", exc), RunFailed):
            return  # finish only mirrors a failure whose own task already sent the email
        reason = scrub(str(exc or "unknown error"), limit=1500)
        loaded = load_audiences().audiences.get(audience)
        recipients = list(loaded.config.alerts.recipients) if loaded else []
        email = alerts.failure_email(audience, ti.task_id, reason, next_step_of(exc), recipients)
        alerts.send(connection_info(os.environ.get(SMTP_CONN_ENV, "smtp_default")), email)
        log.info("sent the failure email for %s/%s", audience, ti.task_id)
    except Exception:  # an alert that cannot be sent must not hide the original failure
        log.warning("could not send the sync failure email", exc_info=True)
