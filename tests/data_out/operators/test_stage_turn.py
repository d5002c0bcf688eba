"""The stage task waits for its run's turn (earlier run still running, or the lease held) instead of failing.

The operator is driven directly with a stand-in task instance that answers the two questions the Task
SDK answers under a real scheduler (the previous running DAG run, the first reschedule date); the
real-scheduler test (tests/dags/test_real_scheduler.py) shows the same under Airflow with a backfill.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

from data_out.engine import lease
from data_out.operators import audience as ops

HOLDER = "audience__a_v1/backfill__2026-12-04T00:00:00+00:00"


@dataclass
class FakeRun:
    dag_id: str = "audience__a_v1"
    run_id: str = "backfill__2026-12-04T00:00:00+00:00"


@dataclass
class FakeTI:
    previous_running: FakeRun | None = None
    first_reschedule: dt.datetime | None = None
    xcom: dict[str, Any] = field(default_factory=dict)

    def get_previous_dagrun(self, state: str | None = None) -> FakeRun | None:
        assert state == "running"
        return self.previous_running

    def get_first_reschedule_date(self, context: Any) -> dt.datetime | None:
        return self.first_reschedule

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class FakeRunner:
    def __init__(self, holder_of_lease: str | None = None) -> None:
        self.holder_of_lease = holder_of_lease
        self.started: list[str] = []

    def start(self, holder: str, as_of: dt.datetime) -> int:
        if self.holder_of_lease and self.holder_of_lease != holder:
            raise lease.LeaseHeld(f"audience a_v1 is being synced by run {self.holder_of_lease!r}")
        self.started.append(holder)
        return 7

    def stage(self, run_id: int, holder: str) -> Any:
        return type("Stats", (), {"members": 3, "held_out": 1})()


def run_stage(monkeypatch: pytest.MonkeyPatch, ti: FakeTI, runner: FakeRunner, **kw: Any) -> Any:
    op = ops.StageAudienceOperator(task_id="stage", audience="a_v1", **kw)
    monkeypatch.setattr(op, "runner", lambda: runner)
    context = {"ti": ti, "dag_run": FakeRun(), "params": {"as_of": "2026-12-05T00:00:00Z"}}
    return op.execute(context)


def test_a_run_waits_while_an_earlier_run_of_its_dag_is_running(monkeypatch, caplog):
    ti, runner = FakeTI(previous_running=FakeRun(run_id="backfill__2026-12-03T00:00:00+00:00")), FakeRunner()
    before = dt.datetime.now(dt.UTC)
    with caplog.at_level(logging.INFO), pytest.raises(AirflowRescheduleException) as exc:
        run_stage(monkeypatch, ti, runner, turn_poke=dt.timedelta(seconds=20))
    assert runner.started == []  # it did not even try the lease: it waits its turn in logical-date order
    assert (
        before + dt.timedelta(seconds=20)
        <= exc.value.reschedule_date
        <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
    )
    assert "backfill__2026-12-03" in caplog.text and "Waiting for this run's turn" in caplog.text


def test_a_run_that_meets_the_lease_waits_instead_of_failing(monkeypatch, caplog):
    ti, runner = FakeTI(), FakeRunner(holder_of_lease="audience__a_v1/scheduled__2026-12-06T00:00:00+00:00")
    with caplog.at_level(logging.INFO), pytest.raises(AirflowRescheduleException):
        run_stage(monkeypatch, ti, runner)
    assert "scheduled__2026-12-06" in caplog.text


def test_a_run_gives_up_waiting_after_the_timeout_with_the_reason(monkeypatch):
    ti = FakeTI(first_reschedule=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    runner = FakeRunner(holder_of_lease="audience__a_v1/manual__stuck")
    with pytest.raises(AirflowFailException, match="manual__stuck.*gave up waiting"):
        run_stage(monkeypatch, ti, runner, turn_timeout=dt.timedelta(hours=1))


def test_a_run_whose_turn_it_is_starts_and_stages(monkeypatch):
    ti, runner = FakeTI(), FakeRunner()
    result = run_stage(monkeypatch, ti, runner)
    assert runner.started == [HOLDER]
    assert result == {"run_id": 7, "members": 3, "held_out": 1}
    assert ti.xcom["run_id"] == 7
