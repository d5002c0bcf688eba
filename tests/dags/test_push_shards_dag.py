"""A large diff fans out into mapped push tasks under the real Airflow runtime (``dag.test``), Postgres state.

``dag.test()`` runs task instances in-process and does not consult pools (checked in Airflow 3.3.2's
``DAG.test``); a real scheduler does, which is why ``make airflow-db`` imports ``deploy/pools.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import select, text

from data_out import state
from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import engine_for
from data_out.engine import shards
from tests.conftest import People, airflow_conn, write_audience

DAGS = Path(__file__).resolve().parents[2] / "dags"
AS_OF = "2026-11-01T12:00:00+00:00"
DAG_ID = "audience__fanout_v1"

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]


def push_tis(run_id: str) -> list[tuple[int, str, str | None, str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id, TaskInstance.task_id == "warehouse.push"
            )
        ).all()
        return sorted((ti.map_index, str(ti.state), ti.rendered_map_index, ti.pool) for ti in tis)


def test_a_large_diff_is_pushed_by_one_mapped_task_per_shard(monkeypatch, tmp_path, pg_database):
    monkeypatch.setattr(shards, "ROWS_PER_SHARD", 10)  # dag.test runs tasks in this process
    write_audience(
        tmp_path,
        "fanout_v1",
        """
        name: fanout_v1
        owner: tests
        purpose: mapped push shards under the Airflow runtime
        source: {conn_id: fanout_db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}
        destinations: [{type: warehouse, conn_id: fanout_db, batch_size: 4, push_shards: 3}]
        guard: {max_removal_share: 1}
    """,
    )
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", airflow_conn(pg_database))
    monkeypatch.setenv("AIRFLOW_CONN_FANOUT_DB", airflow_conn(pg_database))
    engine = engine_for(pg_database)
    people = People(engine)
    dag = DagBag(dag_folder=str(DAGS)).get_dag(DAG_ID)

    def run(rows: list[dict]) -> str:
        people.set(rows)
        dr = dag.test(run_conf={"as_of": AS_OF})
        assert str(dr.state) == "success"
        with engine.connect() as conn:
            assert {k for (k,) in conn.execute(text("SELECT member_key FROM audience_fanout_v1"))} == {
                r["customer_id"] for r in rows
            }
        return dr.run_id

    rows = [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(60)]
    first = run(rows)  # 60 adds: 6 shards of 10 rows wanted, the audience allows 3
    assert push_tis(first) == [(i, "success", f"shard {i}", "data_out_warehouse") for i in range(3)]

    second = run(rows[10:] + [{"customer_id": f"n{i:03d}", "email": f"n{i}@example.com"} for i in range(5)])
    assert [ti[:2] for ti in push_tis(second)] == [(0, "success"), (1, "success")]  # 15 rows: 2 shards

    with engine.connect() as conn:
        syncs = conn.execute(
            select(state.sync.c.status, state.sync.c.shards, state.sync.c.shards_done, state.sync.c.added)
            .where(state.sync.c.audience == "fanout_v1")
            .order_by(state.sync.c.id)
        ).all()
    assert syncs == [("success", 3, 0b111, 60), ("success", 2, 0b11, 5)]
