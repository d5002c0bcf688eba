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
