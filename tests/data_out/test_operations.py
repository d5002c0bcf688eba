"""Operations: validated requests, dry runs that change nothing, modes, metric backfills, retirement."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select, text

from data_out import state
from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.dag_factory import build_audience_dags
from data_out.metrics.events import store_many
from data_out.metrics.pipeline import MetricsPipeline, Routing, send_log_table
from data_out.operations import InvalidRequest, backfill_metrics, retire_due, run_item, validate
from data_out.state import ensure_schema
from tests.data_out.engine.test_runner import AS_OF, person

T = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def work(**overrides: object) -> dict:
    """A validated work item for the test audience, as the operations DAG's plan task produces."""
    return {
        "audience": "test_targets_v1",
        "destinations": None,
        "mode": "incremental",
        "dry_run": False,
        "guard_override_reason": None,
        "as_of": None,
        **overrides,
    }


def snapshot(engine) -> dict[str, list]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return {
            t.name: sorted(map(tuple, conn.execute(select(t)).all()))
            for t in (state.member, state.ack, state.exclusion, state.pending, state.batch)
        }


def test_validation_names_every_problem(audiences_dir):
    aud = load_audiences(audiences_dir)
    with pytest.raises(InvalidRequest) as exc:
        validate({"audiences": ["nope_v1", "test_targets_v1"], "destinations": ["tiktok"], "mode": "yolo"}, aud)
    msg = str(exc.value)
    assert "mode 'yolo' is not one of incremental, full_resync, replace" in msg
    assert "audience 'nope_v1' is not loaded; known audiences: test_buyers_v1, test_targets_v1" in msg
    assert "has none of the destinations ['tiktok']; it has ['memory', 'warehouse']" in msg
    with pytest.raises(InvalidRequest, match="give both metrics_from and metrics_to"):
        validate({"metrics_from": "2026-11-01T00:00:00Z"}, aud)
    with pytest.raises(InvalidRequest, match="nothing to do"):
        validate({}, aud)
    items, window = validate({"audiences": ["test_targets_v1"], "destinations": ["memory"], "dry_run": True}, aud)
    assert items[0]["destinations"] == ["memory"] and items[0]["dry_run"] and window is None


def test_a_dry_run_changes_nothing_and_predicts_the_real_run(audiences_dir, resolver, state_engine, people, store):
    rows = [person(i) for i in range(40)]
    people.set(rows)
    aud = load_audiences(audiences_dir)
    item = work()
    run_item(state_engine, aud, resolver, item, "t/1", AS_OF)
    people.set(rows[8:] + [person(300 + i) for i in range(6)] + [person(0, email="changed@example.com")])

    before, held_before, requests_before = snapshot(state_engine), dict(store.audience("aud-1")), len(store.requests)
    dry = run_item(state_engine, aud, resolver, {**item, "dry_run": True}, "t/dry", AS_OF)
    assert snapshot(state_engine) == before and store.audience("aud-1") == held_before
    assert len(store.requests) == requests_before
    with state_engine.connect() as conn:
        previews = {
            r.destination: r for r in conn.execute(select(state.sync).where(state.sync.c.run_id == dry["run_id"]))
        }
        assert conn.scalar(select(state.run.c.status).where(state.run.c.id == dry["run_id"])) == "dry_run"
    assert len(previews["memory"].preview["sample_adds"][0]) == 16  # hashed keys only

    real = run_item(state_engine, aud, resolver, item, "t/2", AS_OF)
    with state_engine.connect() as conn:
        applied = {
            r.destination: r for r in conn.execute(select(state.sync).where(state.sync.c.run_id == real["run_id"]))
        }
    for label in ("memory", "warehouse"):
        p, a = previews[label], applied[label]
        assert (p.planned_adds, p.planned_removes, p.changed) == (a.planned_adds, a.planned_removes, a.changed)
        assert (a.added, a.removed) == (a.planned_adds, a.planned_removes)
        assert p.planned_adds > 0 and p.planned_removes > 0


def test_full_resync_mode_through_the_operations_path(audiences_dir, resolver, state_engine, people, store):
    people.set([person(i) for i in range(15)])
    aud = load_audiences(audiences_dir)
    item = work(destinations=["memory"])
    run_item(state_engine, aud, resolver, item, "t/1", AS_OF)
    full = dict(store.audience("aud-1"))
    store.audience("aud-1").clear()  # the vendor lost everything
    run_item(state_engine, aud, resolver, {**item, "mode": "full_resync"}, "t/2", AS_OF)
    assert store.audience("aud-1") == full


def test_retirement_removes_every_member_once_and_stops_scheduling(
    audiences_dir, resolver, state_engine, people, store
):
    people.set([person(i) for i in range(20)])
    aud = load_audiences(audiences_dir)
    item = work()
    run_item(state_engine, aud, resolver, item, "t/1", AS_OF)
    assert store.audience("aud-1")
    path = audiences_dir / "test_targets_v1.yaml"
    path.write_text(path.read_text().replace("purpose:", "status: retired\npurpose:"))
    aud = load_audiences(audiences_dir)
    assert "audience__test_targets_v1" not in build_audience_dags(aud)  # no longer scheduled

    assert retire_due(state_engine, aud, resolver, "lifecycle/1") == ["test_targets_v1"]
    assert store.audience("aud-1") == {}
    with state_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audience_test_targets_v1")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM audience_test_targets_v1_holdout")).scalar() == 0
        life = conn.execute(select(state.lifecycle)).mappings().one()
        assert life["status"] == "retired"
        retired = conn.execute(select(state.sync.c.desired).where(state.sync.c.mode == "retire")).scalars().all()
        assert retired and set(retired) == {0}  # a retirement desires nobody, and its record says so
    requests = len(store.requests)
    assert retire_due(state_engine, aud, resolver, "lifecycle/2") == []  # once
    assert len(store.requests) == requests


def test_a_metrics_backfill_twice_yields_identical_send_logs(tmp_path: Path):
    engine = engine_for(ConnectionInfo("s", "sqlite", host=str(tmp_path / "state.db")))
    ensure_schema(engine)
    wh = engine_for(ConnectionInfo("w", "sqlite", host=str(tmp_path / "wh.db")))
    (tmp_path / "export.sql").write_text(
        "SELECT delivery_id || '-sent' AS event_id, 'sent' AS metric, 'email' AS channel, sent_at AS occurred_at, "
        "customer_id, delivery_id, 101 AS campaign_id FROM sends WHERE sent_at >= :start AND sent_at < :end"
    )
    with wh.begin() as conn:
        conn.execute(text("CREATE TABLE sends (delivery_id TEXT, customer_id TEXT, sent_at TIMESTAMP)"))
        for i in range(60):
            at = (T + dt.timedelta(minutes=37 * i)).replace(tzinfo=None)
            conn.execute(text("INSERT INTO sends VALUES (:d, :c, :t)"), {"d": f"d{i}", "c": f"c{i % 9}", "t": at})
    with engine.begin() as conn:  # webhook events that arrived during the same days
        store_many(
            conn,
            [
                {
                    "event_id": f"e{i}",
                    "metric": "opened",
                    "channel": "email",
                    "occurred_at": T + dt.timedelta(minutes=41 * i),
                    "day": (T + dt.timedelta(minutes=41 * i)).date().isoformat(),
                    "received_at": T + dt.timedelta(minutes=41 * i + 3),
                    "customer_id": f"c{i % 9}",
                    "cio_id": None,
                    "email_sha256": None,
                    "delivery_id": f"d{i}",
                    "campaign_id": 101,
                    "campaign_name": None,
                    "broadcast_id": None,
                    "action_id": None,
                    "link_id": None,
                    "href": None,
                }
                for i in range(30)
            ],
        )
    routing = Routing(warehouse=["sent", "opened"], segment=[], webhook=[], export_sql_file="export.sql")
    pipeline = MetricsPipeline(engine, routing, None, tmp_path / "routing.yaml")

    def send_log() -> list[tuple]:
        with wh.connect() as conn:
            return sorted(map(tuple, conn.execute(select(send_log_table("cio_send_log"))).all()))

    first = backfill_metrics(pipeline, wh, T, T + dt.timedelta(days=2))
    log1 = send_log()
    second = backfill_metrics(pipeline, wh, T, T + dt.timedelta(days=2))
    assert first["hours"] == second["hours"] == 48
    assert len(log1) == 90 and send_log() == log1
    with engine.connect() as conn:
        volumes = sorted(map(tuple, conn.execute(select(state.metric_volume)).all()))
    assert sum(v[2] for v in volumes) == 90
