"""DagBag integrity and policy: every DAG imports, is owned, tagged, retried, documented, and runs one at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.mappedoperator import MappedOperator

from data_out.config import AUDIENCES_DIR_ENV, load_audiences
from data_out.destinations import REGISTRY, destination_class
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
    groups = ("warehouse", "meta", "google")
    assert {t.task_id for t in dag.tasks} == {"stage", "finish"} | {
        f"{g}.{s}" for g in groups for s in ("plan", "push")
    }
    assert dag.get_task("finish").trigger_rule == "all_done"
    assert dag.schedule == "*/30 * * * *"


def test_push_is_mapped_over_the_plans_shards_in_the_vendors_pool(bag):
    dag = bag.get_dag("audience__cio_cart_abandon_6h_v1")
    for group in ("warehouse", "meta", "google"):
        plan, push = dag.get_task(f"{group}.plan"), dag.get_task(f"{group}.push")
        assert isinstance(push, MappedOperator) and not isinstance(plan, MappedOperator)
        [(upstream, key)] = list(push.expand_input.value["shard"].iter_references())
        assert (upstream.task_id, key) == (f"{group}.plan", "return_value")  # one push per shard the plan returns
        assert push.upstream_task_ids == {f"{group}.plan"} and push.downstream_task_ids == {"finish"}
        assert plan.upstream_task_ids == {"stage"}
        pool = destination_class(group).pool
        assert pool == f"data_out_{group}" and plan.pool == pool and push.pool == pool
    assert destination_class("google_ads").max_push_shards == 1  # one job per user list at a time


def test_every_pool_a_dag_uses_is_in_deploy_pools_json(bag):
    """A real scheduler never runs a task whose pool does not exist: ``make airflow-db`` imports this file."""
    pools = json.loads((DAGS.parent / "deploy" / "pools.json").read_text())
    for name, pool in pools.items():
        assert set(pool) == {"slots", "description", "include_deferred"}, name
        assert isinstance(pool["slots"], int) and pool["slots"] > 0 and len(pool["description"]) > 40, name
    assert {destination_class(t).pool for t in REGISTRY if t != "memory"} == set(pools)
    used = {t.pool for d in bag.dags.values() for t in d.tasks}
    assert used <= set(pools) | {"default_pool"}


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


def test_exposure_audiences_run_after_the_message_metrics_pipeline_writes_the_send_log(bag):
    """Hourly audiences of the send log are scheduled on the Asset the metrics DAG updates once the send log is
    written, not on a clock that may fire before it (the daily unengaged_45d_v1 keeps its clock)."""
    from data_out.assets import MESSAGE_METRICS

    for name in ("cio_cart_msg_exposed_12h_v1", "clicked_3d_no_order_v1", "do_not_contact_v1"):
        dag = bag.get_dag(f"audience__{name}")
        assert list(dag.timetable.asset_condition.objects) == [MESSAGE_METRICS], name
    metrics = bag.get_dag("data_out_message_metrics")
    producers = [t.task_id for t in metrics.tasks if MESSAGE_METRICS in t.outlets]
    assert producers == ["write_send_log"]


def test_every_audience_dag_updates_its_asset_when_it_finishes(bag):
    from data_out.assets import audience_asset

    for name, loaded in load_audiences().audiences.items():
        if loaded.config.status != "retired":
            assert bag.get_dag(loaded.config.dag_id).get_task("finish").outlets == [audience_asset(name)]
