"""An audience DAG run twice by the real Airflow runtime (``dag.test``) against Postgres state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import select, text

from data_out import state
from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import engine_for
from data_out.engine.holdout import is_held_out
from sandbox.smtp_sink import SmtpSink, bodies
from tests.conftest import People, airflow_conn, write_audience

DAGS = Path(__file__).resolve().parents[2] / "dags"
AS_OF = "2026-11-01T12:00:00+00:00"

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]


@pytest.fixture
def airflow_env(monkeypatch, tmp_path, pg_database):
    write_audience(
        tmp_path,
        "e2e_audience_v1",
        """
        name: e2e_audience_v1
        owner: tests
        purpose: end-to-end under the Airflow runtime
        source:
          conn_id: e2e_db
          query: SELECT customer_id, email, phone FROM people WHERE in_audience = 1
        identifiers: {email: email, phone: phone}
        holdout: {percent: 10, salt: e2e-salt}
        destinations:
          - type: warehouse
            conn_id: e2e_db
        alerts: {recipients: [e2e-owner@example.com]}
    """,
    )
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    conn = airflow_conn(pg_database)
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", conn)
    monkeypatch.setenv("AIRFLOW_CONN_E2E_DB", conn)
    return engine_for(pg_database)


def members(engine, table):
    with engine.connect() as conn:
        return {k for (k,) in conn.execute(text(f"SELECT member_key FROM {table}"))}


def runs(engine):
    with engine.connect() as conn:
        return conn.execute(select(state.run).order_by(state.run.c.id)).mappings().all()


def run_and_check(dag, engine, rows: list[dict]) -> set[str]:  # type: ignore[no-untyped-def]
    """Run the DAG; the members and holdout tables must hold exactly the rows split by holdout."""
    assert str(dag.test(run_conf={"as_of": AS_OF}).state) == "success"
    keys = {r["customer_id"] for r in rows}
    held = {k for k in keys if is_held_out("e2e-salt", k, 10)}
    assert members(engine, "audience_e2e_audience_v1") == keys - held
    assert members(engine, "audience_e2e_audience_v1_holdout") == held
    return held


def test_audience_dag_twice_with_a_membership_change(airflow_env):
    engine = airflow_env
    people = People(engine)
    rows = [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(60)]
    people.set(rows)
    dag = DagBag(dag_folder=str(DAGS)).get_dag("audience__e2e_audience_v1")

    held = run_and_check(dag, engine, rows)
    [first] = runs(engine)
    assert (first["status"], first["members"], first["held_out"]) == ("success", 60, len(held))

    rows = rows[10:] + [{"customer_id": f"n{i:03d}", "email": f"n{i}@example.com"} for i in range(5)]
    people.set(rows)
    run_and_check(dag, engine, rows)
    second = runs(engine)[-1]
    assert second["status"] == "success" and second["recomputed"] == 5
    with engine.connect() as conn:
        sync = conn.execute(select(state.sync).order_by(state.sync.c.id.desc()).limit(1)).mappings().one()
    assert (sync["added"], sync["removed"]) == (5, 10)
    assert sync["destination_size"] == sync["acked_size"] == 55

    # and the lease was released: nobody holds the audience between runs
    with engine.connect() as conn:
        assert conn.execute(select(state.lease)).first() is None


def test_a_guarded_run_fails_the_dag_run_is_recorded_and_emailed(airflow_env, monkeypatch):
    engine = airflow_env
    sink = SmtpSink().__enter__()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(sink.connection_json()))
    people = People(engine)
    people.set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(20)])
    dag = DagBag(dag_folder=str(DAGS)).get_dag("audience__e2e_audience_v1")
    assert str(dag.test(run_conf={"as_of": AS_OF}).state) == "success"
    people.set([])
    assert str(dag.test(run_conf={"as_of": AS_OF}).state) == "failed"
    last = runs(engine)[-1]
    assert last["status"] == "failed" and "mass-removal guard" in last["error"]
    sink.__exit__()
    [msg] = sink.messages  # one email, from the plan task; finish does not repeat it
    text, _ = bodies(msg)
    assert msg["Subject"] == "[Data Out] sync failed: e2e_audience_v1 (warehouse.plan)"
    assert msg["To"] == "e2e-owner@example.com"
    assert "mass-removal guard" in text and "Next step: If the shrink is deliberate" in text
    assert len(members(engine, "audience_e2e_audience_v1")) > 0  # nothing removed
    dr = dag.test(run_conf={"as_of": AS_OF, "guard_override_reason": "test: audience retired upstream"})
    assert str(dr.state) == "success"
    assert members(engine, "audience_e2e_audience_v1") == set()
