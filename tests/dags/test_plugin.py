"""The Airflow plugin serves the metrics receiver with settings resolved from Airflow connections."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from data_out import state
from data_out.connections import ConnectionInfo, engine_for
from data_out.metrics.receiver import signature
from tests.data_out.metrics.conftest import event

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "data_out_plugin.py"


def test_plugin_registers_the_receiver_and_resolves_its_connections(monkeypatch, tmp_path):
    db = tmp_path / "state.db"
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATA_OUT_CUSTOMERIO_WEBHOOK",
        json.dumps({"conn_type": "data_out_customerio", "password": "plugin-key"}),
    )
    spec = importlib.util.spec_from_file_location("data_out_plugin_under_test", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    # the receiver and the UI pages (tests/data_out/ui); the receiver under /data-out
    [app] = [a for a in module.DataOutPlugin.fastapi_apps if a["url_prefix"] == "/data-out"]

    raw = json.dumps(event(1)).encode()
    ts = str(int(time.time()))
    client = TestClient(app["app"])
    r = client.post(
        "/customerio", content=raw, headers={"X-CIO-Timestamp": ts, "X-CIO-Signature": signature("plugin-key", ts, raw)}
    )
    assert r.status_code == 200 and r.json()["status"] == "stored"
    engine = engine_for(ConnectionInfo("s", "sqlite", host=str(db)))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.metric_event)) == 1
