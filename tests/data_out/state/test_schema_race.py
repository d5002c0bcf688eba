"""Every audience's first run at once on an empty state database: the schema is created exactly once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from data_out import state
from data_out.connections import ConnectionInfo, engine_for

WORKERS = 6


def _ensure(info: ConnectionInfo, start: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    start.wait(30)
    state.ensure_schema(engine_for(info))


def test_concurrent_first_tasks_all_find_the_schema(backend: ConnectionInfo) -> None:
    """Separate processes, as parallel task processes are, all released at once on an empty database."""
    ctx = multiprocessing.get_context("fork")  # fast; nothing is connected before the fork
    start = ctx.Event()
    procs = [ctx.Process(target=_ensure, args=(backend, start)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WORKERS  # none lost a race with "already exists"
    engine = engine_for(backend)
    assert set(state.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(state.schema_version)) == state.SCHEMA_VERSION


@pytest.fixture(autouse=True)
def _no_such_file_yet(backend: ConnectionInfo) -> None:
    if backend.conn_type == "sqlite":
        assert not Path(str(backend.host)).exists()


def test_create_tables_survives_a_table_created_between_its_check_and_its_create(backend: ConnectionInfo) -> None:
    """The race a plan and a push of one audience run into on a new warehouse table, made certain: just
    before our ``CREATE TABLE`` another connection creates the same table and commits."""
    from sqlalchemy import event

    from data_out.destinations.warehouse.sql import destination_tables

    engine = engine_for(backend)
    members, holdout, _ = destination_tables("race")
    sneaked: list[str] = []

    @event.listens_for(holdout, "before_create")
    def _another_task_wins(target: object, connection: object, **kw: object) -> None:
        if not sneaked:  # once: the retry must then find the table and leave it be
            sneaked.append(holdout.name)
            with engine_for(backend).begin() as other:
                holdout.create(other)

    with pytest.raises(Exception, match="(?i)already exists"):  # what a bare create_all does
        members.metadata.create_all(engine, checkfirst=True)
    members.metadata.drop_all(engine)
    sneaked.clear()
    state.create_tables(engine, members.metadata)
    assert sneaked == [holdout.name]
    assert {members.name, holdout.name} <= set(inspect(engine).get_table_names())
