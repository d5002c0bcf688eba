"""DagBag integrity and policy: every DAG imports, is owned, tagged, retried, documented, and runs one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from data_out.config import AUDIENCES_DIR_ENV, load_audiences
from tests.conftest import write_audience

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def bag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(bag):
    assert bag.import_errors == {}


def test_one_dag_per_active_audience(bag):
    names = {a.config.dag_id for a in load_audiences().audiences.values() if a.config.status == "active"}
    assert names and names <= set(bag.dag_ids)


def test_policies(bag):
    for dag in bag.dags.values():
        assert dag.tags and "data-out" in dag.tags, dag.dag_id
        assert dag.doc_md and len(dag.doc_md) > 100, dag.dag_id
        if dag.dag_id.startswith("audience__"):
            assert "owner" in dag.doc_md, dag.dag_id
        assert dag.max_active_runs == 1, dag.dag_id
        for task in dag.tasks:
            assert task.owner not in (None, "airflow"), task.task_id
            assert task.retries >= 1, task.task_id


def test_one_task_group_per_destination(bag):
    dag = bag.get_dag("audience__cio_cart_abandon_6h_v1")
    groups = ("warehouse", "meta", "google_ads")
    assert {t.task_id for t in dag.tasks} == {"stage", "finish"} | {
        f"{g}.{s}" for g in groups for s in ("plan", "push")
    }
    assert dag.get_task("finish").trigger_rule == "all_done"
    assert dag.schedule == "*/30 * * * *"


def test_a_broken_audience_file_is_an_import_error_and_the_others_still_load(monkeypatch, tmp_path):
    write_audience(
        tmp_path,
        "fine_v1",
        """
        name: fine_v1
        owner: tests
        purpose: still loads
        source: {query: "SELECT 1 AS customer_id, 'a@b.co' AS email"}
        destinations: [{type: warehouse}]
    """,
    )
    write_audience(
        tmp_path,
        "broken_v1",
        """
        name: broken_v1
        owner: tests
        purpose: has a bad holdout
        source: {query: "SELECT 1"}
        holdout: {percent: 90, salt: abcd}
        destinations: [{type: warehouse}]
    """,
    )
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    bag = DagBag(dag_folder=str(DAGS))
    assert "audience__fine_v1" in bag.dag_ids
    assert "audience__broken_v1" not in bag.dag_ids
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("audience_config_check.py")
    assert "broken_v1.yaml: holdout.percent" in message and "Fix:" in message
