"""The metrics step that writes the send log updates the pipeline's Asset, with its interval and row count."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest

from data_out.assets import MESSAGE_METRICS
from data_out.operators import metrics as op_module
from data_out.operators.metrics import MetricsStepOperator

START = dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC)


class FakePipeline:
    """Stands in for MetricsPipeline: what the step writes is not under test here, only what it reports."""

    def __init__(self, *args: Any) -> None:
        pass

    def write_send_log(self, wh: Any, start: dt.datetime, end: dt.datetime) -> int:
        return 42

    def count_volumes(self, start: dt.datetime, end: dt.datetime) -> list[str]:
        return ["sent", "opened"]


@pytest.fixture
def fake_pipeline(monkeypatch):
    monkeypatch.setattr(op_module, "MetricsPipeline", FakePipeline)
    monkeypatch.setattr(op_module, "load_routing", lambda: (SimpleNamespace(warehouse_conn_id="wh"), "routing.yaml"))
    monkeypatch.setattr(op_module, "DataOutStateHook", lambda conn_id: SimpleNamespace(get_conn=lambda: None))
    monkeypatch.setattr(op_module, "connection_info", lambda conn_id: conn_id)
    monkeypatch.setattr(op_module, "engine_for", lambda info: None)


def run(step: str, **kwargs: Any) -> tuple[int, dict]:
    events: dict = defaultdict(lambda: SimpleNamespace(extra={}))
    context = {
        "data_interval_start": START,
        "data_interval_end": START + dt.timedelta(hours=1),
        "outlet_events": events,
    }
    result = MetricsStepOperator(task_id=step, step=step, **kwargs).execute(context)
    return result, dict(events)


def test_the_send_log_step_puts_its_interval_and_rows_on_the_asset_event(fake_pipeline):
    result, events = run("write_send_log", outlets=[MESSAGE_METRICS])
    assert result == 42
    assert events[MESSAGE_METRICS].extra == {
        "step": "write_send_log",
        "rows": 42,
        "interval": ["2026-11-01T10:00:00+00:00", "2026-11-01T11:00:00+00:00"],
    }


def test_a_step_without_outlets_touches_no_event(fake_pipeline):
    result, events = run("count_volumes")
    assert (result, events) == (2, {})
