"""A first sync whose staging is SIGKILLed again and again still finishes, and no row is normalised twice.

On the Python path (SQLite here):

The child process (``crash_child.py``) stages 7 rows a batch and is killed after its 3rd, 6th, 9th ...
committed batch: each attempt gets three batches further than the one before, as a worker killed
after a fixed time would if resuming were cheap. Every attempt counts the rows it normalises. Without
resume each attempt starts from zero (3, 6, 9 ... batches of work) and the last one normalises everything
again; with resume each attempt normalises only what no earlier attempt committed, and the snapshot
equals the one an uninterrupted staging builds.

On the in-database path (Postgres, the source inside the state database) the staging is one
transaction; its normalised rows are also committed to ``do_stage`` as it goes. Every attempt is killed
after its third batch, like a worker killed after a fixed time: a retry streams only the rows no
attempt committed, so the staging finishes after a bounded number of attempts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from data_out import connections, state
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.holdout import is_held_out
from data_out.state import ensure_schema
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People, airflow_conn, write_audience
from tests.data_out.destinations.cases import CASES

CHILD = Path(__file__).with_name("crash_child.py")
BATCH = 7  # crash_child's staging batch size
KILLS = [3, 6, 9, 12, 15]  # committed batches after which each attempt is killed
ident = CASES["meta"].ident


def rows() -> list[dict]:
    """120 members in 18 batches, with a key that appears twice identically and one twice with two emails."""
    out = [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(120)]
    out.insert(40, dict(out[10]))
    out.insert(90, {**out[20], "email": "other.20@example.com"})
    return out


def setup(tmp: Path, db: ConnectionInfo | None = None, source: list[dict] | None = None) -> Engine:
    tmp.mkdir()
    engine = engine_for(db or ConnectionInfo("db", "sqlite", host=str(tmp / "db.sqlite")))
    ensure_schema(engine)
    People(engine).set(rows() if source is None else source)
    write_audience(
        tmp / "aud",
        "crash_test_v1",
        """
        name: crash_test_v1
        owner: tests
        purpose: staging resume
        source: {conn_id: db, query: "SELECT customer_id, email, phone FROM people"}
        holdout: {percent: 10, salt: crash-salt}
        destinations: [{type: meta, audience_id: "9", batch_size: 50}]
    """,
    )
    return engine


def attempt(tmp: Path, url: str, n: int, kill_after: int | None, db: str | None = None) -> tuple[int, int]:
    """One run of the child: (its exit code, how many rows it normalised)."""
    counted = tmp / f"normalised-{n}.txt"
    env = {k: v for k, v in os.environ.items() if k != "DATA_OUT_KILL_AT"}
    env["DATA_OUT_COUNT_NORMALISED"] = str(counted)
    if kill_after is not None:
        env["DATA_OUT_KILL_AT"] = f"stage.batch:{kill_after}"
    proc = subprocess.run(
        [sys.executable, str(CHILD), db or str(tmp / "db.sqlite"), str(tmp / "aud"), url, "dag/run-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if kill_after is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
    normalised = len(counted.read_text().splitlines()) if counted.exists() else 0
    return proc.returncode, normalised


def snapshot(engine: Engine) -> list[tuple]:
    m = state.member
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(m).order_by(m.c.member_key))]


def test_a_staging_killed_again_and_again_keeps_its_batches_and_finishes(tmp_path: Path):
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference, crashed = setup(reference_dir), setup(crashed_dir)
    standin = MetaStandIn()
    with Running(standin) as running:
        _, uninterrupted = attempt(reference_dir, running.url, 0, None)
        reference_held = set(standin.audiences["9"])
        standin.audiences.clear()
        work = []
        for n, kill_after in enumerate(KILLS, start=1):
            code, normalised = attempt(crashed_dir, running.url, n, kill_after)
            assert code == -signal.SIGKILL, f"attempt {n} was not killed after batch {kill_after} (exit {code})"
            work.append(normalised)
        _, last = attempt(crashed_dir, running.url, len(KILLS) + 1, None)
        held = set(standin.audiences["9"])

    assert uninterrupted == len(rows())  # a first sync normalises every row (a duplicate as often as it comes)
    # every attempt normalised its own three batches only, and all attempts together each row once
    assert work == [3 * BATCH] * len(KILLS)
    assert sum(work) + last == uninterrupted
    assert snapshot(crashed) == snapshot(reference)
    assert held == reference_held
    targeted = [r for r in rows() if not is_held_out("crash-salt", r["customer_id"], 10)]
    assert len(held) == len({r["customer_id"] for r in targeted})  # one identity per member, duplicates too
    assert held <= {ident(r) for r in targeted}

    r = state.run
    with crashed.connect() as conn:
        runs = conn.execute(select(r.c.status, r.c.resumed, r.c.recomputed, r.c.duplicate_keys).order_by(r.c.id)).all()
        leftover = conn.scalar(select(state.stage.c.id).limit(1))
    assert [s for s, *_ in runs] == ["failed"] * len(KILLS) + ["success"]
    assert runs[-1][1:] == (sum(work), uninterrupted, 2)
    assert leftover is None  # nothing of the killed attempts is left behind
    with reference.connect() as conn:
        assert conn.execute(select(r.c.recomputed, r.c.duplicate_keys)).one() == (uninterrupted, 2)


@pytest.fixture
def two_databases(pg_admin: Engine) -> Iterator[list[ConnectionInfo]]:
    names = [f"do_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    url = pg_admin.url
    infos = []
    with pg_admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            infos.append(
                ConnectionInfo("db", "postgres", host=url.host, port=url.port, login=url.username, schema=name)
            )
    yield infos
    for info in infos:
        connections.dispose(info)
    with pg_admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_an_in_database_staging_killed_after_every_third_batch_still_finishes(tmp_path: Path, two_databases):
    # 17 full batches: the child commits progress every 7 rows, so no attempt ends inside a chunk
    members = [{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com"} for i in range(17 * BATCH)]
    ref_db, crashed_db = two_databases
    reference = setup(tmp_path / "reference", ref_db, members)
    crashed = setup(tmp_path / "crashed", crashed_db, members)
    standin = MetaStandIn()
    with Running(standin) as running:
        _, uninterrupted = attempt(tmp_path / "reference", running.url, 0, None, airflow_conn(ref_db))
        reference_held = set(standin.audiences.get("9", set()))
        standin.audiences.clear()
        work, code = [], None
        while code != 0 and len(work) < 10:
            code, normalised = attempt(tmp_path / "crashed", running.url, len(work) + 1, 3, airflow_conn(crashed_db))
            assert code in (0, -signal.SIGKILL), f"attempt {len(work) + 1} failed (exit {code})"
            work.append(normalised)
        held = set(standin.audiences["9"])

    assert uninterrupted == len(members) == sum(work)  # every row normalised once over all the attempts
    assert code == 0, f"still unfinished after {len(work)} attempts normalising {work} rows"
    assert work[:-1] == [3 * BATCH] * (len(work) - 1)  # each attempt got three batches further
    assert snapshot(crashed) == snapshot(reference)
    assert held == reference_held
    r = state.run
    with crashed.connect() as conn:
        last = conn.execute(select(r.c.status, r.c.resumed, r.c.recomputed).order_by(r.c.id.desc()).limit(1)).one()
        leftover = conn.scalar(select(state.stage.c.id).limit(1))
    assert last == ("success", sum(work[:-1]), len(members))
    assert leftover is None
