"""The example in ``dags/examples/`` under the Airflow runtime: a sync inside another DAG emits the audience's
Asset event with the run's counts, and the Asset-scheduled DAG is queued for it as the scheduler would.

The example syncs ``recent_purchasers_7d_v1``; the test defines that name in its own audiences directory,
against a Postgres warehouse and the Meta stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import delete, select, update

from data_out import state
from data_out.asset_names import audience_uri
from data_out.assets import audience_asset
from data_out.config import AUDIENCES_DIR_ENV
from data_out.connections import engine_for
from sandbox.standins import connection_env, serve
from tests.conftest import People, airflow_conn, write_audience

DAGS = Path(__file__).resolve().parents[2] / "dags"
AUDIENCE = "recent_purchasers_7d_v1"
HOST, DOWNSTREAM = "example_data_out_after_models", "example_data_out_on_audience_synced"
META_AUDIENCE_ID = "23851000000004"

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]


def events_of(run_id: str, dag_id: str = HOST) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(
                AssetModel.uri == audience_uri(AUDIENCE),
                AssetEvent.source_dag_id == dag_id,
                AssetEvent.source_run_id == run_id,
            )
        ).all()
        session.expunge_all()
        return rows


def queued_for_downstream() -> int:
    """Rows the scheduler turns into asset-triggered runs of the downstream DAG."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return len(
            session.scalars(
                select(AssetDagRunQueue)
                .join(AssetModel, AssetModel.id == AssetDagRunQueue.asset_id)
                .where(AssetModel.uri == audience_uri(AUDIENCE), AssetDagRunQueue.target_dag_id == DOWNSTREAM)
            ).all()
        )


def schedule_references() -> set[str]:
    """The DAGs the metadata DB records as scheduled on the audience's Asset (what the scheduler reads)."""
    from airflow.models.asset import AssetModel, DagScheduleAssetReference
    from airflow.utils.session import create_session

    with create_session() as session:
        return set(
            session.scalars(
                select(DagScheduleAssetReference.dag_id)
                .join(AssetModel, AssetModel.id == DagScheduleAssetReference.asset_id)
                .where(AssetModel.uri == audience_uri(AUDIENCE))
            )
        )


def set_paused(dag_id: str, paused: bool) -> None:
    """Pause or unpause, and drop what earlier runs queued for the DAG, so a count starts from zero."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=paused))
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))


def test_example_dag_syncs_emits_the_asset_event_and_queues_the_downstream_dag(monkeypatch, tmp_path, pg_database):
    write_audience(
        tmp_path,
        AUDIENCE,
        f"""
        name: {AUDIENCE}
        owner: tests
        purpose: the example DAG's audience
        source: {{conn_id: example_db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
        identifiers: {{email: email, phone: phone}}
        destinations:
          - {{type: warehouse, conn_id: example_db}}
          - {{type: meta, audience_id: "{META_AUDIENCE_ID}"}}
        guard: {{max_removal_share: 1}}
        """,
    )
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_DATA_OUT_STATE", airflow_conn(pg_database))
    monkeypatch.setenv("AIRFLOW_CONN_EXAMPLE_DB", airflow_conn(pg_database))
    engine = engine_for(pg_database)
    people = People(engine)
    people.set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(20)])

    set_paused(DOWNSTREAM, True)  # as parsing creates it, whatever an interrupted earlier run left
    with serve(["meta"]) as running:
        for key, value in connection_env(running).items():
            monkeypatch.setenv(key, value)
        bag = DagBag(dag_folder=str(DAGS))
        assert not [p for p in bag.import_errors if "examples" in p]
        host, downstream = bag.get_dag(HOST), bag.get_dag(DOWNSTREAM)
        assert list(downstream.timetable.asset_condition.objects) == [audience_asset(AUDIENCE)]
        first = host.test(run_conf={})
        assert str(first.state) == "success"
        # dag.test wrote both example DAGs to the metadata DB; the downstream is paused at creation, so the
        # event queued nothing. Unpaused, the next event queues it.
        assert schedule_references() == {DOWNSTREAM}
        assert queued_for_downstream() == 0
        set_paused(DOWNSTREAM, False)
        people.set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(5, 28)])
        second = host.test(run_conf={})
        assert str(second.state) == "success"
        meta_members = len(running["meta"].standin.audiences[META_AUDIENCE_ID])
        queued = queued_for_downstream()

        # a sync from the operations DAG updates the same Asset (through its alias); a dry run does not
        set_paused(DOWNSTREAM, False)
        people.set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(5, 30)])
        ops = bag.get_dag("data_out_operations")
        preview = ops.test(run_conf={"audiences": [AUDIENCE], "dry_run": True})
        queued_after_preview = queued_for_downstream()
        synced = ops.test(run_conf={"audiences": [AUDIENCE], "dry_run": False})  # dag.test keeps the last conf
        queued_after_ops = queued_for_downstream()
    set_paused(DOWNSTREAM, True)  # the shared metadata DB goes back to how parsing leaves it
    assert queued == 1
    assert str(preview.state) == str(synced.state) == "success"
    assert events_of(preview.run_id, "data_out_operations") == [] and queued_after_preview == 0
    [ops_event] = events_of(synced.run_id, "data_out_operations")
    assert ops_event.extra["destinations"]["meta"] == {"status": "success", "added": 2, "removed": 0, "rejected": 0}
    assert queued_after_ops == 1

    with engine.connect() as conn:
        run_ids = list(conn.scalars(select(state.run.c.id).order_by(state.run.c.id)))
    assert meta_members == 23
    assert ops_event.extra["run_id"] == run_ids[-1] and ops_event.extra["members"] == 25

    [event1], [event2] = events_of(first.run_id), events_of(second.run_id)
    per_dest = {"status": "success", "added": 20, "removed": 0, "rejected": 0}
    assert event1.extra == {
        "audience": AUDIENCE,
        "run_id": run_ids[0],
        "members": 20,
        "held_out": 0,
        "added": 40,
        "removed": 0,
        "rejected": 0,
        "destinations": {"warehouse": per_dest, "meta": per_dest},
    }
    delta = {"status": "success", "added": 8, "removed": 5, "rejected": 0}
    assert event2.extra["destinations"] == {"warehouse": delta, "meta": delta}
    assert (event2.extra["members"], event2.extra["added"], event2.extra["removed"]) == (23, 16, 10)

    # the downstream task reads the counts from the triggering events as Airflow hands them over
    report = downstream.get_task("report_sync").python_callable
    assert report(triggering_asset_events={audience_asset(AUDIENCE): [event1, event2]}) == [event1.extra, event2.extra]
