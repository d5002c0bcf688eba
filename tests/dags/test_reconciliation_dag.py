"""The reconciliation DAG under the Airflow runtime: detects planted drift, repairs it, emails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import engine_for
from sandbox.smtp_sink import SmtpSink, bodies
from sandbox.standins import CREDENTIALS, serve
from tests.conftest import People, airflow_conn, write_audience

DAGS = Path(__file__).resolve().parents[2] / "dags"
pytestmark = [pytest.mark.airflow, pytest.mark.postgres]


def test_reconciliation_dag_repairs_and_emails_planted_drift(monkeypatch, tmp_path, pg_database):
    engine = engine_for(pg_database)
    People(engine).set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(40)])
    write_audience(
        tmp_path,
        "recon_dag_v1",
        """
        name: recon_dag_v1
        owner: tests
        purpose: reconciliation DAG under test
        source: {conn_id: recon_db, query: "SELECT customer_id, email, phone FROM people"}
        destinations: [{type: meta, audience_id: "4242"}]
        alerts: {recipients: [growth@example.com]}
    """,
    )
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    db = airflow_conn(pg_database)
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", db)
    monkeypatch.setenv("AIRFLOW_CONN_RECON_DB", db)
    with SmtpSink() as sink, serve(["meta"]) as running:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(sink.connection_json()))
        meta = running["meta"]
        monkeypatch.setenv(
            "AIRFLOW_CONN_DATA_OUT_META",
            json.dumps({"conn_type": "data_out_meta", "host": meta.url, **CREDENTIALS["meta"]}),
        )
        bag = DagBag(dag_folder=str(DAGS))
        assert str(bag.get_dag("audience__recon_dag_v1").test(run_conf={}).state) == "success"
        members = meta.standin.audiences["4242"]
        full = len(members)
        for row in sorted(members)[:8]:
            members.discard(row)  # lost behind the product's back

        dr = bag.get_dag("data_out_reconciliation").test()
        assert str(dr.state) == "success"
        assert len(meta.standin.audiences["4242"]) == full
    [msg] = sink.messages
    text, _ = bodies(msg)
    assert msg["To"] == "growth@example.com"
    assert "Detected and repaired (1)" in text and "recon_dag_v1 / meta: destination_gap_pct" in text
