"""Operators of the daily reconciliation DAG: reconcile (checks and repair), then notify."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from data_out import alerts, state
from data_out.config import load_audiences
from data_out.hooks.state import DataOutStateHook, connection_info
from data_out.operators.audience import as_of_from_context
from data_out.reconcile import ALL, CheckResult, Finding, Reconciler, ReconResult


class ReconcileOperator(BaseOperator):
    """Measure every active (audience, destination), run the checks, repair gaps, record the results.

    :param repair: rebuild destinations whose gaps breach (per-destination ``drift.repair`` also applies)
    """

    template_fields = ("repair",)

    def __init__(self, *, repair: bool = True, state_conn_id: str = "data_out_state", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repair = repair
        self.state_conn_id = state_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        engine = DataOutStateHook(self.state_conn_id).get_conn()
        now = as_of_from_context(context)
        result = Reconciler(engine, load_audiences(), connection_info, now).run(
            dag_run_id=context["dag_run"].run_id, repair=bool(self.repair)
        )
        self.log.info(
            "reconciliation %d: %d findings, %d breaches, %d repaired",
            result.recon_id,
            len(result.findings),
            len(result.breaches),
            len(result.repaired),
        )
        return {"recon_id": result.recon_id, "breaches": len(result.breaches), "repaired": len(result.repaired)}


class NotifyOperator(BaseOperator):
    """Announce new breaches, repairs and recoveries of a reconciliation run by email."""

    def __init__(
        self,
        *,
        reconcile_task_id: str = "reconcile",
        smtp_conn_id: str = "smtp_default",
        state_conn_id: str = "data_out_state",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reconcile_task_id = reconcile_task_id
        self.smtp_conn_id = smtp_conn_id
        self.state_conn_id = state_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        recon_id = context["ti"].xcom_pull(task_ids=self.reconcile_task_id)["recon_id"]
        engine = DataOutStateHook(self.state_conn_id).get_conn()
        result = load_result(engine, recon_id)
        items = alerts.transition(engine, result)
        audiences = load_audiences().audiences
        recipients = {name: a.config.alerts.recipients for name, a in audiences.items()}
        emails = alerts.build_emails(items, recipients, recon_id)
        if emails:
            smtp = connection_info(self.smtp_conn_id)
            for email in emails:
                alerts.send(smtp, email)
                self.log.info("sent %r to %d recipient(s)", email.subject, len(email.recipients))
        with engine.begin() as conn:
            conn.execute(state.recon_run.update().where(state.recon_run.c.id == recon_id).values(emails=len(emails)))
        return {"emails": len(emails), "items": len(items)}


def load_result(engine: Any, recon_id: int) -> ReconResult:
    """Rebuild a run's findings from ``do_recon`` (the notify task runs in its own process)."""
    r = state.recon
    with engine.connect() as conn:
        rows = conn.execute(r.select().where(r.c.recon_id == recon_id).order_by(r.c.id)).mappings().all()
    result = ReconResult(recon_id)
    result.findings = [
        Finding(
            row["audience"],
            row["destination"],
            CheckResult(row["check"], row["value"], row["threshold"], row["status"], row["detail"] or ""),
            bool(row["repaired"]),
        )
        for row in rows
    ]
    return result


__all__ = ["ALL", "NotifyOperator", "ReconcileOperator", "load_result"]
