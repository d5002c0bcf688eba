"""AudienceSyncTaskGroup builds the same tasks, wiring and XCom sources as the audience's own DAG."""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.sdk import DAG

from data_out.config import AudienceNotLoaded, load_audiences
from data_out.dag_factory import build_audience_dag
from data_out.task_group import AudienceSyncTaskGroup

AUDIENCE = "cio_cart_abandon_6h_v1"  # three destinations


def shape(dag: DAG, prefix: str = "") -> dict[str, tuple]:
    """Per task (ids without the group prefix): operator, downstream ids, the tasks it pulls XCom from, pool."""

    def bare(task_id: str) -> str:
        """A task of the group without its prefix; a task outside the group stays visibly outside."""
        return task_id.removeprefix(prefix) if task_id.startswith(prefix) else f"outside: {task_id}"

    out = {}
    for t in dag.tasks:
        if not t.task_id.startswith(prefix):
            continue
        partial = getattr(t, "partial_kwargs", {})
        pulls = {
            k: bare(v)
            for k in ("stage_task_id", "plan_task_id")
            if isinstance(v := getattr(t, k, None) or partial.get(k), str)
        }
        out[bare(t.task_id)] = (
            type(t).__name__,
            t.operator_name,
            sorted(bare(d) for d in t.downstream_task_ids),
            pulls,
            t.pool,
            str(t.trigger_rule),
            [a.uri for a in t.outlets],
        )
    return out


def test_the_task_group_is_the_audience_dag_inside_another_dag():
    loaded = load_audiences()
    own = build_audience_dag(loaded.get(AUDIENCE))
    with DAG("host", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) as host:
        group = AudienceSyncTaskGroup(AUDIENCE, audiences=loaded)
    prefix = f"sync_{AUDIENCE}."
    assert group.group_id == f"sync_{AUDIENCE}"
    assert shape(host, prefix) == shape(own)
    assert len(shape(own)) == 2 + 2 * 3
    # the pulls name the prefixed ids, so XCom is read from the group's own tasks
    assert host.get_task(f"{prefix}meta.plan").stage_task_id == f"{prefix}stage"
    assert host.get_task(f"{prefix}meta.push").partial_kwargs["plan_task_id"] == f"{prefix}meta.plan"
    assert {t.task_id for t in group.get_roots()} == {f"{prefix}stage"}
    assert {t.task_id for t in group.get_leaves()} == {f"{prefix}finish"}


def test_an_audience_that_does_not_exist_fails_the_parse_with_its_name(tmp_path):
    audiences = load_audiences(tmp_path)
    host = DAG("host", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with host, pytest.raises(AudienceNotLoaded, match="no audience named 'nobody_v1'"):
        AudienceSyncTaskGroup("nobody_v1", audiences=audiences)
