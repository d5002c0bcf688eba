"""The demo's audiences run through the demo's stand-ins on a small sample warehouse: real-looking pages.

The same audience files, SQL, sample warehouse generator and vendor stand-ins ``make demo`` uses, run by
the engine directly (no DAG runs: seconds instead of minutes), three times with churn in between, so
every chart has three runs and every audience acknowledged members at its destinations.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from data_out import state
from data_out.config import LoadResult, load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.runner import AudienceRunner
from data_out.metrics.pipeline import MetricsPipeline, load_routing
from data_out.state import ensure_schema
from sandbox import sample_warehouse
from sandbox.standins import connection_env, serve

STANDINS = ["meta", "google", "google_ads", "segment", "webhook"]
RUNS = 3


@dataclass
class DemoState:
    engine: Engine
    warehouse: Engine
    audiences: LoadResult
    runs: int


def _resolver(env: dict[str, str], state_path: Path, warehouse_path: Path):  # type: ignore[no-untyped-def]
    """Connection ids as the demo's Makefile and stand-ins define them, without Airflow's secrets lookup."""

    def resolve(conn_id: str) -> ConnectionInfo:
        if conn_id == "data_out_state":
            return ConnectionInfo(conn_id, "sqlite", host=str(state_path))
        if conn_id == "data_out_warehouse":
            return ConnectionInfo(conn_id, "sqlite", host=str(warehouse_path))
        raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
        if raw is None:
            raise KeyError(f"the demo defines no connection {conn_id!r}")
        c = json.loads(raw)
        return ConnectionInfo(
            conn_id,
            c.get("conn_type", ""),
            host=c.get("host"),
            port=c.get("port"),
            login=c.get("login"),
            password=c.get("password"),
            schema=c.get("schema"),
            extra=c.get("extra") or {},
        )

    return resolve


def _order(audiences: LoadResult) -> list[str]:
    """Suppressions before the audiences that exclude them, as the DAGs' asset schedules order them."""
    done: list[str] = []
    todo = sorted(audiences.audiences)
    while todo:
        for name in list(todo):
            if all(x in done for x in audiences.audiences[name].config.exclusions):
                done.append(name)
                todo.remove(name)
    return done


@contextmanager
def demo_state(directory: Path, people: int = 1500) -> Iterator[DemoState]:
    """Build the state database under ``directory``; the stand-ins stop when the block ends."""
    state_path, warehouse_path = directory / "state.db", directory / "warehouse.db"
    warehouse = engine_for(ConnectionInfo("data_out_warehouse", "sqlite", host=str(warehouse_path)))
    sample_warehouse.generate(warehouse, people=people, days=120, as_of=dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC))
    as_of = sample_warehouse.sample_as_of(warehouse)
    assert as_of is not None
    engine = engine_for(ConnectionInfo("data_out_state", "sqlite", host=str(state_path)))
    ensure_schema(engine)
    audiences = load_audiences()
    with serve(STANDINS) as running:  # in memory: nothing of the stand-ins outlives the block
        env = {**os.environ, **connection_env(running)}
        resolve = _resolver(env, state_path, warehouse_path)
        # as make demo does first: the last two days of sends land as metric events and send tasks
        routing, path = load_routing()
        pipeline = MetricsPipeline(engine, routing, resolve, path)
        pipeline.load_exports(warehouse, as_of - dt.timedelta(days=2), as_of)
        pipeline.write_send_log(warehouse, as_of - dt.timedelta(days=2), as_of)
        for i in range(RUNS):
            if i:
                as_of = sample_warehouse.churn(warehouse, as_of, hours=2, share=0.05)
            for name in _order(audiences):
                AudienceRunner(engine, audiences, name, resolve).run(f"demo-{i}/{name}", as_of)
        yield DemoState(engine, warehouse, audiences, RUNS)


def a_member(engine: Engine, audience: str) -> str:
    """A member key of the audience's latest snapshot."""
    m = state.member
    with engine.connect() as conn:
        return conn.scalar(select(m.c.member_key).where(m.c.audience == audience).order_by(m.c.member_key).limit(1))
